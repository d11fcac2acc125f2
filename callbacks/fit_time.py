"""Training time across resumes: ``fit_seconds`` of a run stopped and continued counts the time of the
processes before (kept in every checkpoint) as well as this one's (a walkthrough: a run resumed after 2 of 3
epochs reported only its last epoch's 15 s). Time spent after the last checkpoint of a stopped process is
not counted: that work was redone.

Not Lightning's ``Timer``, which keeps a like offset: ``trainer.test(ckpt_path=best)`` reloads the callback states
of ``best.ckpt``, which moves the training time a ``Timer`` reports after the fit by the best epoch's offset, and
its ``load_state_dict`` takes a checkpoint's number unchecked (a crafted one below)."""
from __future__ import annotations

import math
import time
from typing import Any

import pytorch_lightning as pl


class FitTime(pl.Callback):
    """``seconds()``: this run's training time so far, the stopped processes' included; ``total`` that time
    when training ended."""

    def __init__(self) -> None:
        self.before = 0.0       # seconds of the processes before this one (from the resumed checkpoint)
        self.total: float | None = None  # at the end of training; a later test's checkpoint load leaves it
        self._t0: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # taken here: trainer.test(ckpt_path=best) loads best.ckpt's callback state afterwards, and ``before``
        # with it (a review: fit_seconds came out twice the training time)
        self.total = self.seconds()

    def seconds(self) -> float:
        return self.before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": float(self.seconds())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        value = state_dict.get("seconds", 0.0)
        try:  # a crafted 10**400 was an OverflowError on resume (a security review)
            seconds = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else -1.0
        except OverflowError:
            seconds = -1.0
        self.before = seconds if math.isfinite(seconds) and seconds >= 0 else 0.0
