"""Volumetric settings a review found passing their checks and failing later, or meaning something else."""
from __future__ import annotations

import json

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
    from experiments.predict import window_overlap

    assert window_overlap(None, {"overlap": 0.0}) == 0.0  # it was `0 or 0.5`
    assert window_overlap(None, {}) == 0.5 and window_overlap(0.25, {"overlap": 0.0}) == 0.25


def test_predict_pads_2d_slices_as_training_batches_are():
    """A review: predict fed a 2D net a volume's slices unpadded (200 x 184), which the net zero-padded, while
    training and test pad to a multiple of 32 with the data's air (-1 under out_range [-1, 1]): 1,850 voxels of
    one case were labelled otherwise than the test step labels them. Predict now pads as PadCollate does."""
    import torch

    from engine.predict import _labels_on_source_grid

    seen = {}

    class Predictor:
        spatial_dims = 2

        def probabilities(self, x, on_device=False):
            seen["x"] = x
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    class Data:
        def fill_value(self):
            return -1.0

        def restore_labels(self, prob, grid, to_labels, with_probabilities):
            return prob

    x = torch.zeros(3, 1, 40, 37)
    prob = _labels_on_source_grid(x, None, Data(), Predictor(), None, False, False)
    assert tuple(seen["x"].shape) == (3, 1, 64, 64) and tuple(prob.shape) == (3, 2, 40, 37)
    assert bool((seen["x"][..., 40:, :] == -1).all()) and bool((seen["x"][..., :40, :37] == 0).all())
