"""Which launcher owns a run folder's Flower rehearsal: the marker every process of one launch carries
(:data:`MARK`), the launcher's record in ``flower/launcher.json`` (its pid, start time and marker),
:func:`live_launcher` (the pid of another launcher of that folder that still runs) and :func:`claim`, which makes
this process the folder's one launcher after stopping what an earlier launch left running (used by
:mod:`~federation.transports.flower.launch` and, for a run folder's live launcher, ``experiments.run_folder``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine import artifacts
from federation.errors import FederationError
from federation.transports.flower.processes import marked, stop_marked

__all__ = ["MARK", "claim", "live_launcher"]


#: the environment entry every process of one launch carries (:func:`claim`, :class:`ProcessGroups`)
MARK = "FEDMED_REHEARSAL"


def _started_at(pid: int) -> str | None:
    """The start time of ``pid`` (``/proc/<pid>/stat`` field 22; None when it is gone): a pid with a
    different start time is another process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _launcher_record(record: Path) -> tuple[int | None, str | None, str | None]:
    """``(pid, start time, marker)`` of the launcher ``launcher.json`` names; all None when there is none (no launch
    here yet: nothing of ours runs; a later review: the FLWR_HOME fallback killed a user's shell)."""
    try:
        owner = json.loads(record.read_text())
        return int(owner["pid"]), str(owner["started"]), str(owner.get("marker") or "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None, None


def live_launcher(fdir: Path) -> int | None:
    """The pid of another process that launched the rehearsal in ``fdir`` and still runs (its pid and start time
    in ``launcher.json``), else None."""
    pid, started, _ = _launcher_record(fdir / "launcher.json")
    return pid if pid is not None and pid != os.getpid() and _started_at(pid) == started else None


def claim(fdir: Path, home: Path) -> str:
    """Make this process the one launcher of the rehearsal in ``fdir`` and return the marker its processes will
    carry (``FEDMED_REHEARSAL=<home>:<token>``, fresh per launch): processes an earlier launch left running (they
    carry the marker recorded in ``launcher.json``) are stopped, or, while that launcher is still alive, one
    ``FederationError``; then this process and its marker are recorded there. A review: the marker was
    ``FLWR_HOME=<home>``, which a user's shell exporting it to inspect the run also carried, and was killed."""
    import uuid

    record = fdir / "launcher.json"
    pid, started, before = _launcher_record(record)
    if before is not None and not before.startswith(f"{MARK}={home}:"):  # an older launcher's record (or one
        before = f"FLWR_HOME={home}"  # edited to name other processes, PATH=...): the run's FLWR_HOME, as before
    marker = f"{MARK}={home}:{uuid.uuid4().hex}"
    if before is not None and marked(before):
        if pid is not None and pid == live_launcher(fdir):
            raise FederationError(f"the Flower rehearsal in {fdir.parent} is still run by launcher pid {pid}: "
                                  f"stop it first (kill {pid}); two ServerApps must not write into one run folder")
        stopped = stop_marked(before)
        artifacts.console.print(f"[bold]flower:[/bold] stopped {len(stopped)} processes an earlier launch of this "
                                f"run left running (pids {' '.join(map(str, sorted(stopped)))})")
    artifacts.write_json(record, {"pid": os.getpid(), "started": _started_at(os.getpid()), "marker": marker})
    return marker
