"""A sweep's jobs and their outcome, from files in the sweep folder (so jobs in any process count: basic,
submitit, SLURM): which of them failed (``failed.json``, or a refusal in ``.refused_jobs/``), the one line a
sweep with failed jobs exits 2 with, and which earlier sweep's job still runs in a folder (its run lock)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig

from experiments import run_lock

sweep: dict[str, Any] = {"failed": [], "jobs": 0}
REFUSED = ".refused_jobs"  # <sweep dir>/.refused_jobs/: one file per job refused a folder another run writes in
sweep_dir: dict[str, Any] = {"folder": None, "started": 0.0}  # the running sweep's folder and start time


def count_sweep_jobs() -> None:
    """The jobs of the sweep :class:`experiments.hydra_checks.SweepOutcome` saw start, and those of them that
    failed (``failed.json``)."""
    folder, started = sweep_dir["folder"], sweep_dir["started"]
    if folder is None or not folder.is_dir():
        return

    def new(path: Path) -> bool:  # of this sweep, not of an earlier one in a reused sweep folder
        return path.stat().st_mtime >= started - 1

    failed, jobs = set(), set()
    for top, dirs, files in os.walk(folder):  # one walk for both (links not followed, as rglob)
        here = Path(top)
        if "failed.json" in files and new(here / "failed.json"):
            failed.add(str(here.relative_to(folder)))
        if ".hydra" in dirs and new(here / ".hydra"):
            jobs.add(here)
    failed |= {p.read_text().strip() for p in (folder / REFUSED).glob("*") if new(p)}  # refused, in any process
    jobs |= {folder / f for f in failed}
    failed = sorted(failed)
    sweep["failed"], sweep["jobs"] = failed, len(jobs)


def write_failed(out: Path, line: str, overrides: list[str]) -> None:
    """``<out>/failed.json``: why the run holds no results (``experiments.report`` lists it, :func:`count_sweep_jobs`
    counts it); nothing when the folder is gone or the disk that stopped the run takes no file either."""
    if not out.is_dir():
        return
    from engine import artifacts

    try:
        artifacts.write_json(out / "failed.json", {"error": line, "overrides": [str(o) for o in overrides]})
    except OSError:
        pass


def job_refused(folder: Path) -> None:
    """A sweep job that did not run because another run writes in its folder (so it writes no ``failed.json``
    there): a file in ``<sweep dir>/.refused_jobs/`` names it, which the sweep's process counts among the failed
    jobs (a review: a submitit job's refusal, kept in its own process, was lost and the sweep exited 0)."""
    import uuid

    sweep = os.path.abspath(str(HydraConfig.get().sweep.dir))
    name = os.path.relpath(os.path.abspath(folder), sweep)
    try:
        os.makedirs(os.path.join(sweep, REFUSED), exist_ok=True)
        Path(sweep, REFUSED, uuid.uuid4().hex).write_text(name + "\n")
    except OSError:  # the error line above still says it
        pass


def live_jobs(sweep: Path) -> str | None:
    """A job folder of an earlier sweep in ``sweep`` whose run still runs, as the refusal's end; None if none (a
    review: the same sweep launched again rewrote each live job's ``.hydra/`` before its job could refuse)."""
    if not sweep.is_dir():
        return None
    for lock in sorted(sweep.rglob(run_lock.LOCK_NAME)):
        try:  # a sweep's job only (a review: a single run's live folder below the sweep folder refused it)
            job = "mode: MULTIRUN" in (lock.parent / ".hydra" / "hydra.yaml").read_text(errors="replace")
        except OSError:
            job = False
        problem = run_lock.holder(lock.parent) if job else None
        if problem is not None:
            return f"job folder {lock.parent} {problem}"
    return None


def exit_if_jobs_failed() -> None:
    failed, sweep["failed"] = list(sweep["failed"]), []
    if failed:
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        print(f"error: {len(failed)} of {max(sweep['jobs'], len(failed))} sweep jobs failed (each says why in "
              f"its failed.json and above): {shown}", file=sys.stderr)
        sys.exit(2)
