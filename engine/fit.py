"""The one centralised run: build datamodule + module + Trainer from a composed config, fit, test, and
write the run dir's ``metrics.json`` and console report. ``experiments.run`` (centralised runs) and
:mod:`engine.distill` (teacher and student stages) call :func:`train_and_test`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from engine import artifacts
from engine.builders import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
    check_datamodule,
)
from engine.tracking import log_run_facts
from engine.wandb_tracking import write_summary

log = logging.getLogger("engine.fit")


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def train_and_test(cfg: DictConfig, module: pl.LightningModule | None = None,
                   extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Centralised run: fit, test with the best checkpoint, write ``metrics.json``; returns the metrics.

    ``module``: an already built LightningModule (distillation builds its own; default ``cfg.module``);
    it ends holding the tested (best) weights. ``extra_metrics`` are added to ``metrics.json``.
    """
    pl.seed_everything(cfg.seed, workers=True)
    out = output_dir(cfg)
    datamodule = build_datamodule(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    check_datamodule(datamodule)
    module = build_module(cfg) if module is None else module
    callbacks, loggers = build_callbacks(cfg), build_loggers(cfg)
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers)
    log_run_facts(trainer, module, cfg)

    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("resume"):
        last = out / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if last.exists() else ckpt_path
        log.info("resume: %s", ckpt_path or "no checkpoint yet, starting fresh")
    t0 = time.perf_counter()
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - t0
    metrics: dict[str, Any] = {}
    if cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        test_ckpt = best or (ckpt_path if not cfg.get("train", True) else None)
        trainer.test(module, datamodule=datamodule, ckpt_path=test_ckpt or None, weights_only=False)
        metrics["test_checkpoint"] = test_ckpt or "last weights"
    if hasattr(module, "summary_metrics"):
        metrics.update(module.summary_metrics())
    for cb in callbacks:  # e.g. callbacks.throughput: parameters, FLOPs, images/s, peak memory
        metrics.update(getattr(cb, "summary", {}))
    metrics["fit_seconds"] = fit_seconds
    metrics["num_parameters"] = sum(p.numel() for p in module.net.parameters())
    metrics.update(extra_metrics or {})
    if trainer.is_global_zero:
        artifacts.write_json(out / "metrics.json", metrics)
        _report(cfg, module, metrics, trainer)
    for lg in trainer.loggers:  # close the W&B run so its summary and config are written to disk
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish()
    return metrics


def _report(cfg: DictConfig, module: Any, metrics: dict, trainer: pl.Trainer) -> None:
    write_summary(trainer.loggers, metrics)  # W&B summary: final metrics, val/* kept as their best
    if cfg.get("print_per_case") and getattr(module, "test_per_case", None):
        artifacts.print_case_table(module.test_per_case, module.test_summary, "test: per case (volume)")
    else:
        artifacts.print_metrics({k: v for k, v in metrics.items() if k.startswith("test/")}, "test")
    artifacts.console.print(f"[bold]artefacts:[/bold] {output_dir(cfg)}  (metrics.json, checkpoints/, csv/, wandb/, *.png)")
