"""Hydra's and its plugins' errors as one line each (:func:`experiments.hydra_checks.run_cli` prints it and exits
2): an override or config-composition error, ``<group>=null``, a search space Optuna refuses, a sweep no launcher
could submit (and the folder that submission left), a search none of whose trials completed."""
from __future__ import annotations

import re
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException, OverrideParseException

from engine.errors import one_line
from lightning_modules.hints import struct_key_hint


def hydra_error_line(exc: Exception) -> str:
    """One line for a Hydra composition or override error (Hydra's own text spans several lines)."""
    if isinstance(exc, OverrideParseException):
        lines = [ln.strip() for ln in exc.message.splitlines() if ln.strip()]
        return f"override {exc.override!r}: {lines[0]}" + (f" ({lines[1]})" if len(lines) > 1 else "")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    head = lines[0].split(": ", 1)[1] if lines and lines[0].startswith("In '") and ": " in lines[0] else (lines or [""])[0]
    if isinstance(exc, MissingConfigException) and exc.options:
        return f"{head}; available: {', '.join(str(o) for o in exc.options)}"
    cause = str(exc.__cause__).strip().splitlines()[0] if exc.__cause__ is not None and str(exc.__cause__).strip() else ""
    rest = [ln for ln in lines[1:] if not ln.startswith(("Available options", "Config search path", "provider="))]
    hint = struct_key_hint(exc.__cause__)  # data.imag_size=32: "did you mean data.image_size?"
    return head.rstrip(".") + (f": {cause}" if cause else "") + hint + "".join(f" ({ln.rstrip('.')})" for ln in rest[:1])


def submission_error(exc: BaseException) -> bool:
    """Raised by submitit while it submits a sweep (no ``srun`` here, ``sbatch`` refused the jobs: a bad
    partition, account or time), not while it reads a job's result (a job that crashed keeps its traceback)."""
    codes = [frame.f_code for frame, _ in traceback.walk_tb(exc.__traceback__)]
    in_submitit = any("/submitit/" in code.co_filename.replace("\\", "/") for code in codes)
    return in_submitit and not any(code.co_name in ("result", "results") for code in codes)


def drop_unsubmitted_sweep(since: float) -> str:
    """After a refused submission: remove the sweep folder when this command made all of it (only
    ``multirun.yaml`` and submitit's ``.submitit`` scripts, none older than ``since``), so a sweep that never
    started leaves no folder behind (a review); an existing sweep's folder is kept. Returns what the error
    line should add."""
    import shutil

    try:
        sweep = Path(str(HydraConfig.get().sweep.dir))
    except ValueError:  # HydraConfig not set: nothing to tidy
        return ""
    if not sweep.is_dir() or {p.name for p in sweep.iterdir()} - {"multirun.yaml", ".submitit"}:
        return ""
    if any(p.stat().st_mtime < since for p in sweep.rglob("*")):
        return ""
    shutil.rmtree(sweep, ignore_errors=True)
    return f" (nothing ran; the sweep folder {sweep} this command made is removed)"


def search_space_error(exc: BaseException) -> str | None:
    """A search space the Optuna sweeper cannot build (a log interval from 0, low > high, ...), before any
    trial ran: the override as typed (or the sweeper param) and Optuna's reason; ``None`` for anything else."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        if code.co_name == "create_optuna_distribution_from_override" and "hydra_optuna_sweeper" in code.co_filename:
            override = frame.f_locals.get("override")
            typed = getattr(override, "input_line", None) or (
                override.get_key_element() if hasattr(override, "get_key_element") else "a sweeper param")
            return f"the Optuna search space {typed!r} is refused: {one_line(exc)}"
    return None


def no_completed_trial(exc: BaseException) -> bool:
    """The Optuna sweeper's ``ValueError: No trials are completed yet.`` at the end of a search none of whose
    trials returned an objective (each job failed on bad input and wrote its ``failed.json``)."""
    if not isinstance(exc, ValueError) or "No trials are completed" not in str(exc):
        return False
    return any(frame.f_code.co_name == "sweep" and "hydra_optuna_sweeper" in frame.f_code.co_filename
               for frame, _ in traceback.walk_tb(exc.__traceback__))


def null_group_override(exc: BaseException) -> str | None:
    """One line for Hydra's ``ValueError`` on ``<group>=null`` (``logger=null``: 40 lines of traceback, a review),
    naming the override and how to leave the group out."""
    if not (isinstance(exc, ValueError) and str(exc).startswith("Config group override must be a string")):
        return None
    named = [a for a in sys.argv[1:] if re.fullmatch(r"[+~]*[\w/@.-]+=(null|None)", a) and "." not in a.split("=")[0]]
    group = named[0].split("=")[0].lstrip("+~") if named else "<group>"
    return (f"override {named[0] if named else group + '=null'!r}: {group} is a config group, set to one of its options "
            f"(python -m experiments.run --help lists them); leave it out with ~{group}")
