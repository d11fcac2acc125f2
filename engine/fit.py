"""The one centralised run: build datamodule + module + Trainer from a composed config, fit, test, and
write the run dir's ``metrics.json`` and console report. ``experiments.run`` (centralised runs) and
:mod:`engine.distill` (teacher and student stages) call :func:`train_and_test`.

:func:`fit_and_evaluate` is the one fit step under every run: :func:`train_and_test` (centralised runs and
distillation stages) and the federated client runner (:mod:`federation.runner`: every client, and the
evaluation matrix's FL_local / standalone / centralised rows) call it; :func:`evaluate` is one
validate/test pass returning ``{metric: value}``.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from types import SimpleNamespace
from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import WandbLogger

from callbacks.fit_time import FitTime
from engine import artifacts, stop
from engine.builders import (
    build_callbacks,
    build_datamodule,
    build_module,
    build_trainer,
    check_datamodule,
    check_monitors,
)
from engine.checkpoint_checks import (as_loaded, check_trainer_state, checked_ckpt, optimised_count,
                                     refuse_untrained_test, restore_data_state, test_only_cfg)
from engine.loggers import build_loggers, forget_from
from engine.errors import one_line
from engine.init_weights import init_from_config, init_metrics
from engine.tracking import log_run_facts
from lightning_modules.checkpoints import load_strict, state_mismatch
from lightning_modules.errors import CheckpointError
from engine.wandb_tracking import debug_mode, write_summary

log = logging.getLogger("engine.fit")


def output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def evaluate(trainer: pl.Trainer, module: pl.LightningModule, loader: Any, stage: str = "val") -> dict[str, float]:
    """``{metric: value}`` of one validate (``stage="val"``) or test pass over ``loader``."""
    fn = trainer.validate if stage == "val" else trainer.test
    out = fn(module, dataloaders=loader, verbose=False)
    return {k: float(v) for d in out for k, v in d.items()}


def fit_and_evaluate(trainer: pl.Trainer, module: pl.LightningModule, datamodule: pl.LightningDataModule,
                     ckpt_path: str | None = None, fit: bool = True, evaluate_on: str | None = None,
                     evaluator: pl.Trainer | None = None) -> tuple[dict[str, float], float]:
    """Fit ``module`` on ``datamodule`` with ``trainer`` (from ``ckpt_path`` when given; skipped when
    ``fit`` is false), then, with ``evaluate_on="val"|"test"``, one pass of the fitted weights over that
    split with ``evaluator`` (default ``trainer``). Returns ``(metrics, fit_seconds)``; metrics is empty
    without ``evaluate_on`` or when the split is empty."""
    t0 = time.perf_counter()
    if fit:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    fit_seconds = time.perf_counter() - t0
    metrics: dict[str, float] = {}
    dataset = getattr(datamodule, f"{evaluate_on}_dataset", None) if evaluate_on else None
    if dataset is not None and len(dataset) > 0:
        loader = getattr(datamodule, f"{evaluate_on}_dataloader")()
        metrics = evaluate(evaluator or trainer, module, loader, evaluate_on)
    return metrics, fit_seconds


def is_debug(cfg: DictConfig) -> bool:
    """A ``fast_dev_run`` (debug) run: no checkpoints, its metrics are not results."""
    return bool((cfg.get("trainer") or {}).get("fast_dev_run"))


def earlier_perf(out: Path) -> dict[str, Any]:
    """The ``perf/*`` figures (throughput, memory) an earlier process of this run wrote to its ``metrics.json``
    (read as JSON data, numbers only): a process that only tests measures none. A process stopped during its test
    wrote no ``metrics.json``: its ``perf/*`` are lost (its ``fit_seconds`` is in the checkpoint)."""
    path = out / "metrics.json"
    try:
        saved = json.loads(path.read_text()) if path.is_file() and path.stat().st_size < 2**20 else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict):
        return {}
    return {k: v for k, v in saved.items() if isinstance(k, str) and k.startswith("perf/")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


class _ResumedFrom:
    """What a training run continued from ``last.ckpt`` (or a given ``ckpt_path``) must match before Lightning
    restores it: the module's tensor shapes and the optimiser's parameter count; read from the checkpoint first,
    checked once the module is built."""

    def __init__(self, path: str, step: int, shapes: dict[str, Any], optimised: int | None) -> None:
        self.path, self.step, self.shapes, self.optimised = path, step, shapes, optimised

    @classmethod
    def read(cls, given: dict[str, Any], path: str) -> "_ResumedFrom":
        check_trainer_state(given, path)
        shapes = {k: SimpleNamespace(shape=tuple(v.shape)) for k, v in (given.get("state_dict") or {}).items()
                  if hasattr(v, "shape")}
        return cls(path, int(given.get("global_step", 0)), shapes, optimised_count(given))

    def check(self, module: pl.LightningModule) -> None:
        """One line (:class:`CheckpointError`) where ``module`` cannot continue this checkpoint."""
        why = state_mismatch(module.state_dict(), as_loaded(module, self.shapes)) if self.shapes else ""
        if why:  # a review: Lightning's strict load was a 55-line traceback (exit 1, no failed.json)
            raise CheckpointError(f"ckpt_path {self.path} holds another model than module {type(module).__name__} "
                                  f"builds: {why}")
        counts = callable(getattr(module, "trainable_parameters", None))
        trainable = len(module.trainable_parameters()) if counts else None
        if self.shapes and self.optimised is not None and trainable is not None and self.optimised != trainable:
            # a review: a checkpoint from before the side heads of a net without deep supervision were frozen was
            # torch's "parameter group that doesn't match the size" traceback when Lightning restored its optimiser
            raise CheckpointError(f"ckpt_path {self.path}: its optimiser state holds {self.optimised} parameters, "
                                  f"this module trains {trainable}; it cannot continue that optimiser: train a new run")


def train_and_test(cfg: DictConfig, module: pl.LightningModule | None = None,
                   extra_metrics: dict[str, Any] | None = None,
                   on_tested: Callable[[pl.LightningModule], Any] | None = None) -> dict[str, Any]:
    """Centralised run: fit, test with the best checkpoint, write ``metrics.json``; returns the metrics.

    ``module``: an already built LightningModule (distillation builds its own; default ``cfg.module``);
    it ends holding the tested (best) weights. ``extra_metrics`` are added to ``metrics.json``.
    ``on_tested(module)`` writes what the run adds from the tested weights (distillation's ``student.pt``)
    before the console lists the run folder's artefacts (a walkthrough: the list left ``student.pt`` out).
    """
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    out = output_dir(cfg)
    train = bool(cfg.get("train", True))
    ckpt_path = cfg.get("ckpt_path")
    if cfg.get("resume"):
        last = out / "checkpoints" / "last.ckpt"
        ckpt_path = str(last) if last.exists() else ckpt_path
        log.info("resume: %s", ckpt_path or "no checkpoint yet, starting fresh")
    if not train and not ckpt_path:  # a distillation run passes its module in: the guard holds for it too
        refuse_untrained_test()
    given = checked_ckpt(ckpt_path, lazy=train)  # training: Lightning reads the weights itself
    if given is not None and not train and module is None:
        cfg = test_only_cfg(cfg, given, str(ckpt_path))
        artifacts.atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))  # the net tested
    resumed = _ResumedFrom.read(given, str(ckpt_path)) if given is not None and train else None
    given = None if resumed is not None else given  # no mapped view of a file Lightning rewrites
    resumed_step = resumed.step if resumed is not None else None
    datamodule = build_datamodule(cfg.data)
    if given is not None and not train:  # test-only: the checkpoint's data state (CT statistics) as training and
        restore_data_state(datamodule, given)  # predict have it (a review: recomputed from the tested site's cases)
    datamodule.prepare_data()
    datamodule.setup("fit")
    check_datamodule(datamodule)
    if train:
        warn_no_validation(datamodule, cfg)
    module = build_module(cfg) if module is None else module
    if train:
        check_monitors(cfg, module)
    if resumed is not None:
        resumed.check(module)
    init_counts = None
    if train and ckpt_path is None:  # a new run, or resumed before its first checkpoint: from init_weights= if set
        init_counts = init_from_config(cfg, module.net)
    elif train and cfg.get("init_weights"):  # resumed: the counts of how it started, for metrics.json (the weights
        init_counts = init_from_config(cfg, copy.deepcopy(module.net), quiet=True)  # trained are last.ckpt's)
    callbacks = build_callbacks(cfg)
    loggers = build_loggers(cfg, wandb=not OmegaConf.select(cfg, "trainer.fast_dev_run", default=False))
    if not loggers:  # `~logger`: nothing records the learning rate, and Lightning refuses the monitor
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers)
    if resumed_step is not None and trainer.is_global_zero:  # resumed: what was logged after the checkpoint
        forget_from(trainer.loggers, resumed_step)  # is logged again; only rank 0 writes the CSV log under DDP
    elif cfg.get("resume") and ckpt_path is None and trainer.is_global_zero:  # stopped before its first checkpoint:
        forget_from(trainer.loggers, 0)  # it starts afresh, so the stopped attempt's rows go (a review: twice)
    try:
        log_run_facts(trainer, module, cfg)
        if given is not None and not train:  # test-only: the checkpoint's weights, loaded strictly
            load_strict(module, as_loaded(module, given["state_dict"]),
                        f"ckpt_path {ckpt_path} holds another model than module {type(module).__name__} builds",
                        source=f"ckpt_path {ckpt_path}")

        _, fit_seconds = fit_and_evaluate(trainer, module, datamodule, ckpt_path=ckpt_path, fit=train)
        timer = next((c for c in trainer.callbacks if isinstance(c, FitTime)), None)
        # a resumed run whose training had ended (stopped in its test): nothing trained here, so its training time
        # is the checkpoint's, read before the test loads best.ckpt's (a review: fit_seconds 0.05, perf/* gone)
        finished_before = (timer.before if timer is not None and train and resumed_step is not None
                           and timer.total is None and timer.before > 0 else None)
        ckpt_cb = best_checkpoint_callback(trainer)
        metrics: dict[str, Any] = {}
        if cfg.get("test", True):
            best = ckpt_cb.best_model_path if ckpt_cb is not None and train else ""
            checked_ckpt(best, "best checkpoint", lazy=True)
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            metrics["test_checkpoint"] = best or (str(ckpt_path) if given is not None and not train else "last weights")
        if hasattr(module, "summary_metrics"):
            metrics.update(module.summary_metrics())
        for cb in callbacks:  # e.g. callbacks.throughput: parameters, FLOPs, images/s, peak memory
            metrics.update(getattr(cb, "summary", {}))
        # across resumes: the stopped processes' training time (kept in the checkpoint) and this one's
        metrics["fit_seconds"] = timer.total if timer is not None and train and timer.total is not None else fit_seconds
        if finished_before is not None:
            metrics["fit_seconds"] = finished_before
            metrics.update({k: v for k, v in earlier_perf(out).items() if k not in metrics})
        metrics["num_parameters"] = sum(p.numel() for p in module.net.parameters())
        metrics.update(init_metrics(init_counts))  # init_weights/loaded, kept, unused
        metrics.update(extra_metrics or {})
        monitor = getattr(ckpt_cb, "monitor", None)
        best_score = getattr(ckpt_cb, "best_model_score", None)
        if train and monitor and best_score is not None:  # what a sweeper optimises: the best validation score
            metrics.setdefault(f"{monitor}_best", float(best_score))  # BestMetric's where it ran (|RVD| aware)
        if debug_mode(cfg):  # any debug= mode, fast_dev_run included: experiments.report leaves it out of its
            metrics["debug"] = True  # tables (a review: a debug=limit job was pooled as a seed of the method)
        if trainer.is_global_zero:
            if getattr(module, "test_per_case", None):  # each test volume's scores, beside the summary
                artifacts.write_case_csv(out / "test_per_case.csv", module.test_per_case)
            artifacts.write_json(out / "metrics.json", metrics)
            if on_tested is not None:
                on_tested(module)
            _report(cfg, module, metrics, trainer)
    except BaseException as exc:  # a review: a failed sweep job left its W&B run open and the next job logged
        finish_wandb(trainer.loggers, exit_code=1, error=stop_reason(exc))  # into it (Lightning reuses an
        raise  # open wandb.run)
    finish_wandb(trainer.loggers)  # its summary and config are written to disk
    return metrics


def warn_no_validation(datamodule: pl.LightningDataModule, cfg: DictConfig) -> None:
    """A training split with no validation cases is one warning of what follows (a walkthrough: with
    ``data.val_fraction=0`` only Lightning's "could not find the monitored key" said so, and the test silently took
    the last epoch's weights)."""
    val = getattr(datamodule, "val_dataset", False)
    if val is False or (val is not None and len(val) > 0):
        return
    monitor = OmegaConf.select(cfg, "module.monitor", default=None)
    log.warning("no validation cases (data.val_fraction=%s): %s is never logged, no best.ckpt is kept, and the "
                "test takes the last epoch's weights", OmegaConf.select(cfg, "data.val_fraction", default=None),
                monitor or "the monitored metric")


def stop_reason(exc: BaseException) -> str:
    """What a W&B run's ``error`` says of ``exc``: a stop (Ctrl-C, SIGTERM; Lightning turns Ctrl-C into
    ``SystemExit(1)``, and an error raised while a stop is acted on is that stop) as a stop (a walkthrough read
    ``SystemExit: 1``), anything else as one line. How to continue is the console's line: a sub-run (a teacher, a
    site arm) is continued through its parent run, and a run with nothing saved yet is run again (a review)."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    if stop.requested("sigint") or stop.requested() or isinstance(exc, (KeyboardInterrupt, SIGTERMException)):
        signame = "SIGINT" if stop.requested("sigint") or isinstance(exc, KeyboardInterrupt) else "SIGTERM"
        return f"interrupted by {signame}; the console's last line and run.log say how to continue it"
    return one_line(exc)


def finish_wandb(loggers: list, exit_code: int = 0, error: str | None = None) -> None:
    """Close the W&B runs among ``loggers`` (``exit_code`` 1: a failed run, marked so, with ``error`` in its summary
    as ``error``: a W&B review found a failed run's reason in failed.json only). A run that will not close is a
    warning: after a failure its error would replace the run's own (a review)."""
    for lg in loggers:
        if isinstance(lg, WandbLogger) and getattr(lg, "_experiment", None) is not None:
            try:
                if error:
                    lg.experiment.summary["error"] = error[:1000]
                lg.experiment.finish(exit_code=exit_code)
            except Exception as exc:  # noqa: BLE001 - closing the log must not hide the run's outcome
                log.warning("closing the W&B run failed: %s", one_line(exc))


def _report(cfg: DictConfig, module: Any, metrics: dict, trainer: pl.Trainer) -> None:
    write_summary(trainer.loggers, metrics)  # W&B summary: final metrics, val/* kept as their best
    if cfg.get("print_per_case") and getattr(module, "test_per_case", None):
        artifacts.print_case_table(module.test_per_case, module.test_summary, "test: per case (volume)")
    else:
        artifacts.print_metrics({k: v for k, v in metrics.items() if k.startswith("test/")}, "test")
    protocol_a = getattr(module, "eval_slices", None) == "foreground"
    if protocol_a and "test_checkpoint" in metrics and "test/dice" not in metrics:
        log.warning("no test slice held foreground, and module.eval_slices=foreground (paper 001's protocol a) scores "
                    "only those: no test Dice (a walkthrough saw none after a fast_dev_run's one batch)")
    artifacts.console.print(artifacts.artefacts_line(output_dir(cfg)))


def best_checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The ``ModelCheckpoint`` that keeps the best score (a ``monitor`` set), not ``last_checkpoint``'s
    every-epoch one; ``trainer.checkpoint_callback`` is merely the first in the callbacks' order."""
    monitored = [cb for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
    return monitored[0] if monitored else trainer.checkpoint_callback
