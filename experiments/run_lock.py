"""One run at a time in a run folder: the run that writes into a folder holds a lock on its ``.run.lock``
until it ends, and a second run started there (a plain run, ``resume=true`` or ``resume=<that dir>``) is refused
in one line before Hydra rewrites the folder's ``.hydra/``.

The lock is a POSIX record lock (``fcntl.lockf``): the kernel drops it when its process ends, however it ends
(a crash, SIGKILL), so a stale ``.run.lock`` never blocks a later run; forked children (DataLoader workers) do
not inherit it (a review: an ``flock`` stayed held by a killed run's workers), and it works on NFS (where
``flock`` is emulated by this lock and needs the file open for writing). Its caveat: the process loses it when
it closes any descriptor of the file, so nothing in the run may open ``.run.lock`` (nothing does but this
module). Where the file system has no locks (ENOLCK, ENOSYS), the run goes on unlocked, said in one line. A
review found two runs started at once in one folder mixed their checkpoints, CSV rows and W&B run; Flower
rehearsals had their own check (:func:`experiments.run_folder.live_launcher_of`), plain runs none."""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import sys
from pathlib import Path

LOCK_NAME = ".run.lock"
_held: dict[Path, int] = {}  # folder (resolved) -> the open descriptor whose lock this process holds
_HELD_ELSEWHERE = (errno.EACCES, errno.EAGAIN)
_said_unlocked: set[Path] = set()


def _in_use(fd: int) -> str:
    try:
        said = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        said = ""
    return (f"is in use by a run still running there ({said or 'another process'}); wait for it to end, or give "
            f"this run another folder")


def _open(path: Path, create: bool) -> int | str:
    """The lock file open for writing (a lock needs it on NFS), never through a link and never blocking (a FIFO
    planted in a handed-over folder hung the run: a review); else why not."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        return f"has a {LOCK_NAME} that cannot be opened ({err.strerror}); remove it, or give this run another folder"
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return f"has a {LOCK_NAME} that is not a plain file; remove it, or give this run another folder"
    return fd


def _lock(fd: int, folder: Path, warn: bool = True) -> str | None:
    """Take the lock on ``fd``: None when taken (or when the file system has none: said once, if ``warn``), else
    the holder."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in _HELD_ELSEWHERE:
            return _in_use(fd)
        if warn and folder not in _said_unlocked:
            _said_unlocked.add(folder)
            print(f"warning: {folder} has no file locks ({err.strerror}): this run does not keep others out of it",
                  file=sys.stderr)
    return None


def holder(folder: str | Path) -> str | None:
    """What keeps a run out of ``folder`` (its lock's holder: "pid 123 on host", or a lock file that is not a
    plain file), or None. Creates nothing."""
    folder = Path(folder).resolve()
    if folder in _held or not (folder / LOCK_NAME).exists() and not (folder / LOCK_NAME).is_symlink():
        return None
    fd = _open(folder / LOCK_NAME, create=False)
    if isinstance(fd, str):
        return fd
    try:
        return _lock(fd, folder, warn=False)  # said by hold(), for the folder a run takes
    finally:
        os.close(fd)  # closing the descriptor also drops the lock taken just now


def hold(folder: str | Path) -> str | None:
    """Take ``folder``'s run lock for this process (creating the folder): None when taken (or already this
    process's), else what keeps it (as :func:`holder`)."""
    folder = Path(folder).resolve()
    if folder in _held:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open(folder / LOCK_NAME, create=True)
    if isinstance(fd, str):
        return fd
    problem = _lock(fd, folder)
    if problem is not None:
        os.close(fd)
        return problem
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    _held[folder] = fd
    return None


def release_all() -> None:
    """Let every run lock of this process go (a sweep's jobs run one after another in one process)."""
    while _held:
        os.close(_held.popitem()[1])


def first_refusal(folders: list[tuple[str, str]], take: bool) -> str | None:
    """Why the first of ``(key, folder)`` another run holds is refused, ``key=folder ...`` without "error: " (each
    caller says it its own way); ``take``: and hold the others."""
    for key, folder in folders:
        problem = hold(folder) if take else holder(folder)
        if problem is not None:
            return f"{key}={folder} {problem}"
    return None
