"""What a failed or restarted centralised run leaves behind: no open W&B run, no duplicated CSV rows."""
from __future__ import annotations

import pytest

from experiments.run import dispatch
from tests.hydra_helpers import compose_run

DIGITS = ["+exp=digits_cnn", "model.width=4", "trainer.max_epochs=1", "++trainer.limit_train_batches=3"]


def test_a_failed_job_closes_its_wandb_run(tmp_path, monkeypatch):
    """A review: a job that failed after W&B started left its run open, and the sweep's next job logged into it
    (Lightning reuses an open ``wandb.run``): job 1's test metrics and config ended in job 0's run."""
    import wandb

    import engine.fit

    def boom(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(engine.fit, "fit_and_evaluate", boom)
    cfg = compose_run([*DIGITS, "logger=wandb"], tmp_path)
    with pytest.raises(RuntimeError, match="simulated"):
        engine.fit.train_and_test(cfg)
    assert wandb.run is None
    # and says why (a W&B review: a failed run's reason was in failed.json only)
    from tests.wandb_offline import read_run

    assert "CUDA out of memory (simulated)" in read_run(tmp_path / "run")["summary"]["error"]


def test_a_stopped_runs_w_and_b_error_says_how_to_continue(monkeypatch, tmp_path):
    """A walkthrough: Ctrl-C left ``error: "SystemExit: 1"`` (Lightning's exit on a Ctrl-C) in the W&B summary and
    SIGTERM ``SIGTERMException: SIGTERMException()``, while the console said how to continue."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from engine import stop
    from engine.fit import stop_reason

    assert stop_reason(SIGTERMException()).startswith("interrupted by SIGTERM; the console's last line and run.log")
    assert stop_reason(KeyboardInterrupt()).startswith("interrupted by SIGINT;")
    assert stop_reason(SystemExit(1)) == "SystemExit: 1"  # an exit no signal asked for
    monkeypatch.setitem(stop._requested, "sigint", True)
    assert stop_reason(SystemExit(1)).startswith("interrupted by SIGINT;")
    assert stop_reason(ValueError("raised while stopping")).startswith("interrupted by SIGINT;")
    monkeypatch.setitem(stop._requested, "sigint", False)
    assert stop_reason(ValueError("bad\nsecond line")) == "ValueError: bad"


def test_resume_true_before_the_first_checkpoint_starts_its_csv_afresh(tmp_path):
    """A review: a run stopped before its first checkpoint, resumed with ``resume=true`` (SLURM's requeue), started
    afresh and appended to the stopped attempt's ``metrics.csv``: every row before the stop was there twice."""
    run = tmp_path / "run"
    (run / "csv").mkdir(parents=True)
    (run / "csv" / "metrics.csv").write_text("epoch,step,train/loss_epoch\n0,2,9.875\n")  # the stopped attempt's row
    dispatch(compose_run([*DIGITS, "logger=csv", "resume=true"], tmp_path))
    text = (run / "csv" / "metrics.csv").read_text()
    assert "9.875" not in text and "train/loss" in text


def test_training_on_from_a_checkpoint_of_another_net_is_one_line(tmp_path):
    """A review: ``ckpt_path=<run>/checkpoints/best.ckpt`` with ``model.width=16`` on a width-4 run (train on from
    it) was Lightning's 55-line strict-load traceback, exit 1, no failed.json."""
    from lightning_modules.errors import CheckpointError

    dispatch(compose_run([*DIGITS, "logger=csv", "test=false"], tmp_path / "a"))
    ckpt = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"holds another model than module ClassificationModule builds: .*"
                                              r"of another shape"):
        dispatch(compose_run([*DIGITS[:1], "model.width=16", *DIGITS[2:], "logger=csv", f"ckpt_path={ckpt}",
                              "trainer.max_epochs=2"], tmp_path / "b"))


def test_a_moved_run_resumes_with_its_best_checkpoint(tmp_path):
    """A review: resuming a run folder that was moved reset Lightning's best-checkpoint tracking (its restored
    paths name the old folder), so the first epoch after the resume became the "best", was saved as
    best-v1.ckpt and tested. The paths are rebased on the new folder when its files are there."""
    import json
    import shutil

    from lightning_modules.safe_load import load_checkpoint

    first = compose_run([*DIGITS, "logger=csv", "trainer.max_epochs=2", "test=false"], tmp_path / "a")
    dispatch(first)
    moved = tmp_path / "moved"
    shutil.move(str(tmp_path / "a" / "run"), moved)
    (moved / "config.yaml").write_text(__import__("omegaconf").OmegaConf.to_yaml(first, resolve=True))
    best_before = load_checkpoint(moved / "checkpoints" / "best.ckpt")["epoch"]
    cfg = compose_run([*DIGITS, "logger=csv", "trainer.max_epochs=3", "resume=true"], tmp_path / "b")
    with __import__("omegaconf").open_dict(cfg):
        cfg.paths.output_dir = str(moved)
        cfg.callbacks.model_checkpoint.dirpath = str(moved / "checkpoints")
        cfg.callbacks.last_checkpoint.dirpath = str(moved / "checkpoints")
    dispatch(cfg)
    names = sorted(p.name for p in (moved / "checkpoints").iterdir())
    assert names == ["best.ckpt", "last.ckpt"], names  # no best-v1.ckpt of a reset tracker
    tested = json.loads((moved / "metrics.json").read_text())["test_checkpoint"]
    assert tested == str(moved / "checkpoints" / "best.ckpt")
    assert load_checkpoint(moved / "checkpoints" / "best.ckpt")["epoch"] >= best_before



def test_training_on_from_another_runs_checkpoint_drops_its_best_of_values(tmp_path):
    """A review: with ``ckpt_path=<run A>/checkpoints/last.ckpt`` a new run reported run A's ``val/*_best`` (the
    sweep objective) while its checkpoint tracker restarted and it tested its own best.ckpt. A moved run keeps
    them (its best.ckpt is found in the new folder)."""
    from types import SimpleNamespace

    from pytorch_lightning.callbacks import ModelCheckpoint

    from callbacks.checkpoint_paths import ConfineCheckpointPaths

    here = tmp_path / "b" / "checkpoints"
    here.mkdir(parents=True)
    cb = ModelCheckpoint(dirpath=str(here), filename="best", monitor="val/acc", mode="max")
    trainer = SimpleNamespace(callbacks=[cb])

    def checkpoint(old: Path) -> dict:
        return {"callbacks": {cb.state_key: {"dirpath": str(old), "best_model_path": str(old / "best.ckpt"),
                                             "best_model_score": 0.99, "best_k_models": {}},
                              "BestMetric": {"val/acc": [0.99, 1]}}}

    other = checkpoint(tmp_path / "a" / "checkpoints")
    ConfineCheckpointPaths().on_load_checkpoint(trainer, None, other)
    assert "BestMetric" not in other["callbacks"]
    (here / "best.ckpt").write_bytes(b"")  # the same run, moved: its files are here
    moved = checkpoint(tmp_path / "old_place" / "checkpoints")
    ConfineCheckpointPaths().on_load_checkpoint(trainer, None, moved)
    state = moved["callbacks"][cb.state_key]
    assert "BestMetric" in moved["callbacks"] and state["best_model_path"] == str(here / "best.ckpt")
    assert state["dirpath"] == cb.dirpath


def test_a_test_only_run_without_a_checkpoint_is_one_line(tmp_path):
    """A review: ``train=false`` without ``ckpt_path`` tested the untrained net and wrote its metrics as a result
    (``test_checkpoint: "last weights"``)."""
    from lightning_modules.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train=false tests a checkpoint: give ckpt_path="):
        dispatch(compose_run([*DIGITS, "logger=csv", "train=false"], tmp_path))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_stop_signal_during_a_checkpoint_write_waits_for_it(tmp_path):
    """CI: a submitit requeue's SIGUSR2 handler ran inside ``torch.save``'s writes and the save failed ("unexpected
    pos"). The signal is now handled once the file is written: whole, and the handler still runs."""
    import os
    import signal

    import torch

    from lightning_modules import atomic

    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda n, f: seen.append(("handler", n)))
    real_save = torch.save

    def save_and_get_signalled(obj, f):
        os.kill(os.getpid(), signal.SIGUSR2)  # arrives in the middle of the write
        seen.append(("during", len(seen)))
        real_save(obj, f)

    try:
        torch.save = save_and_get_signalled
        atomic.save_torch({"w": torch.ones(3)}, tmp_path / "c.ckpt")
    finally:
        torch.save = real_save
        signal.signal(signal.SIGUSR2, previous)
    assert seen == [("during", 0), ("handler", signal.SIGUSR2)]  # after the write, not inside it
    assert torch.equal(torch.load(tmp_path / "c.ckpt", weights_only=True)["w"], torch.ones(3))


def test_a_wandb_run_that_will_not_close_is_a_warning_not_the_error(caplog):
    """A review: ``finish_wandb`` ran in the failure path, so an error closing W&B replaced the run's own."""
    import logging
    from types import SimpleNamespace

    from pytorch_lightning.loggers import WandbLogger

    from engine.fit import finish_wandb

    def refuse(exit_code=0):
        raise OSError("wandb service gone")

    lg = WandbLogger.__new__(WandbLogger)
    lg._experiment = SimpleNamespace(finish=refuse)
    with caplog.at_level(logging.WARNING, logger="engine.fit"):
        finish_wandb([lg], exit_code=1)
    assert "closing the W&B run failed: OSError: wandb service gone" in caplog.text


def test_training_without_validation_cases_says_what_follows(caplog):
    """A walkthrough: ``data.val_fraction=0`` was only Lightning's "could not find the monitored key" warning; the
    test then took the last epoch's weights without a word of it."""
    import logging
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from engine.fit import warn_no_validation

    cfg = OmegaConf.create({"module": {"monitor": "val/dice"}, "data": {"val_fraction": 0}})
    with caplog.at_level(logging.WARNING, logger="engine.fit"):
        warn_no_validation(SimpleNamespace(val_dataset=[1]), cfg)
        warn_no_validation(SimpleNamespace(), cfg)  # a datamodule without the attribute: nothing said
        assert not caplog.records
        warn_no_validation(SimpleNamespace(val_dataset=[]), cfg)
    assert "no validation cases (data.val_fraction=0): val/dice is never logged" in caplog.text
