"""Lightning conventions a review found broken: the checkpoint's mode follows the monitored metric, and
``trainer.enable_progress_bar=false`` builds a trainer."""
from __future__ import annotations

import pytest

from engine.builders import build_callbacks, build_trainer
from tests.hydra_helpers import compose_run

TINY = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "logger=csv"]


@pytest.mark.parametrize("monitor, mode", [("val/dice", "max"), ("val/loss", "min"), ("val/hd95", "min")])
def test_the_best_checkpoint_is_the_best_of_its_monitor(tmp_path, monitor, mode):
    """``mode: max`` was fixed in callbacks/default.yaml: with ``module.monitor=val/loss`` best.ckpt kept the
    epoch of the highest loss and the test ran on it."""
    cfg = compose_run([*TINY, f"module.monitor={monitor}"], tmp_path)
    checkpoint = next(c for c in build_callbacks(cfg) if getattr(c, "filename", None) == "best")
    assert (checkpoint.monitor, checkpoint.mode) == (monitor, mode)


def test_progress_bar_off_is_a_trainer_not_an_error(tmp_path):
    """Lightning refuses a RichProgressBar callback beside ``enable_progress_bar=False``; every default run
    stopped with exit 2 on this common override."""
    from pytorch_lightning.callbacks import ProgressBar

    cfg = compose_run([*TINY, "trainer.enable_progress_bar=false"], tmp_path)
    trainer = build_trainer(cfg, build_callbacks(cfg))
    assert not any(isinstance(c, ProgressBar) for c in trainer.callbacks)
