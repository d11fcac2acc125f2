"""Lightning checkpoints written atomically beside their target: a temp file in the same folder, then
``os.replace``, so ``last.ckpt`` is always the old file or the new one, never a part of either.

Why not Lightning's own ``TorchCheckpointIO``: it stages a local file with fsspec in ``$TMPDIR`` and commits
with ``shutil.move``; when ``$TMPDIR`` is another file system (a tmpfs ``/tmp``, common on clusters) the
move is copy-then-delete, which truncates the target first. A stop or a full disk during that copy left a
0-byte or cut ``last.ckpt`` that no resume could read, and an orphaned checkpoint in ``$TMPDIR`` (found by a
fault-injection audit). URLs (``s3://``, ...) keep Lightning's path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from lightning_modules.atomic import save_torch


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves go through :func:`lightning_modules.atomic.atomic_output`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_torch(checkpoint, Path(path))
