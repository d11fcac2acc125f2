"""Best validation values and the step they came from: in ``metrics.json``, the W&B summary and sweeps.

:func:`track_best` keeps ``<key>_best`` and ``<key>_best_step`` for every finite ``val/*`` metric and
writes them into each W&B run's summary, after ``define_metric(key, summary="max,last")`` (``min`` for
losses) so W&B's own summary of the key holds its best too. ``step`` is the epoch of a centralised run (Lightning's ``epoch`` axis) and the
round of a federated one (``federation.records`` calls it), so both sit on one W&B panel.
:class:`BestMetric` is the centralised runs' callback (``callbacks/default.yaml``).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import pytorch_lightning as pl

from callbacks.metric_goal import goal
from lightning_modules.errors import CheckpointError



def better(key: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    if "rvd" in key:
        return abs(new) < abs(old)
    return new < old if goal(key) == "min" else new > old


def wandb_runs(loggers: Iterable[Any]) -> list[Any]:
    """The live W&B run of each W&B logger (not fast_dev_run's DummyLogger, not another rank's dummy)."""
    runs = []
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            run = lg.experiment
            if hasattr(run, "define_metric") and not callable(getattr(run, "summary", None)):
                runs.append(run)
    return runs


def track_best(loggers: Iterable[Any], metrics: Mapping[str, Any], step: int,
               state: dict | None = None) -> dict[str, float]:
    """Update the bests with ``metrics`` (see the module docstring); returns every ``<key>_best`` and
    ``<key>_best_step``. ``state`` holds the bests between calls (default: on the first W&B logger)."""
    loggers = list(loggers)
    if state is None:
        holder = next((lg for lg in loggers if type(lg).__name__ == "WandbLogger"), None)
        state = holder.__dict__.setdefault("_fedmed_best", {}) if holder is not None else {}
    for key, value in metrics.items():
        if not key.startswith("val/") or key.endswith(("_best", "_best_step")):
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value) and better(key, value, state.get(key, (None, 0))[0]):
            state[key] = (value, int(step))
    out: dict[str, float] = {}
    for key, (value, at) in state.items():
        out[f"{key}_best"], out[f"{key}_best_step"] = value, at
    define_goals(loggers, state)
    for run in wandb_runs(loggers):
        run.summary.update(out)
    return out


def define_goals(loggers: Iterable[Any], keys: Iterable[str]) -> None:
    """``define_metric`` on each W&B run for every key not yet defined: W&B's own best-of and last. RVD's best is
    the smallest |RVD|, which W&B cannot say (its "min" kept the most negative, a review), so only our
    ``val/rvd_*_best`` is its best there. Before a key's first log, or its summary stays a plain number."""
    keys = list(keys)
    for run in wandb_runs(loggers):
        defined = run.__dict__.setdefault("_fedmed_defined", set())
        for key in keys:
            if key not in defined:
                run.define_metric(key, summary="last" if "rvd" in key else f"{goal(key)},last")
                defined.add(key)


class BestMetric(pl.Callback):
    """After every validation epoch: the best of each ``val/*`` metric and its epoch (``summary`` is
    merged into ``metrics.json`` by ``engine.fit``; ``optimized_metric: val/dice_best`` is what a sweep reads)."""

    def __init__(self) -> None:
        self.summary: dict[str, float] = {}
        self._state: dict[str, tuple[float, int]] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The module's ``val/*`` keys defined on W&B before the first epoch logs them (a session found a 1-epoch
        run's ``val/*`` summary a plain number: defined after its only log, W&B kept no best-of)."""
        keys = pl_module.val_metric_keys() if callable(getattr(pl_module, "val_metric_keys", None)) else ()
        define_goals(trainer.loggers, keys)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        self.summary = track_best(trainer.loggers, metrics, trainer.current_epoch, self._state)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint, so a resumed run's bests include the epochs before the resume."""
        return {"best": {k: [float(v), int(at)] for k, (v, at) in self._state.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resumed fit starts from the checkpoint's bests; a checkpoint loaded after this fit (the test of
        ``best.ckpt``, saved at an earlier epoch) cannot take back bests of later epochs: each key keeps the
        better value (a review: ``val/loss_best`` in ``metrics.json`` was the best up to the selected epoch)."""
        best = state_dict.get("best") if isinstance(state_dict, dict) else state_dict
        try:
            pairs = [(str(k), float(v), int(at)) for k, (v, at) in (best or {}).items()]
        except (AttributeError, TypeError, ValueError, OverflowError):  # a crafted or foreign checkpoint: one line
            raise CheckpointError(f"the checkpoint's BestMetric state is not {{metric: [value, epoch]}} "
                                  f"({str(best)[:80]})") from None
        for k, v, at in pairs:
            if better(k, v, self._state.get(k, (None, 0))[0]):
                self._state[k] = (v, at)
        self.summary = {**{f"{k}_best": v for k, (v, _) in self._state.items()},
                        **{f"{k}_best_step": at for k, (_, at) in self._state.items()}}
