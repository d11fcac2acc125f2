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
