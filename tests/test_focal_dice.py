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


def test_smooth_one_on_a_batch_without_foreground_matches_the_docstring_formula():
    """``smooth=1.0`` (the authors' Dice smoothing, ``++module.loss.base.smooth=1.0``): on a batch with no
    foreground each foreground class's Dice term is ``1 - 1 / (sum p_k + 1)``, averaged over the classes;
    at the default 1e-5 it is ~1 instead."""
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]], [[-1.0, 0.5]]]])  # [1, 3, 1, 2]
    mask = torch.zeros(1, 1, 2, dtype=torch.long)
    e = [[math.exp(1.0), 1.0, math.exp(-1.0)], [1.0, math.exp(2.0), math.exp(0.5)]]  # per pixel, per class
    p = [[v / sum(px) for v in px] for px in e]
    sum_p1, sum_p2 = p[0][1] + p[1][1], p[0][2] + p[1][2]
    expected = ((1 - 1 / (sum_p1 + 1)) + (1 - 1 / (sum_p2 + 1))) / 2
    assert expected < 0.7  # far from the ~1 that smooth=1e-5 gives
    assert FocalDiceLoss(smooth=1.0).terms(logits, mask)["dice"].item() == pytest.approx(expected, rel=1e-5)
    assert soft_dice_loss(logits, mask, smooth=1.0).item() == pytest.approx(expected, rel=1e-5)
    assert FocalDiceLoss().terms(logits, mask)["dice"].item() == pytest.approx(1.0, abs=1e-4)


def test_focal_and_dice_weights_scale_the_total():
    """``focal_weight`` / ``dice_weight`` (the authors' 0.5 : 0.5, ``++module.loss.base.focal_weight=0.5
    ++module.loss.base.dice_weight=0.5``) weight the two terms of the total."""
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    mask = torch.tensor([[[0, 1]]])
    plain = FocalDiceLoss().terms(logits, mask)
    focal, dice = plain["focal"].item(), plain["dice"].item()
    half = FocalDiceLoss(focal_weight=0.5, dice_weight=0.5)
    assert half(logits, mask).item() == pytest.approx(0.5 * focal + 0.5 * dice, rel=1e-6)
    assert half.terms(logits, mask)["total"].item() == pytest.approx(0.5 * (focal + dice), rel=1e-6)
    uneven = FocalDiceLoss(focal_weight=0.25, dice_weight=2.0)(logits, mask).item()
    assert uneven == pytest.approx(0.25 * focal + 2.0 * dice, rel=1e-6)


def test_per_class_alpha_weights_each_pixels_focal_term():
    """``alpha`` (per class): ``FL = -alpha_y (1 - p_y)^2 log p_y``, averaged over the pixels, by hand on two."""
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])
    mask = torch.tensor([[[0, 1]]])
    p0 = math.exp(2) / (math.exp(2) + 1)  # p(class 0 | pixel0), its true class
    p1 = math.e / (math.e + 1)  # p(class 1 | pixel1), its true class
    fl0, fl1 = -(1 - p0) ** 2 * math.log(p0), -(1 - p1) ** 2 * math.log(p1)
    expected = (0.25 * fl0 + 0.75 * fl1) / 2
    assert expected != pytest.approx((fl0 + fl1) / 2, rel=1e-2)
    loss = FocalDiceLoss(alpha=[0.25, 0.75])
    assert loss.terms(logits, mask)["focal"].item() == pytest.approx(expected, rel=1e-5)
    assert focal_loss(logits, mask, alpha=[0.25, 0.75]).item() == pytest.approx(expected, rel=1e-5)
    dice = FocalDiceLoss().terms(logits, mask)["dice"].item()
    assert loss(logits, mask).item() == pytest.approx(expected + dice, rel=1e-5)


def test_the_smooth_override_reaches_the_built_hlfd_loss(tmp_path):
    """``++module.loss.base.smooth=1.0`` (docs/distillation.md) composed with ``+exp=kits_hlfd distill=hlfd``
    reaches the FocalDiceLoss that ``build_module`` builds: its Dice term on an empty batch is the smoothed one."""
    from engine.builders import build_module
    from tests.hydra_helpers import compose_run

    cfg = compose_run(["+exp=kits_hlfd", "distill=hlfd", "++module.loss.base.smooth=1.0"], tmp_path)
    base = build_module(cfg).loss.base
    assert isinstance(base, FocalDiceLoss) and base.smooth == 1.0
    logits = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    mask = torch.zeros(1, 1, 2, dtype=torch.long)
    sum_p = 1 / (math.e + 1) + math.exp(2) / (math.exp(2) + 1)
    assert base.terms(logits, mask)["dice"].item() == pytest.approx(1 - 1 / (sum_p + 1), rel=1e-5)
