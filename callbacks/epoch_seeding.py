"""Re-seed what the model draws (dropout, a VAE's sampling) at each training epoch from (the fit's seed, epoch,
rank), so a fit resumed at epoch *e* draws as the uninterrupted one did at *e* (the data's draws:
:mod:`datamodules.epoch_seeding`). :func:`engine.builders.build_trainer` gives it to every trainer."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from datamodules.epoch_seeding import MODEL, derive_seed, seed_generators


class EpochSeeding(pl.Callback):
    """At ``on_fit_start`` the fit's seed is read (``torch.initial_seed()``, what ``seed_everything`` set: the
    same for a run and its resume); at every ``on_train_epoch_start`` Python's, NumPy's, torch's CPU and CUDA
    generators are seeded from (that seed, epoch, global rank). Ranks draw differently (Lightning seeds them
    alike)."""

    def __init__(self) -> None:
        self.base = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.base = int(torch.initial_seed())

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed_generators(derive_seed(MODEL, self.base, trainer.current_epoch, trainer.global_rank),
                        cuda=True)
