"""Padded mixed-size batches (``data.image_size=null``) are scored on the slices' own pixels only:
padding counted as true background would inflate accuracy (paper 000 Eq. 3) and background IoU (Eq. 5)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from datamodules.collate import PadCollate
from lightning_modules.losses.hybrid import HybridCEDiceLoss
from lightning_modules.metrics import confusion_matrix
from lightning_modules.segmentation import SegmentationModule


class Threshold(nn.Module):
    """A fixed 'net': class-1 logit = image - 0.5, so predictions are exactly known."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), (x - 0.5) * 8], dim=1)


def _slices() -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i, (h, w) in enumerate([(40, 52), (40, 52), (36, 60)]):
        image = torch.rand(1, h, w, generator=g)
        mask = (torch.rand(h, w, generator=g) > 0.6).long()
        out.append({"image": image, "mask": mask, "case_id": f"c{i // 2}", "slice_index": i % 2})
    return out


def _test_scores(batches: list[dict]) -> dict[str, float]:
    module = SegmentationModule(Threshold(), HybridCEDiceLoss(), num_classes=2, surface_metrics=True)
    module.log = lambda *a, **k: None  # no Trainer attached: the step's logging is not under test
    for b in batches:
        module._evaluate(b, "test", module.test_cases)
    module.on_test_epoch_end()
    return module.test_summary


def test_padding_is_left_out_of_the_test_metrics():
    slices = _slices()
    padded = PadCollate(32)(slices)
    assert padded["image"].shape[-2:] == (64, 64) and padded["valid"].sum() == 2 * 40 * 52 + 36 * 60
    one_each = [PadCollate(4)([s]) for s in slices]  # every slice alone, at its own size: no padding
    assert all("valid" not in b for b in one_each)
    got, want = _test_scores([padded]), _test_scores(one_each)
    for key in ("accuracy", "miou", "dice", "auc_class_1", "hd95"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def test_confusion_matrix_leaves_out_invalid_pixels():
    pred = torch.tensor([[[0, 1], [1, 1]]])
    target = torch.tensor([[[0, 1], [0, 0]]])
    valid = torch.tensor([[[True, True], [False, False]]])
    assert confusion_matrix(pred, target, 2, valid)[0].tolist() == [[1, 0], [0, 1]]
    assert confusion_matrix(pred, target, 2)[0].tolist() == [[1, 2], [0, 1]]
