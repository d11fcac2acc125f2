"""The weights of the best validation epoch, kept in memory and restored when fit ends.

Paper 003 §4: "In the client training, we always keep the model with the highest local validation metrics".
A federation keeps each client's best round for FL_local (:func:`federation.runner._save_if_best`); the
evaluation matrix's standalone and centralised rows train with this callback so they are chosen the same way,
by epoch (a review: they were scored at their last epoch, which tilted Table 1's FL_local-vs-baseline gap).
In memory, not a checkpoint file: these rows' models live only as long as the matrix needs them.
"""
from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from callbacks.best_metric import better

__all__ = ["BestWeights"]


class BestWeights(pl.Callback):
    """Keep the module's ``state_dict`` at the epoch whose ``monitor`` was best (its way: :func:`better`; ties keep
    the earlier epoch; NaN never counts) and load it back at ``on_fit_end``; ``best_epoch`` says which (None: none
    was finite, the last weights stay). Entries under the module's ``frozen_prefixes`` (a distillation module's
    teacher, which never changes during fit) are not copied."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.best_value: float | None = None
        self.best_epoch: int | None = None
        self._state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if better(self.monitor, float(value), self.best_value):
            self.best_value, self.best_epoch = float(value), int(trainer.current_epoch)
            frozen = tuple(getattr(pl_module, "frozen_prefixes", ()))
            self._state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()
                           if not (frozen and k.startswith(frozen))}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state is not None:
            state = pl_module.state_dict()  # the frozen entries as they are, the rest from the best epoch
            state.update(self._state)
            pl_module.load_state_dict(state)
            self._state = None
