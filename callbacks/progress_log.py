"""One log line per epoch, where people look when no terminal is attached: Hydra's ``run.log`` and a
non-TTY stdout (SLURM, nohup) get nothing from the rich progress bar, and the CSV is flushed every 100
steps. ``epoch 2/6: train/loss=0.41 val/dice=0.62 val/loss=0.38 (14.2 s)``."""
from __future__ import annotations

import logging
import math
import time

import pytorch_lightning as pl

log = logging.getLogger("progress")

#: metric prefixes shown in the line (epoch-level values only)
SHOWN = ("train/loss", "val/")


def epoch_line(epoch: int, max_epochs: int | None, metrics: dict, seconds: float, prefix: str = "") -> str:
    shown = {k: float(v) for k, v in metrics.items()
             if k.startswith(SHOWN) and not k.endswith(("_step", "_best", "_best_step"))}
    shown = {k: v for k, v in shown.items() if f"{k}_epoch" not in shown}  # Lightning keeps both for on_step+on_epoch
    parts = [f"{k.removesuffix('_epoch')}={v:.4g}" for k, v in sorted(shown.items()) if math.isfinite(v)]
    total = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    return f"{prefix}epoch {epoch + 1}{total}: " + " ".join(parts) + f" ({seconds:.1f} s)"


class EpochLog(pl.Callback):
    """Logs :func:`epoch_line` for every training epoch, after its validation and after the module's own
    ``on_train_epoch_end``: Lightning calls callbacks' epoch-end hooks first, and a module that computes its
    epoch metrics there (``ClassificationModule``) would show the previous epoch's ``train/*`` values. The
    line is written when the next epoch starts, or when training ends. ``prefix`` names a stage (``teacher ``:
    a distillation run's teacher training)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = str(prefix)
        self._t0 = time.perf_counter()
        self._pending: tuple[int, float] | None = None

    def _flush(self, trainer: pl.Trainer) -> None:
        if self._pending is not None and trainer.is_global_zero:
            epoch, seconds = self._pending
            log.info(epoch_line(epoch, trainer.max_epochs, dict(trainer.callback_metrics), seconds, self.prefix))
        self._pending = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._pending = (trainer.current_epoch, time.perf_counter() - self._t0)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._flush(trainer)  # an interrupted run still logs the epoch it finished
