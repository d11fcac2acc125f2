"""One run at a time in a run folder: the run that writes into a folder holds an advisory lock on its
``.run.lock`` (``flock``) until it ends, and a second run started there (a plain run, ``resume=true`` or
``resume=<that dir>``) is refused in one line before Hydra rewrites the folder's ``.hydra/``.

The kernel releases the lock when its process ends, however it ends (a crash, SIGKILL, a node's reboot), so a
stale ``.run.lock`` never blocks a later run; its text (pid and host) is only what the refusal names. A review
found two runs started at once in one folder mixed their checkpoints, CSV rows and W&B run; Flower rehearsals had
their own check (:func:`experiments.run_folder.live_launcher_of`), plain runs none."""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".run.lock"
_held: dict[Path, int] = {}  # folder (resolved) -> the open descriptor whose lock this process holds


def _in_use(path: Path) -> str:
    try:
        said = path.read_text(errors="replace").strip()
    except OSError:
        said = ""
    return (f"is in use by a run still running there ({said or 'another process'}); wait for it to end, or give "
            f"this run another folder")


def holder(folder: str | Path) -> str | None:
    """What keeps a run out of ``folder`` (its lock's holder: "pid 123 on host"), or None when no other process
    holds it. Creates nothing."""
    folder = Path(folder).resolve()
    if folder in _held:
        return None
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # no lock file (no run there yet), not a folder, or a link (hold() names it): no holder
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _in_use(folder / LOCK_NAME)
    finally:
        os.close(fd)  # closing the descriptor also drops the lock taken just now
    return None


def hold(folder: str | Path) -> str | None:
    """Take ``folder``'s run lock for this process (creating the folder): None when taken (or already this
    process's), else what keeps it (as :func:`holder`)."""
    folder = Path(folder).resolve()
    if folder in _held:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    try:  # never through a link: a folder handed over with .run.lock -> ~/.bashrc would have it emptied
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        return f"has a {LOCK_NAME} that cannot be opened ({err.strerror}); remove it, or give this run another folder"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return _in_use(folder / LOCK_NAME)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    _held[folder] = fd
    return None


def release(folder: str | Path) -> None:
    """Let ``folder``'s run lock go (a sweep's jobs run one after another in one process)."""
    fd = _held.pop(Path(folder).resolve(), None)
    if fd is not None:
        os.close(fd)


def refusal_line(key: str, folder: str | Path, problem: str) -> str:
    return f"error: {key}={folder} {problem}"
