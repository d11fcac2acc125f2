"""The value ``experiments.run.main`` returns: what Hydra's Optuna sweeper optimises.

``optimized_metric`` (set by every ``hparams_search/`` config, as in lightning-hydra-template) names a key
of the run's metrics; by default the best validation value of the module's monitor (``val/dice_best``):
never a test metric, so a search cannot select on the test set: an ``optimized_metric`` naming one
(``test/dice``) is refused before any trial trains (:func:`test_objective_line`, checked by
``experiments.hydra_checks`` when a run or sweep starts).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from omegaconf import DictConfig

from lightning_modules.errors import ConfigError


def objective_key(cfg: DictConfig) -> str:
    key = cfg.get("optimized_metric")
    if key:
        return str(key)
    module = cfg.get("module")
    monitor = str((module.get("monitor") if module is not None else None) or "val/loss")
    return f"{monitor}_best"


def test_objective_line(cfg: DictConfig) -> str | None:
    """One line when ``optimized_metric`` names a test metric (a ``test`` part in its key: ``test/dice``),
    which a search must never select on; ``None`` otherwise."""
    key = cfg.get("optimized_metric")
    if key and "test" in str(key).split("/"):
        return (f"optimized_metric={key} is a test metric: a search must not select on the test set; "
                f"name a validation metric (val/dice_best)")
    return None


def optimized_value(cfg: DictConfig, metrics: Mapping[str, Any]) -> float | None:
    """``metrics[optimized_metric]`` as a float; a named key the run lacks is a ConfigError (one line)."""
    refused = test_objective_line(cfg)
    if refused:
        raise ConfigError(refused)
    key = objective_key(cfg)
    value = metrics.get(key)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if cfg.get("optimized_metric"):
        have = sorted(k for k in metrics if k.startswith("val/"))[:12]
        raise ConfigError(f"optimized_metric={key} is not a finite metric of this run; validation metrics: {have}")
    return None
