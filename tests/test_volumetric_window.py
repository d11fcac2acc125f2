"""3D sliding-window settings a review found unchecked: each is now one ConfigError line naming its key."""
from __future__ import annotations

import pytest
import torch

from lightning_modules.errors import ConfigError
from tests.hydra_helpers import compose_run
from tests.volumetric_helpers import TINY_3D

LOSS = {"_target_": "lightning_modules.losses.hybrid.HybridCEDiceLoss"}


@pytest.mark.parametrize("overlap", [1.0, -0.1, "half"])
def test_a_window_overlap_outside_0_1_is_one_line(overlap):
    """A review: ``module.overlap=1.0`` was MONAI's ValueError traceback in the first validation step."""
    from lightning_modules.segmentation import SegmentationModule

    with pytest.raises(ConfigError, match=r"module.overlap=.* must be a number in \[0, 1\)"):
        SegmentationModule(torch.nn.Identity(), LOSS, num_classes=2, roi_size=(8, 8, 8), overlap=overlap)


def test_a_null_roi_size_windows_3d_volumes_with_the_patch_size(tmp_path):
    """A review: ``module.roi_size=null`` gave the 3D net whole volumes (a tensor-size traceback at the first
    validation); the module now windows with ``data.patch_size``, as predict does, and the checkpoint says so."""
    from experiments.run import dispatch

    cfg = compose_run([*TINY_3D, "module.roi_size=null", "++trainer.fast_dev_run=true"], tmp_path)
    dispatch(cfg)
    from engine.builders import build_datamodule, build_module

    module = build_module(cfg)
    module._trainer = type("T", (), {"datamodule": build_datamodule(cfg.data)})()
    module.setup("fit")
    assert module.roi_size == (16, 16, 16) and module.hparams["roi_size"] == [16, 16, 16]


def test_a_window_segresnet_vae_cannot_take_is_one_line(tmp_path):
    """A review: predict with ``roi_size=[20,20,20]`` and SegResNetVAE was a RuntimeError traceback in the net's
    decoder (its encoder halves each side 3 times); now one line naming roi_size, before any volume is read, and
    the same from the net itself and from a module given ``module.roi_size=[20,20,20]``."""
    from omegaconf import OmegaConf

    from experiments.predict import predict
    from lightning_modules.nets.monai3d import SegResNetVAE3D
    from lightning_modules.segmentation import SegmentationModule
    from tests.volumetric_helpers import make_run, phantom

    said = r"segresnet_vae needs every {}roi_size side to be a multiple of 8 .*\[20, 20, 20\]"
    net = SegResNetVAE3D(patch_size=(16, 16, 16)).eval()
    with pytest.raises(ConfigError, match=said.format("")):
        net(torch.zeros(1, 1, 20, 20, 20))
    assert net(torch.zeros(1, 1, 24, 16, 8)).shape == (1, 2, 24, 16, 8)
    module = SegmentationModule(net, LOSS, num_classes=2, roi_size=(20, 20, 20))
    with pytest.raises(ConfigError, match=said.format(r"module\.")):
        module.check_volumetric((16, 16, 16))
    ckpt, root = make_run(tmp_path, base=TINY_3D), phantom(tmp_path, shape=(36, 30, 8))
    out = tmp_path / "x.nii.gz"
    with pytest.raises(ConfigError, match=said.format("")):
        predict(OmegaConf.create(dict(ckpt=str(ckpt), input=str(root / "volume-0.nii.gz"), output=str(out),
                                      labels=None, run_config=None, batch_size=4, roi_size=[20, 20, 20], overlap=None,
                                      mode="gaussian", tta=False, nsd_tolerance_mm=1.0, device="cpu")))
    assert not out.exists()


def test_foreground_slices_are_refused_for_3d_data():
    """A review: ``module.eval_slices=foreground`` took a whole 3D case for one slice, so a test volume with an
    empty label left the metrics without a word; it is paper 001's 2D protocol, now refused at setup for 3D data
    (and for a 5D batch where no datamodule told setup)."""
    from lightning_modules.segmentation import SegmentationModule

    said = r"module.eval_slices=foreground is paper 001's 2D slice protocol.*use module.eval_slices=all"
    module = SegmentationModule(torch.nn.Identity(), LOSS, num_classes=2, roi_size=(8, 8, 8), eval_slices="foreground")
    module._trainer = type("T", (), {"datamodule": type("D", (), {"patch_size": (8, 8, 8)})()})()
    with pytest.raises(ConfigError, match=said):
        module.setup("test")
    batch = {"image": torch.zeros(1, 2, 8, 8, 8), "mask": torch.zeros(1, 8, 8, 8, dtype=torch.long), "case_id": ["c"]}
    with pytest.raises(ConfigError, match=said):
        module.test_step(batch, 0)
