"""Facts every run logs for comparison: resolved config, code version, environment, model size."""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
import re
import socket
import subprocess
from importlib import metadata
from urllib.parse import urlparse
from pathlib import Path
from typing import Any, get_args

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from engine.artifacts import write_json
from lightning_modules.errors import ConfigError


log = logging.getLogger("engine.tracking")

#: W&B's modes where its settings model cannot be read (wandb 0.31: ``Settings.mode``'s ``Literal``)
WANDB_MODES = ("online", "offline", "shared", "disabled", "dryrun", "run")


@functools.lru_cache(maxsize=1)
def wandb_modes() -> tuple[str, ...]:
    """The modes the installed wandb accepts (its settings validator's ``Literal``), else :data:`WANDB_MODES`."""
    try:
        from wandb.sdk.wandb_settings import Settings

        modes = tuple(str(m) for m in get_args(Settings.model_fields["mode"].annotation))
    except Exception:  # noqa: BLE001 - another wandb layout: the modes of the version this was written for
        modes = ()
    return modes or WANDB_MODES


def check_wandb_mode(requested: Any, key: str = "logger.wandb.mode") -> None:
    """One :class:`ConfigError` line naming ``key`` and the valid modes when ``requested`` is not a W&B mode
    (``null`` passes: wandb then reads ``WANDB_MODE``). ``logger.wandb.mode=onlin`` otherwise ended in a
    30-line pydantic traceback when wandb started its run (no ``failed.json``), and under ``debug=fdr``,
    where Lightning never starts it, was accepted silently."""
    if requested is None or (isinstance(requested, str) and requested in wandb_modes()):
        return
    source = " (from WANDB_MODE)" if os.environ.get("WANDB_MODE") == requested else ""
    raise ConfigError(f"{key}={requested!r}{source} is not a W&B mode; valid modes: {', '.join(wandb_modes())}")


def check_wandb_modes(cfg: DictConfig) -> None:
    """Every W&B logger of ``cfg.logger`` checked before anything is built or trained (a distillation's teacher
    included): its mode (:func:`check_wandb_mode`), its keys (:func:`check_wandb_keys`) and a given ``id`` (a W&B
    run id, and not in a sweep, whose jobs are one W&B run each)."""
    for name, lg in (cfg.get("logger") or {}).items():
        if isinstance(lg, DictConfig) and str(lg.get("_target_", "")).endswith("WandbLogger"):
            check_wandb_mode(OmegaConf.select(lg, "mode", default=None), f"logger.{name}.mode")
            check_wandb_keys(lg, f"logger.{name}")
            given = OmegaConf.select(lg, "id", default=None)
            if given is None:
                continue
            if not WANDB_RUN_ID.fullmatch(str(given)):
                raise ConfigError(f"logger.{name}.id={given!r} is not a W&B run id (letters, digits, '-', '_')")
            if in_sweep():
                raise ConfigError(f"logger.{name}.id={given}: a sweep's jobs are one W&B run each (their ids are in "
                                  f"their wandb_id.txt); leave the id out")


#: a W&B run id as this project writes and accepts it (``wandb_id.txt``, ``logger.<name>.id``)
WANDB_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def in_sweep() -> bool:
    """This process runs a Hydra multirun's job (False outside any Hydra command)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no Hydra command
        return False


def check_wandb_keys(lg: Any, key: str) -> None:
    """Every key of a W&B logger config is an argument of Lightning's ``WandbLogger`` or of ``wandb.init`` (it
    passes the others on): a review's ``++logger.wandb.foo=1`` failed at the first log call, after the trainer
    was built, with a ``TypeError`` naming no key."""
    import difflib
    import inspect

    import wandb
    from pytorch_lightning.loggers import WandbLogger

    known = set(inspect.signature(WandbLogger.__init__).parameters) | set(inspect.signature(wandb.init).parameters)
    unknown = [str(k) for k in lg if not str(k).startswith("_") and str(k) not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ConfigError(f"{key}.{unknown[0]} is no argument of WandbLogger or wandb.init"
                          + (f" (did you mean {key}.{close[0]}?)" if close else ""))


def wandb_mode(requested: str | None) -> str | None:
    """``online`` only when the W&B server answers within ``FEDMED_WANDB_TIMEOUT`` seconds (default 10);
    otherwise one warning and ``offline`` (``wandb sync`` uploads the run later), never a long hang. A value
    that is no W&B mode is a :class:`ConfigError` (:func:`check_wandb_mode`), raised when the logger is built,
    before training, in every debug mode."""
    check_wandb_mode(requested)
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


#: the libraries whose versions change a run's numbers (besides torch and Lightning): kernels, layers, losses
NUMERIC_PACKAGES = ("numpy", "torchmetrics", "segmentation-models-pytorch", "timm", "monai", "scikit-learn",
                    "albumentations", "nibabel")


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, where ``platform.processor()`` is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """What a run's numbers depend on besides the code, config and seed: the same seed gives other figures
    under another library build, CPU or intra-op thread count (a claims test measured all three)."""
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion: YAML loggers wrote it as a python/object tag
        "lightning": pl.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
        "cpu": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "packages": {name: _version(name) for name in NUMERIC_PACKAGES},
    }


def record_environment(out: str | Path) -> dict[str, Any]:
    """``<run dir>/env.json``: the git SHA and :func:`environment` of the process that started the run. A resumed
    run keeps that record and appends its own to ``resumed`` when anything differs, with one warning naming
    what changed (its numbers then mix two environments)."""
    path = Path(out) / "env.json"
    now = {"git_sha": git_sha(), **environment()}
    try:
        first = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # a crafted file nested 200,000 deep too
        first = None
    if not isinstance(first, dict):
        write_json(path, now)
        return now
    changed = {k: (first.get(k), v) for k, v in now.items() if k != "resumed" and first.get(k) != v}
    if changed:
        log.warning("resumed in another environment than the run started in (%s): its numbers mix both",
                    "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in changed.items()))
        first = {**first, "resumed": [*first.get("resumed", []), now]}
        write_json(path, first)
    return first


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
