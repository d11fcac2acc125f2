"""Checks Hydra runs before it creates the run dir: an output folder that cannot be written, or an existing
one (``resume=``) holding a link out of it, is one line naming it and exit code 2 (Hydra itself would fail
with a stack trace after creating part of the tree, or write through the link).

:func:`run_cli` does the same for Hydra's own command-line errors (a mistyped key, an unknown config
option, an override that does not parse): one line and exit code 2, where Hydra prints several lines, its
search path and exit code 1 (each error's line: :mod:`experiments.cli_errors`). ``HYDRA_FULL_ERROR=1`` keeps
Hydra's full report."""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from engine.errors import MACHINE_ERRNOS, ConfigError, find_user_error, one_line
from engine.objective import test_objective_line
from experiments.cli_errors import (drop_unsubmitted_sweep, hydra_error_line, no_completed_trial,
                                    null_group_override, search_space_error, submission_error)
from experiments.optuna_checks import commit_optuna_alembic_stamp, optuna_sweep, sweep_config_line
from engine.run_overrides import COMMAND_ENV
from experiments import run_lock, sweep_jobs
from experiments.run_folder import (checked_resume_problem, earlier_run, first_start, foreign_link, live_launcher_of,
                                    main_process, named_file_clash, not_resumable_line, outside_link_line,
                                    resumable, unwritable)


class WritableOutput(Callback):
    """``hydra.run.dir`` / ``hydra.sweep.dir`` must be creatable and writable before anything is written."""

    def _check(self, folder: Any, key: str) -> None:
        blocker = unwritable(str(folder))
        if blocker is not None:
            _refuse(f"{key}={folder} cannot be written ({blocker} is "
                    f"{'not a folder' if blocker.exists() and not blocker.is_dir() else 'not writable'}); "
                    f"set paths.log_dir (or FEDMED_LOG_DIR) to a writable folder")

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _fail_closed(self._run_start, config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _fail_closed(self._multirun_start, config, "sweep")

    def _run_start(self, config: DictConfig) -> None:
        resume = config.get("resume")
        if resumable(resume) is False:
            _refuse(not_resumable_line(resume))  # before Hydra creates a run dir for a run that will not happen
        HydraConfig.instance().set_config(config)  # ${hydra:runtime.choices...} in the run dir's name
        self._check(config.hydra.run.dir, "hydra.run.dir")
        # the folder the run writes into and the one Hydra writes .hydra/ and run.log into (a review: resume=<dir>
        # hydra.run.dir=<a live run's folder> wrote there), checked before Hydra rewrites a live run's .hydra/
        folders = [("resume", resume)] * bool(resumable(resume)) + [("hydra.run.dir", str(config.hydra.run.dir))]
        in_use = run_lock.first_refusal(folders, take=False) if main_process() else None
        if in_use is not None:
            _refuse(in_use)
        pid = live_launcher_of(Path(str(config.hydra.run.dir))) if first_start() else None
        if pid is not None:  # a review: a second run in the folder mixed its files into the live rehearsal's
            _refuse(f"hydra.run.dir={config.hydra.run.dir} is in use: its Flower rehearsal is still run by "
                    f"launcher pid {pid}; stop it first (kill {pid}), or give this run another folder")
        refused = test_objective_line(config)
        if refused is not None:
            _refuse(refused)
        if resume in (None, False, "false"):
            run = Path(str(config.hydra.run.dir))
            link = foreign_link(run) if first_start() else None
            if link is not None:  # a security review: Hydra wrote .hydra/*.yaml and run.log through such links
                _refuse(outside_link_line("hydra.run.dir=", run, link))
            clash = named_file_clash(run, config) if first_start() else None
            if clash is not None:  # before anything of the earlier run moves
                _refuse(clash)
            earlier = earlier_run(Path(str(config.hydra.run.dir))) if first_start() else None
            if earlier is not None:  # a review: a second run in a run dir mixed its CSV, W&B run and checkpoints
                print(f"warning: hydra.run.dir={config.hydra.run.dir} holds an earlier run ({earlier}): its files "
                      f"(checkpoints, logs, results, W&B id) are moved to earlier/<time>/ (a file this run's config "
                      f"names stays) and this run starts afresh; resume=true continues it instead",
                      file=sys.stderr)
        else:
            # Hydra logs an exception raised in a callback and starts the run anyway: only an exit stops it
            run = Path(str(config.hydra.run.dir))
            # (not a DDP rank > 0, which runs in the folder rank 0 gave it: a sweep job's, a review)
            if resumable(resume) and main_process() and run.resolve() != Path(str(resume)).resolve():
                # a walkthrough: with another hydra.run.dir the resume's checks read that folder, and a FedAvg
                # run continued as FedProx, its .hydra/ and run.log written elsewhere
                _refuse(f"resume={resume} continues that run in its own folder, but hydra.run.dir={run} is another "
                        f"one: leave hydra.run.dir out (or set it to the run's folder)")
            bad = checked_resume_problem(run, config)
            if bad is not None:  # before Hydra rewrites .hydra/ and the run its config.yaml: the folder stays as it was
                _refuse(bad.splitlines()[0] if bad else bad)
        in_use = run_lock.first_refusal(folders, take=True) if main_process() else None  # run.main lets go
        if in_use is not None:  # another run took it since the check above
            _refuse(in_use)

    def _multirun_start(self, config: DictConfig) -> None:
        HydraConfig.instance().set_config(config)
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")
        sweep = Path(str(config.hydra.sweep.dir))
        link = foreign_link(sweep)  # a reused sweep folder: each job's .hydra/ and run.log are written before any
        bad = outside_link_line("hydra.sweep.dir=", sweep, link) if link is not None else None  # job-side check
        bad = bad or sweep_config_line(config) or sweep_jobs.live_jobs(sweep)
        if bad is not None:  # before the sweeper starts: no trial trains, no sweep folder is made
            _refuse(bad)
        if optuna_sweep(config):
            commit_optuna_alembic_stamp()


def _refuse(line: str) -> NoReturn:
    """A check that refuses the run or sweep: ``error: <line>`` on stderr and exit code 2, before Hydra writes."""
    print(f"error: {line}", file=sys.stderr)
    sys.exit(2)


def _fail_closed(checks: Callable[[DictConfig], None], config: DictConfig, what: str) -> None:
    """Hydra turns an exception raised in a callback into a warning and starts the run anyway (before: a check that
    raised let the run start with its later checks skipped, the run lock among them): a check that fails is one line and
    exit code 2, and the run or sweep does not start."""
    try:
        checks(config)
    except Exception as exc:  # SystemExit (a refusal) passes: it is not an Exception
        _refuse(f"the checks before the {what} starts failed ({one_line(exc)}); the {what} did not start")


class SweepOutcome(Callback):
    """A sweep goes on past a job whose input is bad (the job writes ``failed.json``); at its end, the jobs that
    failed are counted from those files (written by jobs in any process: basic, submitit, SLURM) so that
    :func:`run_cli` exits 2 naming them: a sweep with a failed job exited 0 (walkthrough)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_jobs.sweep_dir.update(folder=Path(str(config.hydra.sweep.dir)), started=time.time())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_jobs.count_sweep_jobs()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        keep_compact()  # the sweeper's own errors after this job reach run_cli (all trials failed: one line)
        crashed_job(config, job_return)


def crashed_job(config: DictConfig, job_return: Any) -> None:
    """A sweep job that raised (no bad input: a bug, CUDA out of memory) gets a ``failed.json`` naming the error, so
    the sweep ends with the failed-jobs line and exit 2 and the report lists it. A review: the Optuna sweeper
    marks such a trial FAIL and goes on (``max_failure_rate``), and with no file the search exited 0 and the report
    counted the trial as unfinished. Runs in the job's own process under every launcher."""
    from hydra.core.utils import JobStatus

    if getattr(job_return, "status", None) != JobStatus.FAILED:
        return
    out = Path(str(config.hydra.runtime.output_dir))
    if not (out / "failed.json").exists():
        exc = getattr(job_return, "_return_value", None)
        sweep_jobs.write_failed(out, one_line(exc)[:2000], list(job_return.overrides or []))


FULL_ERROR = "HYDRA_FULL_ERROR"
#: set: whether HYDRA_FULL_ERROR is set by run_cli now (to catch composition errors); owned: whether run_cli
#: manages it in this command (the user did not set it); after_job: set again after a sweep's job
_compact = {"set": False, "owned": False, "after_job": False}


def keep_compact() -> None:
    """After a sweep's job (in the sweeper's process): HYDRA_FULL_ERROR again, so that an error the sweeper
    raises after its jobs (Optuna's "No trials are completed yet." when every trial failed) reaches
    :func:`run_cli` rather than Hydra's report; the next job's :func:`task_started` clears it again."""
    if _compact["owned"]:
        os.environ[FULL_ERROR] = "1"
        _compact["set"] = _compact["after_job"] = True


def hydra_report(exc: BaseException) -> None:
    """Hydra's own report of an error that reached :func:`run_cli` only because of :func:`keep_compact` (a
    sweep job's crash re-raised by the sweeper), as Hydra prints it without run_cli; exit 1."""
    os.environ.pop(FULL_ERROR, None)
    try:
        from hydra._internal.utils import run_and_report
    except ImportError:  # a Hydra without it: Python's report
        raise exc from None

    tb = exc.__traceback__  # from Hydra's own run_and_report on, as Hydra trims it (up to run_job)
    while tb is not None and tb.tb_frame.f_code.co_name != "run_and_report":
        tb = tb.tb_next
    if tb is not None:
        exc = exc.with_traceback(tb.tb_next)

    def again() -> None:
        raise exc

    run_and_report(again)
    raise exc  # run_and_report exits; never reached


def task_started() -> None:
    """Called first in the task function: from here on the task's own errors get Hydra's usual report."""
    if _compact["set"]:
        os.environ.pop(FULL_ERROR, None)
        _compact["set"] = False


def user_command(task: Callable[[DictConfig], Any], cfg: DictConfig, config_name: str | None = None) -> Any:
    """The task of a one-shot command (predict, ensemble): ``task(cfg)``; a user error is one ``error:`` line on
    stderr and exit 2, anything else propagates. ``config_name``: the command's own config, whose keys are all it
    takes (a walkthrough: ``++data.mask_threshold=null`` was added past Hydra's check and ignored without a word)."""
    task_started()
    try:
        if config_name is not None:
            _refuse_unknown_keys(cfg, config_name)
        return task(cfg)
    except KeyboardInterrupt:  # a walkthrough: Ctrl-C in a folder's predict was a 97-line traceback
        print("stopped (SIGINT): each output written so far is whole (written to a temporary file, then renamed); "
              "the same command again redoes them all", file=sys.stderr)
        sys.exit(128 + int(signal.SIGINT))
    except Exception as exc:  # noqa: BLE001 - user errors become one line, the rest propagate
        err = find_user_error(exc)
        if err is None:
            raise
        _refuse(one_line(err))


def _refuse_unknown_keys(cfg: DictConfig, config_name: str) -> None:
    """One ``ConfigError`` naming a top-level key ``experiments/configs/<config_name>.yaml`` does not have."""
    import difflib

    from omegaconf import OmegaConf

    known = set(OmegaConf.load(Path(__file__).with_name("configs") / f"{config_name}.yaml")) - {"defaults", "hydra"}
    extra = sorted(set(map(str, cfg)) - known)
    if extra:
        near = difflib.get_close_matches(extra[0], sorted(known), n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        where = "; the training run's data and model settings come from its config.yaml (run_config=)" \
            if "run_config" in known else ""
        raise ConfigError(f"{config_name} has no setting {extra[0]}{hint}: its settings are "
                          f"{', '.join(sorted(known))}{where}")


#: the experiment folder of the running sweep's ``hydra.sweep.dir``, for its jobs in this and other processes
SWEEP_NAME_ENV = "FEDMED_SWEEP_NAME"


def sweep_folder_name(name: str) -> str:
    """``${fedmed_sweep_name:${task_name}}`` in ``hydra.sweep.dir``: the experiment(s) the command names
    (``+exp=a`` -> ``a``, ``+exp=a,b`` -> ``a+b``), else the first task name resolved (the sweep's own config), for
    every job, in this process or another (the variable travels to submitit's and SLURM's jobs). A review: a sweep over what ``exp_name`` names
    (``+exp=medmnist data.flag=a,b``, or ``+exp=a,b``) put each job under its own experiment folder, so the
    failed-job count read one folder only (a failed job exited 0) and a report over the sweep found no run."""
    pinned = os.environ.get(SWEEP_NAME_ENV)
    if pinned:
        return pinned
    typed = [a.split("=", 1)[1] for a in sys.argv[1:] if re.fullmatch(r"\+*exp=.+", a)]
    if typed:  # the experiment(s) as typed: "+exp=medmnist data.flag=a,b" is medmnist, not the default flag's name
        values = [v for v in re.split(r"[,()\s]+", re.sub(r"^\w+\(", "", typed[-1])) if v]
        name = "+".join(re.sub(r"[^A-Za-z0-9_.-]", "-", v) for v in values)[:100] or str(name)
    return os.environ.setdefault(SWEEP_NAME_ENV, str(name))


def run_cli(main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function; Hydra's command-line errors, a launcher that cannot submit the sweep
    and a sweep with failed jobs (:class:`SweepOutcome`) become one line and exit code 2."""
    started = time.time() - 1.0  # file times may be rounded down to the second
    sweep_jobs.sweep.update(failed=[], jobs=0)  # a command run earlier in this process (tests) counts nothing
    sweep_jobs.sweep_dir.update(folder=None, started=0.0)
    os.environ[COMMAND_ENV] = json.dumps(sys.argv[1:])  # a sweep's jobs name their W&B runs by what it varies
    os.environ.pop(SWEEP_NAME_ENV, None)  # pinned by this command's sweep, if it is one (sweep_folder_name)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # Optuna's storage: 7 "setup plugin" lines a sweep
    if FULL_ERROR in os.environ:  # the user asked for Hydra's full report
        main()
        sweep_jobs.exit_if_jobs_failed()
        return
    os.environ[FULL_ERROR] = "1"  # Hydra then raises composition errors instead of printing them
    _compact.update(set=True, owned=True, after_job=False)
    try:
        main()
    except (OverrideParseException, ConfigCompositionException) as exc:
        if _compact["after_job"]:  # raised after a sweep's job: not a command-line error
            hydra_report(exc)
        if not _compact["set"]:  # raised by the task itself, after task_started(): not a command-line error
            raise
        _refuse(hydra_error_line(exc))
    except Exception as exc:  # noqa: BLE001 - only the launcher's and the sweeper's set-up errors are shortened
        if no_completed_trial(exc):  # every trial failed: the sweeper found no best one (on_multirun_end not run)
            sweep_jobs.count_sweep_jobs()
            sweep_jobs.exit_if_jobs_failed()  # "N of M sweep jobs failed", exit 2, as for any sweep with failed jobs
        if _compact["after_job"]:  # anything else the sweeper raised after a job: Hydra's report, as before
            hydra_report(exc)
        space = (null_group_override(exc) or search_space_error(exc)) if _compact["set"] else None
        if space:
            _refuse(space)
        if isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS:  # Hydra's own writes (a sweep job's .hydra/)
            # found when a full disk ended a sweep with a Hydra traceback
            _refuse(f"{one_line(exc)} (Hydra writing a run's files; the jobs that finished are kept)")
        if not (_compact["set"] and submission_error(exc)):
            raise
        _refuse(f"hydra/launcher could not submit the jobs: {one_line(exc)}{drop_unsubmitted_sweep(started)}")
    finally:
        task_started()
        _compact.update(owned=False, after_job=False)
    sweep_jobs.exit_if_jobs_failed()
