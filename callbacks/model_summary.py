"""Lightning's model summary, printed at the first training batch with that batch's first image as the example input.

Lightning prints its summary at fit start, when it has no input to run: with no ``example_input_array`` its table
read ``Total FLOPs: 0`` and a FLOPs column of zeros for every net. Given one image, Lightning's own summary counts
the forward FLOPs per layer (``torch.utils.flop_counter``) and adds each layer's input and output sizes; this
callback only chooses when it runs and what it runs on. ``engine.builders.build_trainer`` puts it in place of the
default one when ``trainer.enable_model_summary`` is on (the default).
"""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichModelSummary


class FirstBatchModelSummary(RichModelSummary):
    """:class:`~pytorch_lightning.callbacks.RichModelSummary` taken at the first training batch, on its first image."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs) -> None:
        super().__init__(max_depth=max_depth, **summarize_kwargs)
        self._done = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing yet: there is no input to count FLOPs on (Lightning's summary runs here)."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int) -> None:
        if self._done:
            return
        self._done = True
        image = batch["image"] if isinstance(batch, dict) else batch[0]
        before = pl_module.example_input_array
        pl_module.example_input_array = image[:1]
        try:
            super().on_fit_start(trainer, pl_module)  # Lightning's summary, in eval mode and without gradients
        finally:
            pl_module.example_input_array = before
