"""``train/loss`` under DDP (two gloo ranks through the real command line): the epoch value is the batch-size
weighted mean over both ranks' batches, and the step value is rank 0's own, not all-reduced. One
``self.log(..., on_step=True, on_epoch=True, sync_dist=True)`` all-reduced every step's value too: a collective
per training step that Lightning warns about (a review's item, left open for several sessions)."""
from __future__ import annotations

import csv
import json
import os

import pytest
import pytorch_lightning as pl
import torch.distributed as dist

from tests.cli import run_subprocess

DDP = ["+exp=lits_dnet", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32",
       "trainer.sync_batchnorm=false", "trainer.max_epochs=1", "model.width=4", "data.image_size=32",
       "data.synthetic.n_cases=6", "data.synthetic.shape=[32,32,8]", "logger=csv", "~callbacks.rich_progress_bar",
       "trainer.log_every_n_steps=1", "test=false"]


class RecordLosses(pl.Callback):
    """Writes each rank's training losses and batch sizes to ``<out>.<rank>.json`` when the fit ends."""

    def __init__(self, out: str) -> None:
        self.out, self.seen = out, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append([float(outputs["loss"]), len(batch["mask"])])

    def on_train_end(self, trainer, pl_module) -> None:
        with open(f"{self.out}.{trainer.global_rank}.json", "w") as fh:
            json.dump(self.seen, fh)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_epoch_loss_is_every_ranks_and_step_loss_is_not_all_reduced(tmp_path):
    run, out = tmp_path / "run", tmp_path / "losses"
    record = f"+callbacks.record={{_target_: tests.test_ddp_train_loss.RecordLosses, out: {out}}}"
    done = run_subprocess("experiments.run", [*DDP, record, f"paths.data_dir={tmp_path / 'data'}",
                                              f"hydra.run.dir={run}"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"losses.{r}.json").read_text()) for r in (0, 1)]
    assert all(ranks) and ranks[0] != ranks[1]  # each rank trained on its own shard
    both = [x for r in ranks for x in r]
    expected = sum(loss * n for loss, n in both) / sum(n for _, n in both)
    with open(next(run.rglob("metrics.csv"))) as fh:
        rows = list(csv.DictReader(fh))
    epoch = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    steps = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert epoch == pytest.approx([expected], rel=1e-5)
    assert steps == pytest.approx([loss for loss, _ in ranks[0]], rel=1e-5)  # rank 0's own values
    assert os.path.isfile(run / "train_ddp_process_1.log")  # rank 1 ran as its own process
