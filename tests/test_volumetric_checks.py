"""Volumetric settings a review found passing their checks and failing later, or meaning something else."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from datamodules.errors import DataError


def test_lower_case_orientation_codes_are_taken():
    """``data.orientation=las`` passed the check, then nibabel raised a traceback on the lower-case codes."""
    from datamodules.volumes import PreprocessParams

    assert PreprocessParams(orientation="las").orientation == "LAS"


def test_the_nnunet_ignore_label_is_refused(tmp_path):
    """nnU-Net v2's ``"ignore"`` label (sparse annotation) was a class: trained, scored, and foreground under
    ``target=organ``."""
    from datamodules.layouts import nnunet_classes

    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                       "labels": {"background": 0, "liver": 1, "ignore": 2}}))
    with pytest.raises(DataError, match=r"dataset.json \"labels\" has nnU-Net v2's \"ignore\" label \(2\)"):
        nnunet_classes(tmp_path)


@pytest.mark.parametrize("value, said", [(1.5, "liver=1.5 is not a label value"), ("1", "liver='1' is not"),
                                         (True, "liver=True is not"), ([1, 2], "uses regions (liver: [1, 2])")])
def test_an_nnunet_label_value_that_is_no_whole_number_is_refused(tmp_path, value, said):
    """A trust review: 1.5, "1" and true were each taken as class 1."""
    from datamodules.layouts import nnunet_classes

    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                       "labels": {"background": 0, "liver": value}}))
    with pytest.raises(DataError, match=re.escape(said)):
        nnunet_classes(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                       "labels": {"liver": 1, "background": 0}}))
    assert nnunet_classes(tmp_path) == {0: "background", 1: "liver"}


@pytest.mark.parametrize("kw, said", [({"samples_per_volume": 0}, "data.samples_per_volume=0"),
                                      ({"pos": 0, "neg": 0}, "data.pos=0, data.neg=0"),
                                      ({"neg": -1}, "data.pos=1.0, data.neg=-1")])
def test_patch_sampling_settings_that_cannot_sample_are_one_line(tmp_path, kw, said):
    from datamodules.patches3d import PatchVolumeDataModule

    with pytest.raises(DataError, match=said):
        PatchVolumeDataModule(str(tmp_path), patch_size=(8, 8, 8), **kw)


def test_ct_normalisation_of_a_multi_channel_case_is_one_line():
    """``normalization=ct`` indexed a [D, C, H, W] image with its [D, H, W] mask (an IndexError), and given
    ``ct_stats`` would clip every channel to one CT range."""
    from datamodules.segmentation import VolumeSegmentationDataModule
    from datamodules.slices import SliceCase

    dm = VolumeSegmentationDataModule.__new__(VolumeSegmentationDataModule)
    dm.ct_stats = None
    case = SliceCase("c0", np.zeros((4, 2, 8, 8), np.float32), np.zeros((4, 8, 8), np.uint8), [0, 1, 2, 3],
                     [0, 1, 2, 3])
    with pytest.raises(DataError, match=r"normalization=ct takes one CT channel; case c0 has 2"):
        dm._ct_normalised([case])


def test_predict_keeps_a_trained_overlap_of_zero():
    from experiments.predict import run_setting

    def window_overlap(given, trained):
        return run_setting(given, trained, "overlap", 0.5)

    assert window_overlap(None, {"overlap": 0.0}) == 0.0  # it was `0 or 0.5`
    assert window_overlap(None, {}) == 0.5 and window_overlap(0.25, {"overlap": 0.0}) == 0.25


def test_predict_scores_nsd_at_the_runs_tolerance():
    """A review: a run tested with ``module.nsd_tolerance_mm=2`` was predicted at predict's own 1 mm."""
    from experiments.predict import run_setting

    def surface_tolerance(given, trained):
        return run_setting(given, trained, "nsd_tolerance_mm", 1.0)

    assert surface_tolerance(None, {"nsd_tolerance_mm": 2.0}) == 2.0 and surface_tolerance(None, {}) == 1.0
    assert surface_tolerance(0.5, {"nsd_tolerance_mm": 2.0}) == 0.5
    assert surface_tolerance(None, {"nsd_tolerance_mm": 0}) == 0


def test_predict_pads_2d_slices_as_training_batches_are():
    """A review: predict fed a 2D net a volume's slices unpadded (200 x 184), which the net zero-padded, while
    training and test pad to a multiple of 32 with the data's air (-1 under out_range [-1, 1]): 1,850 voxels of
    one case were labelled otherwise than the test step labels them (the review's run). Predict now pads as
    PadCollate does, and only when the data's batches are padded: with a fixed ``image_size`` they are not (the
    net pads inside), and a later review saw predict pad those with the data's air where the test had not."""
    import torch

    from datamodules.collate import PadCollate
    from engine.predict import _labels_on_source_grid

    seen = {}

    class Predictor:
        spatial_dims = 2

        def probabilities(self, x, on_device=False):
            seen["x"] = x
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    class Data:
        image_size = None  # batches padded per batch (PadCollate), as SliceDataModule.collate_fn gives

        def collate_fn(self, train):
            return PadCollate(32, -1.0) if self.image_size is None else None

        def restore_labels(self, prob, grid, to_labels, with_probabilities):
            return prob

    x = torch.zeros(3, 1, 40, 37)
    prob = _labels_on_source_grid(x, None, Data(), Predictor(), None, False, False)
    assert tuple(seen["x"].shape) == (3, 1, 64, 64) and tuple(prob.shape) == (3, 2, 40, 37)
    assert bool((seen["x"][..., 40:, :] == -1).all()) and bool((seen["x"][..., :40, :37] == 0).all())
    fixed = Data()
    fixed.image_size = 40  # a fixed size: trained and tested unpadded, so predicted unpadded
    _labels_on_source_grid(torch.zeros(3, 1, 40, 40), None, fixed, Predictor(), None, False, False)
    assert tuple(seen["x"].shape) == (3, 1, 40, 40)


def test_predict_of_an_msd_run_needs_no_training_folder(tmp_path):
    """A review: predict of an msd / nnU-Net run read the class values from the training folder's dataset.json
    and failed at the first case once that folder was gone (another machine, a handed-over run); the checkpoint
    now keeps them (``source_classes``)."""
    import shutil

    import torch
    from omegaconf import OmegaConf

    from datamodules.synthetic import write_phantom_dataset
    from experiments.predict import predict
    from experiments.run import dispatch
    from tests.hydra_helpers import compose_run
    from tests.volumetric_helpers import TINY_3D

    root = tmp_path / "Task_msd"
    write_phantom_dataset(root, layout="msd", n_cases=5, shape=(32, 32, 8), seed=0)
    cfg = compose_run([*TINY_3D, f"data.root={root}", "data.layout=msd", "+data.synthetic.layout=msd",
                       "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
                       "test=false", "logger=csv"], tmp_path)
    dispatch(cfg)
    (tmp_path / "run" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # as experiments.run does
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = next(v for v in torch.load(ckpt, weights_only=True).values() if isinstance(v, dict) and "source_classes" in v)
    assert state["source_classes"]["0"] == "background"
    write_phantom_dataset(tmp_path / "new", layout="msd", n_cases=1, shape=(32, 32, 8), seed=5)
    volume = sorted((tmp_path / "new" / "imagesTr").glob("*.nii.gz"))[0]
    shutil.rmtree(root)  # the training data is not where predict runs
    out = tmp_path / "seg.nii.gz"
    predict(OmegaConf.create(dict(labels=None, run_config=None, batch_size=8, roi_size=None, overlap=None,
                                  mode="gaussian", tta=False, nsd_tolerance_mm=1.0, device="cpu", ckpt=str(ckpt),
                                  input=str(volume), output=str(out))))
    assert out.is_file()


@pytest.mark.parametrize("spacing, shown", [(1.0, "1.0"), ([1, 1, "abc"], r"\[1, 1, 'abc'\]"), ("111", "'111'"),
                                            ([1, 1], r"\[1, 1\]"), ([0, 1, 1], r"\[0, 1, 1\]")])
def test_a_spacing_that_is_not_three_millimetre_sizes_is_one_line(tmp_path, spacing, shown):
    """A walkthrough: ``data.spacing=1.0`` (one number for "1 mm isotropic") and ``[1,1,abc]`` were a TypeError and a
    ValueError in the datamodule's constructor, Hydra's multi-line "Error in call to target", exit 1."""
    from datamodules.patches3d import PatchVolumeDataModule
    from datamodules.segmentation import VolumeSegmentationDataModule

    with pytest.raises(DataError, match=rf"^data.spacing={shown} must be three positive numbers \(mm\) or null"):
        PatchVolumeDataModule(str(tmp_path), patch_size=(8, 8, 8), spacing=spacing)
    with pytest.raises(DataError, match=rf"^data.spacing={shown} must be three positive numbers"):
        VolumeSegmentationDataModule(str(tmp_path), spacing=spacing)
    assert PatchVolumeDataModule(str(tmp_path), patch_size=(8, 8, 8), spacing=[1, 1, 1.5]).spacing == (1.0, 1.0, 1.5)


@pytest.mark.parametrize("stats", [5, [0, 1, 2], "abc"])
def test_ct_stats_that_are_not_four_numbers_are_one_line(tmp_path, stats):
    """As ``data.spacing``: ``data.ct_stats=5`` was a TypeError in the constructor (Hydra's "Error in call to
    target", exit 1)."""
    from omegaconf import OmegaConf

    from datamodules.segmentation import VolumeSegmentationDataModule

    with pytest.raises(DataError, match=r"^data.ct_stats=.* is not \[lo, hi, mean, std\]"):
        VolumeSegmentationDataModule(str(tmp_path), ct_stats=stats)
    given = OmegaConf.create({"s": [-100, 200, 40.5, 60]}).s  # as Hydra passes it
    assert VolumeSegmentationDataModule(str(tmp_path), ct_stats=given).ct_stats == (-100.0, 200.0, 40.5, 60.0)
