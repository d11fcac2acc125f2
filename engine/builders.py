"""Build the three pieces of every run — datamodule, LightningModule, Trainer — from a composed config.

Centralised, distillation and federated runs all call these, so a federated client is built exactly as a
centralised run is (DESIGN.md: one data path, one training path).
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from engine.artifacts import atomic_write_text
from engine.tracking import wandb_mode
from lightning_modules.errors import ConfigError

#: Keys a data config carries for interpolation by the model/module configs (``${data.num_classes}``),
#: which the datamodule constructor does not take; they are checked against the built datamodule.
DATA_META_KEYS = ("in_channels", "num_classes", "class_names")


def build_datamodule(data_cfg: DictConfig, **overrides: Any) -> pl.LightningDataModule:
    """Instantiate ``cfg.data`` without its meta keys; ``overrides`` replace constructor arguments."""
    plain = OmegaConf.to_container(data_cfg, resolve=True)
    meta = {k: plain.pop(k) for k in DATA_META_KEYS if k in plain}
    plain.update(overrides)
    dm = instantiate(plain, _convert_="all")
    dm._declared_meta = meta  # checked after setup(), when the datamodule knows its classes
    return dm


def check_datamodule(dm: pl.LightningDataModule) -> None:
    """After ``setup()``: the declared ``data.num_classes``/``in_channels`` must match the data."""
    for key, declared in getattr(dm, "_declared_meta", {}).items():
        actual = getattr(dm, key, None)
        if key == "class_names" or actual is None or declared is None:
            continue
        if int(actual) != int(declared):
            raise ConfigError(f"data.{key}={declared} but the data has {key}={actual}; set data.{key}={actual}")


def build_module(cfg: DictConfig) -> pl.LightningModule:
    """Instantiate ``cfg.module`` (``_recursive_: false``: the module builds its net/loss from config)."""
    return instantiate(cfg.module)


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    return [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]


def wandb_run_id(output_dir: str | Path) -> str:
    """The W&B run id of a run dir, created once and kept in ``wandb_id.txt`` so ``resume=true`` continues
    the same W&B run."""
    path = Path(output_dir) / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    atomic_write_text(path, run_id + "\n")
    return run_id


def build_loggers(cfg: DictConfig, job_type: str | None = None) -> list[Any]:
    """Loggers of ``cfg.logger``; a W&B logger gets the run dir's stable id (and ``resume='allow'``)."""
    loggers = []
    for lg in (cfg.get("logger") or {}).values():
        if lg is None or "_target_" not in lg:
            continue
        extra: dict[str, Any] = {}
        if lg._target_.endswith("WandbLogger"):
            from engine.wandb_tracking import with_identity

            lg = with_identity(cfg, lg)  # name, tags and config.run: exp, model, strategy, partition, seed...
            extra = {"id": wandb_run_id(cfg.paths.output_dir), "resume": "allow", "mode": wandb_mode(lg.get("mode"))}
            if job_type:
                extra["job_type"] = job_type
        loggers.append(instantiate(lg, **extra))
    return loggers


def build_trainer(cfg: DictConfig, callbacks: list | None = None, logger: Any = None, **overrides: Any) -> pl.Trainer:
    return instantiate(cfg.trainer, callbacks=callbacks or [], logger=logger if logger is not None else False, **overrides)
