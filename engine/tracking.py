"""Facts every run logs for comparison: resolved config, code version, environment, model size."""
from __future__ import annotations

import logging
import os
import platform
import socket
import subprocess
from urllib.parse import urlparse
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf


log = logging.getLogger("engine.tracking")


def wandb_mode(requested: str | None) -> str | None:
    """``online`` only when the W&B server answers within ``FEDMED_WANDB_TIMEOUT`` seconds (default 10);
    otherwise one warning and ``offline`` (``wandb sync`` uploads the run later), never a long hang."""
    if requested != "online":
        return requested
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    parsed = urlparse(url)
    timeout = float(os.environ.get("FEDMED_WANDB_TIMEOUT", "10"))
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
        return "online"
    except (OSError, ValueError) as err:
        log.warning("W&B server %s unreachable within %.0f s (%s): logging offline; upload later with "
                    "`wandb sync <run dir>/wandb/offline-run-*`", url, timeout, type(err).__name__)
        return "offline"


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
