"""Facts every run logs for comparison: resolved config, code version, environment, model size."""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf


def git_sha(cwd: str | Path | None = None) -> str:
    """The repository's HEAD SHA (``+dirty`` when the tree has changes), or ``unknown`` outside git."""
    cwd = cwd or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
    }


def log_run_facts(trainer: pl.Trainer, module: pl.LightningModule, cfg: DictConfig) -> dict[str, Any]:
    """Log the resolved config, git SHA, environment and parameter count to every attached logger."""
    facts = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "git_sha": git_sha(),
        "env": environment(),
        "num_parameters": sum(p.numel() for p in module.parameters()),
    }
    for lg in trainer.loggers:
        lg.log_hyperparams(facts)
    return facts
