"""Checks of a run's output folder before Hydra writes into it (called by
:class:`experiments.hydra_checks.WritableOutput`): a folder that cannot be written, a ``resume=`` folder that
holds no run, a link out of it, a state that does not load or another run's config, and an earlier run left in
``hydra.run.dir``. Each returns what is wrong (or None); the caller prints one line and exits 2."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments.named_files import checkpoint_clash, named_files, top_name


def unwritable(folder: str | Path) -> Path | None:
    """The first existing ancestor of ``folder`` (itself included) that blocks creating/writing it."""
    path = Path(folder).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            ok = candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
            return None if ok else candidate
    return None


def resumable(resume: Any) -> bool | None:
    """For ``resume=<run dir>``: whether the folder holds a run to continue (a centralised or distillation
    run's ``checkpoints/``, a federation's ``server.pt``, a distillation stopped in its ``teacher/`` stage);
    ``None`` when ``resume`` names no folder (``true``/``false``/unset)."""
    if not isinstance(resume, str) or resume in ("true", "false"):
        return None
    from engine.continue_command import holds_run

    return holds_run(resume)


def slurm_restarts() -> int:
    """How many times SLURM has requeued this job (``SLURM_RESTART_COUNT``: preemption, ``--requeue``,
    submitit's requeue at the time limit); 0 outside SLURM or when the variable is not a count."""
    try:
        return max(int(os.environ.get("SLURM_RESTART_COUNT", "0")), 0)
    except ValueError:
        return 0


def not_resumable_line(resume: str) -> str:
    """Why ``resume=<dir>`` cannot continue: no such folder (a walkthrough: a mistyped path was said to hold no
    checkpoints), or one holding nothing a run saves."""
    if not Path(str(resume)).exists():
        return f"resume={resume} does not exist: give the run dir to continue (logs/<exp>/runs/<run>)"
    return f"resume={resume} is not a run dir to continue (no checkpoints/, server.pt or teacher/ in it)"


def foreign_link(folder: str | Path) -> tuple[Path, str] | None:
    """The first link under an existing run folder that leads outside it (or nowhere, or in a loop), with
    its target.

    A run writes into its folder: CSV logs, ``run.log``, checkpoints, ``metrics.json``. A crafted run folder
    handed to ``resume=`` with ``csv/hparams.yaml`` linked to another file would have that file replaced.
    Links inside the folder are fine. W&B's own folder is left to W&B (a link there leads into
    ``~/.cache/wandb``): a resumed run writes a new ``wandb/offline-run-*`` folder and W&B re-points its own
    links rather than writing through them; ``wandb`` itself as a link is refused like any other. So are the
    ``wandb`` folders of a run's stages and sites (a federated distillation's ``teacher/``, ``fed_none/``,
    ``sites/<site>/<arm>/``: a walkthrough found its resume refused for 56 such links)."""
    root = Path(folder)
    if not root.is_dir():
        return None
    base = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)  # the run's own W&B folder, or a stage's or site's beside its wandb_id.txt (a security
        if "wandb" in dirnames and not (here / "wandb").is_symlink() and (  # review: not any folder named wandb)
                here == root or (here / "wandb_id.txt").is_file()):
            dirnames.remove("wandb")
        for name in (*dirnames, *filenames):
            entry = Path(dirpath) / name
            if entry.is_symlink():
                try:
                    target = entry.resolve(strict=True)
                except (OSError, RuntimeError):  # dangling, or a loop (RuntimeError on Python 3.11)
                    return entry.relative_to(root), os.readlink(entry)
                if not target.is_relative_to(base):
                    return entry.relative_to(root), os.readlink(entry)
    return None


def unusable_resume_state(run: Path, federation: bool, store_dir: Any = "client_store") -> str | None:
    """Why the state a resume continues from (a federation's ``server.pt`` and client store files in
    ``store_dir``, a run's ``checkpoints/last.ckpt``) cannot be used, or ``None``: checked before anything is
    written, so a failed resume leaves a finished run's ``config.yaml`` and ``.hydra/`` as they were (both are
    rewritten when a run starts; an audit found a bad client store file refused only after that)."""
    from engine.checkpoint_checks import check_trainer_state, checked_ckpt
    from federation.resume_checks import check_resumed_local
    from federation.server_state import load_server_state
    from federation.store import read_store_file
    from lightning_modules.errors import CheckpointError
    from federation.errors import FederationError

    try:
        last = run / "checkpoints" / "last.ckpt"
        start = 0  # the round a federation resumes at (server.pt's round + 1)
        if federation and (run / "server.pt").is_file():
            start = load_server_state(run / "server.pt")["round"] + 1  # RNG states tried on scratch generators
        if federation:  # memory-mapped (lazy): their structure, and the kept BN entries finite, as Server.resume
            store = run / str(store_dir or "client_store")
            for path in sorted(store.glob("*.pt")):
                check_resumed_local(read_store_file(path, "client store", lazy=True), start, path)
            for path in sorted((store / "best_local").glob("*.pt")):
                read_store_file(path, "client store", lazy=True)
        if not federation and last.is_file():
            check_trainer_state(checked_ckpt(last, lazy=True), last)
    except (CheckpointError, FederationError) as err:
        return str(err)
    return None


def another_run(run: Path, config: DictConfig) -> str | None:
    """Why ``config`` does not continue the run in ``run`` (another net, other data settings or split than
    its ``config.yaml``), with the command that does; ``None`` when it does or the run has no config yet."""
    from engine.continue_command import continue_command, hydra_value, saved_overrides
    from engine.init_weights import resume_difference, started_file_problem
    from engine.run_match import debug_difference, differences, resume_keys, saved_config

    saved = saved_config(run)
    if saved is None:
        return None
    try:
        from engine.debug import as_run

        ran = as_run(config)  # config.yaml holds the run as debug settings left it
        diffs = [*debug_difference(saved, ran), *resume_difference(saved, ran),
                 *differences(saved, ran, resume_keys(saved))]
    except Exception:  # noqa: BLE001 - a config that does not resolve here fails with its own message later
        return None
    if not diffs:  # the same settings: the init_weights file must still be the one it started from
        problem = started_file_problem(saved, ran)
        return None if problem is None else f"resume={run}: {problem}"
    shown = "; ".join(diffs[:4]) + (f"; and {len(diffs) - 4} more" if len(diffs) > 4 else "")
    why = (" (a resumed run takes its optimiser and schedule from its checkpoint, so new values would not apply; a "
           "cosine T_max follows trainer.max_epochs: a longer run is a new run)"
           if any(d.startswith(("module.optimizer", "module.scheduler")) for d in diffs) else "")
    # init_weights= as config.yaml records it (absolute): the overrides keep the path as typed, relative to the
    # working directory of whichever command last ran there (a walkthrough: the suggested command was refused again)
    first = saved.get("init_weights")
    overrides = [f"init_weights={hydra_value(first)}" if isinstance(first, str) and first
                 and str(o).lstrip("+").startswith("init_weights=") else o for o in saved_overrides(run)]
    return (f"resume={run} composes another run than the one in it: {shown}{why}. Repeat the run's overrides: "
            f"{continue_command(overrides, run)}")


def outside_link_line(what: str, folder: Path, link: tuple[Path, str]) -> str:
    """The refusal of a run folder (``what``: ``run dir``, ``hydra.run.dir=``, ...) holding :func:`foreign_link`'s
    ``link``: a resumed run, and Hydra's ``.hydra/*.yaml`` and ``run.log`` before any check of the run's own, would
    write through it."""
    sep = "" if what.endswith("=") else " "
    return (f"{what}{sep}{folder} holds {link[0]}, a link to {link[1]} outside it; a run writes only into its own "
            f"folder (remove the link, or give the run another folder)")


def resume_problem(run: Path, config: DictConfig) -> str | None:
    """Why ``config`` cannot continue the run in ``run``, or ``None``: a link out of the folder, a state
    that does not load, another net or data than the run's."""
    link = foreign_link(run)
    if link is not None:
        return outside_link_line("run dir", run, link)
    federation = config.get("federation") is not None and config.get("fed_distill") is None
    store_dir = OmegaConf.select(config, "federation.store_dir", default=None) if federation else None
    return unusable_resume_state(run, federation, store_dir) or another_run(run, config)


def checked_resume_problem(run: Path, config: DictConfig) -> str | None:
    """:func:`resume_problem`, where a folder that cannot be checked is a problem too (one line, never a traceback):
    the single run's Hydra callback and a sweep's job (``experiments.run.main``) ask the same."""
    try:
        return resume_problem(run, config)
    except Exception as err:  # noqa: BLE001 - a run dir that cannot be checked is not continued
        from lightning_modules.errors import ConfigError

        return str(err) if isinstance(err, ConfigError) else \
            f"resume: run dir {run} could not be checked ({type(err).__name__}: {err})"


def main_process() -> bool:
    """Not a DDP rank > 0 (Lightning starts them in rank 0's run dir, with rank 0's command)."""
    ranks = [os.environ.get(k, "0") for k in ("LOCAL_RANK", "RANK", "SLURM_PROCID")]
    return all(r.strip() in ("", "0") for r in ranks)


def first_start() -> bool:
    """Not a DDP rank > 0 and not a SLURM requeue (the job's own folder, continued): where an earlier run's
    files in ``hydra.run.dir`` are another run's (a review)."""
    return slurm_restarts() == 0 and main_process()


#: what says a run finished (or failed) and what its report reads
RESULT_FILES = ("metrics.json", "failed.json", "test_per_case.csv")
#: what a run writes at the top of its run dir: results, training state, logs, figures and stages. A new run in
#: the folder moves them aside, so nothing of the earlier run is continued, reused or mixed with its own (Hydra's
#: ``.hydra/`` and job log, and ``config.yaml``, are the next run's to rewrite).
RUN_ARTEFACTS = RESULT_FILES + (
    "checkpoints", "csv", "wandb", "wandb_id.txt", "wandb_identity.json", "env.json",  # every run
    "learning_curves.png", "test_roc.png", "test_overlays.png", "confusion_matrix_test.png",
    "teacher", "student.pt", "teacher.pt", "kd_maps.png",  # a distillation
    "server.pt", "federation_id.txt", "global_best.pt", "global_final.pt", "global_best_local.pt", "best_local", "client_store",
    "rounds.csv", "partition.json", "partition.md", "partition.png", "fed_curves.png", "fed_compare.png",
    "evaluation_matrix.csv", "evaluation_matrix.md",  # a federation (its flower/ stays: the launcher stops what a
    # killed launch of the folder left running by its launcher.json, and refuses while that launcher lives)
    "sites", "fed_none", "fed_hlfd", "fed_distill.csv", "fed_distill.md", "fed_distill.png")  # a fed. distillation
EARLIER = "earlier"  # <run>/earlier/<time>/: what a later run in that folder moved aside (no run of their own)


_STAMP = re.compile(r"\d{8}-\d{6}(-\d+)?")


def set_aside(path: Path) -> bool:
    """Whether ``path`` (a result file, also one of a stage: ``teacher/metrics.json``) lies in a run's
    ``earlier/<time>/`` (:func:`set_aside_run`): not any folder named ``earlier`` (a review: every job of a sweep
    under ``.../earlier/`` was left out of reports)."""
    for holder in path.parents:
        run = holder.parent.parent
        if holder.parent.name == EARLIER and _STAMP.fullmatch(holder.name) and (
                (run / ".hydra").is_dir() or (run / "config.yaml").is_file()):
            return True
    return False


def set_aside_run(run: Path, cfg: Any = None) -> Path | None:
    """Move an earlier run's :data:`RUN_ARTEFACTS` (and its federation's ``federation.store_dir`` inside ``run``)
    from ``run`` into ``run/earlier/<UTC time>/`` and return that folder (None: nothing moved). Reviews: a second
    run started in a pinned ``hydra.run.dir`` and killed left the first run's ``metrics.json`` beside its own config
    (experiments.report showed a 1-epoch D-Net's score as a finished 40-epoch U-Net); one that finished appended its
    rows to the first's ``csv/metrics.csv``, logged into the first's W&B run, and left the first's
    ``checkpoints/best.ckpt`` beside its own ``best-v1.ckpt``; a federated distillation reused the first run's
    finished stages whatever its own settings. A file ``cfg`` names there (``ckpt_path=<run>/checkpoints/best.ckpt``
    of a test-only run in its own folder, a teacher trained there) stays where it is, and only it: the rest of its
    folder moves (reviews of this change: moving it broke the run; keeping its whole folder kept the earlier
    ``last.ckpt``, which a resume then took; pointing the config at the moved file made the run's own overrides
    refuse its resume). Nothing moves while a Flower launcher of the folder runs (:func:`live_launcher_of`; the run
    is refused first)."""
    if live_launcher_of(run) is not None:
        return None
    names = list(RUN_ARTEFACTS)
    store = OmegaConf.select(cfg, "federation.store_dir", default=None) if isinstance(cfg, DictConfig) else None
    top = top_name(Path(store), run, run) if isinstance(store, str) and store else None  # relative to the run
    names += [top] if top and top not in names else []
    found = [run / name for name in names if (run / name).is_file() or (run / name).is_dir()]
    if not found:
        return None
    named = named_files(cfg, run) if isinstance(cfg, DictConfig) else set()
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest = run / EARLIER / stamp
    n = 1
    while dest.exists():
        n += 1
        dest = run / EARLIER / f"{stamp}-{n}"
    dest.mkdir(parents=True)
    for f in found:
        _move_but(f, dest / f.name, named)
    return dest


def _move_but(src: Path, dst: Path, keep: set[str]) -> None:
    """``os.replace(src, dst)``, except the files of ``keep`` (absolute paths, links not followed) below ``src``:
    they stay, and the folders holding them are moved entry by entry."""
    here = os.path.abspath(src)
    if here in keep:
        return
    if not any(k.startswith(here + os.sep) for k in keep) or src.is_symlink() or not src.is_dir():
        os.replace(src, dst)
        return
    dst.mkdir(exist_ok=True)
    for child in sorted(src.iterdir()):
        _move_but(child, dst / child.name, keep)


def live_launcher_of(run: Path) -> int | None:
    """The pid of a Flower launcher of ``run`` (or of a stage of it: ``teacher/``, ``fed_hlfd/``) that still runs."""
    folders = [run / "flower", *(run / n / "flower" for n in ("teacher", "fed_none", "fed_hlfd"))]
    records = [f for f in folders if (f / "launcher.json").is_file()]
    if not records:
        return None
    from federation.transports.flower.launcher_record import live_launcher

    return next((pid for pid in map(live_launcher, records) if pid is not None), None)


def earlier_run(run: Path) -> str | None:
    """What in ``run`` says a run ran there already (the first of :data:`RUN_ARTEFACTS` found), or None."""
    return next((name for name in RUN_ARTEFACTS if (run / name).exists()), None)


def init_weights_inside(run: Path, cfg: DictConfig) -> str | None:
    """For a new run in ``run``: an ``init_weights=`` file among what that run moves aside or writes
    (:data:`RUN_ARTEFACTS`, the federation's store folder), as one line; else None. The earlier run's files move
    aside but a file the config names stays, and the new run then wrote its own over it (``global_final.pt``,
    ``student.pt``): a review saw the earlier run's final model lost. A file under ``earlier/`` or a folder of the
    user's own is never touched, and goes on."""
    path = cfg.get("init_weights")
    if not isinstance(path, str) or not path:
        return None
    top = top_name(Path(os.path.expanduser(path)), run, Path.cwd())
    store = str(OmegaConf.select(cfg, "federation.store_dir", default=None) or "client_store")
    if top is None or top not in (*RUN_ARTEFACTS, store):
        return None
    return (f"init_weights={path} is among the files this new run moves aside or writes in {run}: copy it "
            f"elsewhere first, or give this run another folder")


def named_file_clash(run: Path, cfg: DictConfig) -> str | None:
    """For a new run in ``run``: a file its config names that the run would overwrite (a checkpoint where it saves
    its own: :func:`~experiments.named_files.checkpoint_clash`; an ``init_weights`` file among what it moves or
    writes: :func:`init_weights_inside`), as one line; else None."""
    return checkpoint_clash(run, cfg) or init_weights_inside(run, cfg)
