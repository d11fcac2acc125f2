"""Atomic file output: write to a temp file beside the target, rename over it on success, else delete it."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path in ``path``'s folder; on normal exit it replaces ``path`` (readers never see half
    a file), on error it is removed. ``suffix`` keeps extensions that writers inspect (``.nii.gz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
