"""Atomic file output: write to a temp file beside the target, rename over it on success, else delete it; and a
file's digest (:func:`file_sha256`), which the checks of what was written or loaded compare."""
from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def temp_beside(path: Path, suffix: str = ".tmp") -> tuple[int, str]:
    """A new, uniquely named file beside ``path`` (parents created), opened for writing: ``(fd, name)``.
    Unlike ``tempfile.mkstemp`` (always 0600) it is created 0666 minus the user's umask, so a renamed
    result is as readable as any file the user writes (0644 typically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue


def durable_replace(tmp: str | Path, path: str | Path) -> None:
    """``os.replace(tmp, path)`` after ``tmp``'s data reach the disk, and the rename after it (the folder synced):
    a rename alone survives a killed process, not a power loss or a kernel crash, after which ext4 or XFS may
    hold a zero-length ``last.ckpt`` or ``server.pt`` (a trust review)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:  # a file system without fsync (some FUSE / network mounts): renamed all the same
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise  # EIO and the like: the data did not reach the disk
    finally:
        os.close(fd)
    os.replace(tmp, path)
    try:
        folder = os.open(Path(path).parent, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened for reading: the data are on disk, the rename may wait
        return
    try:
        os.fsync(folder)
    except OSError:  # some file systems refuse a folder's fsync
        pass
    finally:
        os.close(folder)


@contextmanager
def atomic_output(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; on normal exit it replaces ``path`` (readers never see half
    a file), on error it is removed. ``suffix`` keeps extensions that writers inspect (``.nii.gz``)."""
    path = Path(path)
    fd, tmp = temp_beside(path, suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        durable_replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


#: what a scheduler or a user sends to stop or requeue a job: handled after a checkpoint write, not inside it
DEFERRED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2") if hasattr(signal, n))


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block with :data:`DEFERRED_SIGNALS` held back, then handle them with the handlers they had (main
    thread only; elsewhere Python runs no handler). CI: a submitit requeue's SIGUSR2 handler ran inside
    ``torch.save``'s Python-level writes and the save failed ("unexpected pos"), failing the requeued job."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {}
    for sig in DEFERRED_SIGNALS:
        handler = signal.getsignal(sig)
        if handler is None:  # installed outside Python: cannot be put back, left alone
            continue
        old[sig] = handler
        signal.signal(sig, lambda n, _frame: got.append(n))
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(got):
            signal.raise_signal(sig)


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_output`, streamed through a Python file object:
    a write the machine refuses (full disk, file-size limit) is then the ``OSError`` with its errno behind
    torch's ``RuntimeError: ... unexpected pos`` (its ``__context__``, which the command line shows as one
    line); torch's own path-based writer hides the errno. Stop and requeue signals wait until it is written."""
    with signals_deferred(), atomic_output(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file's bytes (read in 1 MiB chunks: a large teacher's checkpoint is not held twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
