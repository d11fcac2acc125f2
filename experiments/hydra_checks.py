"""Checks Hydra runs before it creates the run dir: an output folder that cannot be written is one line
naming it and exit code 2 (Hydra itself would fail with a stack trace after creating part of the tree)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig


def unwritable(folder: str | Path) -> Path | None:
    """The first existing ancestor of ``folder`` (itself included) that blocks creating/writing it."""
    path = Path(folder).absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            ok = candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
            return None if ok else candidate
    return None


class WritableOutput(Callback):
    """``hydra.run.dir`` / ``hydra.sweep.dir`` must be creatable and writable before anything is written."""

    def _check(self, folder: Any, key: str) -> None:
        blocker = unwritable(str(folder))
        if blocker is not None:
            print(f"error: {key}={folder} cannot be written ({blocker} is "
                  f"{'not a folder' if blocker.exists() and not blocker.is_dir() else 'not writable'}); "
                  f"set paths.log_dir (or FEDMED_LOG_DIR) to a writable folder", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        resume = config.get("resume")
        if isinstance(resume, str) and resume not in ("true", "false") and not (Path(resume) / "checkpoints").is_dir():
            print(f"error: resume={resume} is not a run dir with checkpoints/", file=sys.stderr)
            sys.exit(2)  # before Hydra creates a run dir for a run that will not happen
        HydraConfig.instance().set_config(config)  # ${hydra:runtime.choices...} in the run dir's name
        self._check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir")
