"""Entry point: ``python -m experiments.run +exp=lits_dnet [overrides]`` (Hydra; ``-m`` for sweeps).

Composes the config and dispatches to a centralised run, a distillation run or a federation. It holds no
training logic: the pieces come from :mod:`experiments.builders`, and everything a run produces lands
in its own output dir (resolved config, ``metrics.json``, checkpoints, PNGs, CSV logs, a W&B run).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")  # nothing needs a network unless the user asks for it
os.environ.setdefault("WANDB_SILENT", "true")

import hydra  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

import datamodules.medmnist  # noqa: E402,F401  (registers the ${medmnist:...} resolver used by data configs)
from experiments import artifacts  # noqa: E402
from experiments.builders import (  # noqa: E402
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    build_trainer,
    check_datamodule,
)
from experiments.errors import find_user_error, one_line  # noqa: E402
from experiments.tracking import log_run_facts  # noqa: E402

log = logging.getLogger("experiments.run")


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
    for lg in trainer.loggers:
        experiment = getattr(lg, "experiment", None)
        if hasattr(experiment, "summary"):
            experiment.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    if cfg.get("print_per_case") and getattr(module, "test_per_case", None):
        artifacts.print_case_table(module.test_per_case, module.test_summary, "test: per case (volume)")
    else:
        artifacts.print_metrics({k: v for k, v in metrics.items() if k.startswith("test/")}, "test")
    artifacts.console.print(f"[bold]artefacts:[/bold] {output_dir(cfg)}  (metrics.json, checkpoints/, csv/, wandb/, *.png)")


def dispatch(cfg: DictConfig) -> dict[str, Any]:
    """Pick the run kind from the config: federation, distillation, or centralised training."""
    if cfg.get("federation") is not None:
        from federation.loop import run_federation

        return run_federation(cfg)
    if cfg.get("distill") is not None:
        from experiments.distill import run_distillation

        return run_distillation(cfg)
    return train_and_test(cfg)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    resume = cfg.get("resume")
    if isinstance(resume, str) and resume not in ("true", "false"):
        # resume=<run dir>: continue that run in its own folder (same checkpoints, same W&B run id)
        if not (Path(resume) / "checkpoints").is_dir():
            print(f"error: resume={resume} is not a run dir with checkpoints/", file=sys.stderr)
            sys.exit(2)
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(resume).resolve())
    out = output_dir(cfg)
    artifacts.atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    try:
        metrics = dispatch(cfg)
    except Exception as exc:  # noqa: BLE001 - user errors become one line, the rest propagate
        err = find_user_error(exc)
        if err is None:
            raise
        line = one_line(err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:  # one bad job must not kill the sweep
            artifacts.write_json(out / "failed.json", {"error": line, "overrides": list(HydraConfig.get().overrides.task)})
            print(f"error (job {out.name}): {line}", file=sys.stderr)
            return None
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    value = metrics.get(f"test/{cfg.module.get('monitor', 'val/dice').split('/')[-1]}")
    return float(value) if isinstance(value, (int, float)) else None


if __name__ == "__main__":
    main()
