"""``checkpoints/last.ckpt`` holds the latest epoch even when the monitored score stops improving (what
``resume=true`` continues from), and the best checkpoint stays the monitored one: the default callbacks as
composed from the config tree, on a tiny module whose validation score falls every epoch."""
from __future__ import annotations

import tempfile

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from engine.builders import build_trainer
from engine.checkpoint_io import AtomicCheckpointIO
from engine.fit import best_checkpoint_callback
from lightning_modules.checkpoints import load_checkpoint
from tests.hydra_helpers import compose_run


class FallingScore(pl.LightningModule):
    """One linear layer; logs ``monitor`` = -epoch, so only epoch 0 is ever the best."""

    def __init__(self, monitor: str) -> None:
        super().__init__()
        self.monitor, self.layer = monitor, torch.nn.Linear(2, 1)

    def training_step(self, batch, _):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, _):
        self.log(self.monitor, -float(self.current_epoch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader():
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)


def test_last_ckpt_is_the_latest_epoch_when_the_score_stops_improving(tmp_path):
    cfg = compose_run(["+exp=lits_dnet"], tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    callbacks = [instantiate(cfg.callbacks.last_checkpoint), instantiate(cfg.callbacks.model_checkpoint)]
    trainer = pl.Trainer(max_epochs=3, callbacks=callbacks, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(FallingScore(cfg.module.monitor), _loader(), _loader())
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert load_checkpoint(ckpt_dir / "last.ckpt")["epoch"] == 2  # Lightning 2.6's own save_last: epoch 0
    assert load_checkpoint(ckpt_dir / "best.ckpt")["epoch"] == 0
    best = best_checkpoint_callback(trainer)  # the monitored one, although last_checkpoint comes first
    assert best is callbacks[1] and best.best_model_path == str(ckpt_dir / "best.ckpt")


def test_checkpoints_are_replaced_atomically_beside_their_target(tmp_path, monkeypatch):
    """The built Trainer saves through :class:`AtomicCheckpointIO`: nothing is staged in ``$TMPDIR``
    (Lightning's fsspec path staged there, and across file systems its commit truncated ``last.ckpt``
    first), and a save that fails midway leaves the previous checkpoint whole and no temp file behind."""
    cfg = compose_run(["+exp=lits_dnet", "trainer.max_epochs=2", "++trainer.enable_progress_bar=false",
                       "++trainer.enable_model_summary=false"], tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    staging = tmp_path / "tmpdir"
    staging.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(staging))
    trainer = build_trainer(cfg, callbacks=[instantiate(cfg.callbacks.last_checkpoint)])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    trainer.fit(FallingScore(cfg.module.monitor), _loader(), _loader())
    assert list(staging.iterdir()) == []
    assert load_checkpoint(ckpt_dir / "last.ckpt")["epoch"] == 1

    def cut(obj, f):  # a write that stops halfway, as a full disk or a kill does
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", cut)
    with pytest.raises(OSError):
        trainer.save_checkpoint(ckpt_dir / "last.ckpt")
    assert load_checkpoint(ckpt_dir / "last.ckpt")["epoch"] == 1
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt"]


def test_last_ckpt_follows_every_epoch_when_validation_runs_every_second_one(tmp_path):
    """A review: with ``check_val_every_n_epoch=2`` last.ckpt was saved after validation only, so a 3-epoch run
    ended with the weights of epoch 1 in it, and a stop or requeue lost up to n - 1 epochs."""
    cfg = compose_run(["+exp=lits_dnet"], tmp_path)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    trainer = pl.Trainer(max_epochs=3, callbacks=[instantiate(cfg.callbacks.last_checkpoint)], logger=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         check_val_every_n_epoch=2)
    trainer.fit(FallingScore(cfg.module.monitor), _loader(), _loader())
    saved = load_checkpoint(ckpt_dir / "last.ckpt")
    assert saved["epoch"] == 2 and saved["global_step"] == trainer.global_step


def test_a_checkpoint_reaches_the_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """A trust review: the rename alone survives a killed process, not a power loss, after which a file system may
    hold a zero-length ``last.ckpt``. The temp file's data are synced before the rename, the folder after it."""
    import os

    from lightning_modules.atomic import save_torch

    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.path.basename(os.readlink(
        f"/proc/self/fd/{fd}")))), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))), replace(a, b))[1])
    save_torch({"w": torch.ones(2)}, tmp_path / "last.ckpt")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(".last.ckpt.") and events[1][1] == "last.ckpt" and events[2][1] == tmp_path.name


def test_a_file_system_without_fsync_still_gets_the_checkpoint(tmp_path, monkeypatch):
    """A review of the fsync: some FUSE and network mounts refuse fsync (EINVAL); the write goes on there, and
    an I/O error is still an error."""
    import errno
    import os

    from lightning_modules.atomic import save_torch

    def refuse(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refuse)
    save_torch({"w": torch.ones(2)}, tmp_path / "last.ckpt")
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.ones(2))

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        save_torch({"w": torch.zeros(2)}, tmp_path / "last.ckpt")
    assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.parametrize("monitor, mode", [("val/loss", "min"), ("val/hd95", "min"), ("val/dice", "max")])
def test_the_best_checkpoint_follows_its_own_monitor_s_way(tmp_path, monitor, mode):
    """Found by a review: ``callbacks.model_checkpoint.monitor=val/loss`` on a run whose module monitors
    ``val/acc`` kept the mode of ``module.monitor`` (max) and tested the epoch with the highest loss."""
    cfg = compose_run(["+exp=digits_cnn", f"callbacks.model_checkpoint.monitor={monitor}"], tmp_path)
    assert cfg.callbacks.model_checkpoint.mode == mode
