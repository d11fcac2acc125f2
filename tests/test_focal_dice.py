"""Focal + soft Dice loss (lightning_modules/losses/focal_dice.py), HLFD's L_seg."""
import math

import pytest
import torch

from lightning_modules.losses.focal_dice import FocalDiceLoss, focal_loss, soft_dice_loss


def test_focal_dice_hand_computation():
    # one image, two pixels, two classes: pixel0 logits (2, 0) -> class 0, pixel1 (0, 1) -> class 1
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    mask = torch.tensor([[[0, 1]]])
    p0 = math.exp(2) / (math.exp(2) + 1)  # p(class 0 | pixel0)
    p1 = math.e / (math.e + 1)  # p(class 1 | pixel1)
    focal = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    s = 1e-5
    fg_prob_sum = (1 - p0) + p1
    dice = 1 - (2 * p1 + s) / (fg_prob_sum + 1 + s)  # foreground class only
    terms = FocalDiceLoss().terms(logits, mask)
    assert terms["focal"].item() == pytest.approx(focal, rel=1e-5)
    assert terms["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert FocalDiceLoss()(logits, mask).item() == pytest.approx(focal + dice, rel=1e-5)
    # gamma = 0 reduces the focal term to cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, mask)
    assert focal_loss(logits, mask, gamma=0.0).item() == pytest.approx(ce.item(), rel=1e-5)


def test_ignore_index_drops_pixels():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 1, 4, requires_grad=True)
    mask = torch.tensor([[[0, 2, 255, 1]]])
    loss_fn = FocalDiceLoss(ignore_index=255)
    keep = [0, 1, 3]
    ref = FocalDiceLoss()(logits[..., keep], mask[..., keep])
    got = loss_fn(logits, mask)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    got.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[..., 2].abs().sum() == 0


def test_perfect_prediction_is_near_zero_and_background_option():
    mask = torch.tensor([[[0, 1], [2, 1]]])
    logits = 50.0 * torch.nn.functional.one_hot(mask, 3).permute(0, 3, 1, 2).float()
    assert FocalDiceLoss()(logits, mask).item() == pytest.approx(0.0, abs=1e-5)
    assert soft_dice_loss(logits, mask, include_background=True).item() == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError):
        FocalDiceLoss()(torch.randn(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
