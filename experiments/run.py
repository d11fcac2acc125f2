"""Entry point: ``python -m experiments.run +exp=lits_dnet [overrides]`` (Hydra; ``-m`` for sweeps).

Composes the config and dispatches to a centralised run, a distillation run or a federation. It holds no
training logic: the pieces come from :mod:`engine.builders`, and everything a run produces lands
in its own output dir (resolved config, ``metrics.json``, checkpoints, PNGs, CSV logs, a W&B run).
"""
from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")  # nothing needs a network unless the user asks for it
os.environ.setdefault("WANDB_SILENT", "true")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from pytorch_lightning.utilities.exceptions import SIGTERMException  # noqa: E402

from engine import artifacts, stop  # noqa: E402
from engine.debug import apply_debug, as_run, fast_dev_rounds  # noqa: E402
from engine.errors import find_user_error, one_line  # noqa: E402
from engine.finished_run import finished_line, finished_metrics, holds_result  # noqa: E402
from engine.builders import check_dimensions, check_task  # noqa: E402
from engine.resolvers import register_resolvers  # noqa: E402
from engine.scalars import check_scalars  # noqa: E402
from engine.tracking import check_wandb_modes, in_sweep  # noqa: E402
from datamodules.spatial import forget_warnings as forget_header_warnings  # noqa: E402
from lightning_modules.base import forget_said_warnings  # noqa: E402
from engine.fit import output_dir, train_and_test  # noqa: E402
from engine.init_weights import check_init_weights  # noqa: E402
from lightning_modules import targets  # noqa: E402
from engine.objective import optimized_value  # noqa: E402
from engine.tracking import record_environment  # noqa: E402
from engine.run_overrides import method_suffix, swept_suffix, typed_command  # noqa: E402
from engine.wandb_tracking import trained_model  # noqa: E402
from engine.continue_command import holds_run, interrupted_line, sweep_continue_command  # noqa: E402
from experiments.ddp_job import job_command  # noqa: E402
from experiments.hydra_checks import run_cli, sweep_folder_name, task_started  # noqa: E402
from experiments import run_lock, sweep_jobs  # noqa: E402
from experiments.run_folder import (checked_resume_problem, first_start, main_process,  # noqa: E402
                                    named_file_clash, not_resumable_line, resumable, set_aside_run, slurm_restarts)

log = logging.getLogger("experiments.run")

#: per-process suffix of run/sweep dirs: two runs started in the same second never share a run dir
#: (and so never a checkpoint or a W&B id, which live in it)
RUN_UID = f"{os.getpid() % 100000:05d}{secrets.token_hex(2)}"


def _run_dir(resume: Any, default: str) -> str:
    """``hydra.run.dir``: the resumed run's own folder for ``resume=<run dir>`` (no stray new folder)."""
    if resumable(resume):
        return str(Path(resume).resolve())
    return default


# the library's resolvers and the run folder's names, before Hydra composes the config
register_resolvers({"fedmed_uid": lambda: RUN_UID, "fedmed_run_dir": _run_dir, "fedmed_swept": swept_suffix,
                    "fedmed_method": method_suffix, "fedmed_model": trained_model,
                    "fedmed_sweep_name": sweep_folder_name})


def dispatch(cfg: DictConfig) -> dict[str, Any]:
    """Pick the run kind from the config: federated distillation, federation, distillation, or centralised."""
    forget_said_warnings()  # each job of an in-process sweep logs its own once-per-run warnings
    forget_header_warnings()
    apply_debug(cfg)  # debug=<mode>: after the experiment, which +exp= appends last
    fast_dev_rounds(cfg)  # ++trainer.fast_dev_run=true: a federation runs one round
    output_dir(cfg).mkdir(parents=True, exist_ok=True)
    record_environment(output_dir(cfg))  # env.json: versions, CPU, threads (the same seed differs without them)
    if cfg.get("fed_distill") is not None:  # stage 1 (the federated teacher) goes back through dispatch
        from federation.fed_distill import run_fed_distill

        return run_fed_distill(cfg, federate=dispatch)
    if cfg.get("federation") is not None:
        from federation.transports.flower import launches

        if launches(cfg):  # federation/executor=flower outside a ServerApp: the deployment, rehearsed or handed over
            from federation.transports.flower.launch import rehearse

            return rehearse(cfg)
        from federation.loop import run_federation

        return run_federation(cfg)
    if cfg.get("distill") is not None:
        from engine.distill import run_distillation

        return run_distillation(cfg)
    return train_and_test(cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    task_started()
    resume = cfg.get("resume")
    # a single run was checked before Hydra wrote anything (WritableOutput.on_run_start); a sweep's job is checked
    # here, resume=<dir> and resume=true alike (a trust review: `-m ... resume=<dir>` wrote through a link in a
    # handed-over run folder; a review of that fix: `-m ... resume=true` through one in the job's own folder)
    if resumable(resume) is False:
        return _failed(output_dir(cfg), not_resumable_line(resume), refused=True)
    if in_sweep() and main_process():  # a single run's locks: taken by WritableOutput before Hydra wrote
        in_use = run_lock.first_refusal([("hydra.runtime.output_dir", str(output_dir(cfg)))], take=True)
        if in_use is not None:  # a review: a single run started in a live job's folder moved its files aside
            print(f"error (job {output_dir(cfg).name}): {in_use}", file=sys.stderr)
            sweep_jobs.job_refused(output_dir(cfg))  # its failed.json would go into the other run's folder
            return None
        in_use = run_lock.first_refusal([("resume", resume)], take=True) if resumable(resume) else None
        if in_use is not None:  # a review: `-m ... resume=<dir>` continued a folder whose run still ran
            return _failed(output_dir(cfg), in_use, release=True, refused=True)
    continued = Path(resume).resolve() if resumable(resume) else output_dir(cfg) if resume in (True, "true") else None
    bad = checked_resume_problem(continued, cfg) if continued is not None and in_sweep() else None
    if bad is not None:
        return _failed(output_dir(cfg), bad.splitlines()[0], release=True, refused=True)
    if resumable(resume):  # resume=<run dir>: continue that run in its own folder (same checkpoints, W&B run id)
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(resume).resolve())
    targets.allow(cfg.get("allow_targets"))
    out = output_dir(cfg)
    restarts = slurm_restarts()
    if resume in (None, False) and restarts:
        # SLURM reruns a requeued job's command in the same run dir: continue it (as Lightning restores its own
        # checkpoint on a requeue) rather than start over there; resume=true with no checkpoint starts fresh
        log.info("SLURM requeue %d of this job: resume=true (continuing %s)", restarts, out)
        with open_dict(cfg):
            cfg.resume = True
        bad = checked_resume_problem(out, cfg)  # a resume's checks: a review found a requeue, resumed after them,
        if bad is not None:  # recording a replaced init_weights file's checksum
            return _failed(out, f"SLURM requeue {restarts}: {bad.splitlines()[0]}", refused=True)
    previous = stop.install()
    try:
        done = finished_metrics(out, cfg) if holds_run(out) else None
        if done is not None:  # a finished run resumed as it ran (a repeated "continue" command, a SLURM requeue)
            print(finished_line(out), file=sys.stderr)
            return optimized_value(cfg, done)  # a sweep's objective, as the run returned it; its lock let go below
        fresh = cfg.get("resume") in (None, False, "false") or (cfg.get("resume") in (True, "true")
                                                                   and not holds_run(out))  # nothing to continue
        if fresh and first_start():  # a new run: nothing of the earlier run's is continued, reused or mixed in
            # a single run was checked by WritableOutput; a sweep's job in a reused folder here (a review)
            clash = named_file_clash(out, cfg) if in_sweep() else None
            if clash is not None:  # as a refused folder: nothing written into the earlier run's files
                print(f"error (job {out.name}): {clash}", file=sys.stderr)
                sweep_jobs.job_refused(out)
                return None
            moved = set_aside_run(out, cfg)
            if moved is not None:
                log.warning("%s held an earlier run: its files are moved to %s", out, moved)
        check_dimensions(cfg, dict(HydraConfig.get().runtime.choices))
        check_task(cfg, dict(HydraConfig.get().runtime.choices))
        check_scalars(cfg)
        check_init_weights(cfg)  # a missing file or a conflicting setting, before anything is built
        check_wandb_modes(cfg)  # before a distillation's teacher trains
        artifacts.atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(as_run(cfg), resolve=True))
        with job_command():  # DDP's ranks > 0 in a sweep job run this job (experiments/ddp_job.py)
            metrics = dispatch(cfg)
        if metrics.get("fed_distill/pending"):  # paused for a real SuperLink: no objective yet, not a failure
            return None
        return optimized_value(cfg, metrics)  # the sweep objective: cfg.optimized_metric, a validation metric
    except SIGTERMException:  # Lightning's SIGTERM (a SystemExit without a code): exit 0 would read as success
        _interrupted(out, "SIGTERM")
    except KeyboardInterrupt:  # Ctrl-C outside Lightning's fit (between clients, in an evaluation)
        _interrupted(out, "SIGINT")
    except SystemExit as exc:  # Lightning's own Ctrl-C ending: "Detected KeyboardInterrupt", then sys.exit(1)
        if exc.code == 1 and isinstance(exc.__context__, KeyboardInterrupt):
            _interrupted(out, "SIGINT")
        raise
    except Exception as exc:  # noqa: BLE001 - user errors become one line, the rest propagate
        if stop.requested():  # the SIGTERM, masked by an error raised as it unwound library code (CI, once)
            _interrupted(out, "SIGTERM")
        if stop.requested("sigint"):  # a Ctrl-C masked so (CI, once: a client's ConfigKeyError, exit 2)
            _interrupted(out, "SIGINT")
        err = find_user_error(exc)
        if err is None:
            raise
        return _failed(out, one_line(err))
    finally:
        stop.restore(previous)  # SIGTERM anywhere in the run, not only in Lightning's fit (engine/stop.py)
        run_lock.release_all()  # taken above or by WritableOutput.on_run_start


def _failed(out: Path, line: str, release: bool = False, refused: bool = False) -> None:
    """A run stopped by bad input, before or while it ran: its folder says why it holds no results (``failed.json``,
    which experiments.report lists and :class:`experiments.hydra_checks.SweepOutcome` counts), then one line; a
    sweep's job returns so the sweep goes on (and exits 2 naming it), a single run exits 2. A resume ``refused``
    before anything ran leaves a finished run's folder as it was (a review: its ``failed.json``, newer than the
    results, listed the run as failed); a sweep counts the job among its failed ones all the same."""
    if refused and holds_result(out):
        if in_sweep():
            sweep_jobs.job_refused(out)
    else:
        sweep_jobs.write_failed(out, line, list(HydraConfig.get().overrides.task))
    if release:  # the run locks a sweep's job took before it stopped (the next job of this process takes its own)
        run_lock.release_all()
    if in_sweep():  # one bad job must not kill the sweep
        print(f"error (job {out.name}): {line}", file=sys.stderr)
        return None
    print(f"error: {line}", file=sys.stderr)
    sys.exit(2)


def _interrupted(out: Path, signame: str) -> None:
    """One line with the command that continues the run, exit 128 + the signal (a walkthrough: Ctrl-C in a
    sequential or Ray federation ended in Lightning's exit 1 and no such line, where SIGTERM gave one)."""
    line = interrupted_line(signame, HydraConfig.get().overrides.task, out)
    sweeper = str(OmegaConf.select(HydraConfig.get(), "sweeper._target_", default="") or "")
    if in_sweep() and "optuna" not in sweeper.lower():  # an Optuna sweep's trials would be drawn anew
        line += f"; the whole sweep: {sweep_continue_command(typed_command(), HydraConfig.get().sweep.dir)}"
    print(line, file=sys.stderr)
    sys.exit(128 + int(getattr(signal, signame)))


if __name__ == "__main__":
    run_cli(main)
