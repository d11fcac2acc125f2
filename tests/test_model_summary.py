"""The model summary counts FLOPs on the first training image (Lightning's own printed ``Total FLOPs: 0``)."""
from __future__ import annotations

import pytorch_lightning as pl
import pytest
import torch
from pytorch_lightning.callbacks import ModelSummary
from torch.utils.data import DataLoader, TensorDataset

from callbacks.model_summary import FirstBatchModelSummary
from engine.builders import build_trainer
from tests.hydra_helpers import compose_run


class _Conv(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return self(batch[0]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_summary_counts_the_forward_flops_of_one_training_image(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(FirstBatchModelSummary, "summarize",
                        staticmethod(lambda data, *args, total_flops, **kw: seen.update(data=dict(data), flops=total_flops)))
    module = _Conv()
    loader = DataLoader(TensorDataset(torch.randn(4, 1, 8, 8)), batch_size=2)
    trainer = pl.Trainer(max_steps=2, callbacks=[FirstBatchModelSummary()], enable_model_summary=False, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(module, loader)
    # a 3x3 conv, 1 -> 4 channels, on one 8 x 8 image: 2 FLOPs per multiply-add
    assert seen["flops"] == 2 * 4 * 8 * 8 * 9
    assert seen["data"]["In sizes"] == ["[1, 1, 8, 8]"] and seen["data"]["Out sizes"] == ["[1, 4, 8, 8]"]
    assert module.example_input_array is None and module.training  # left as it was


@pytest.mark.parametrize("override, summaries", [([], [FirstBatchModelSummary]),
                                                 (["++trainer.enable_model_summary=false"], [])])
def test_build_trainer_puts_it_in_place_of_lightnings_summary(tmp_path, override, summaries):
    cfg = compose_run(["+exp=lits_dnet", "logger=csv", *override], tmp_path)
    trainer = build_trainer(cfg)
    assert [type(c) for c in trainer.callbacks if isinstance(c, ModelSummary)] == summaries
