"""Focal + soft Dice loss: the "focal dice loss" L_seg of HLFD (paper 001, Eq. 5).

* Focal loss (Lin et al., ICCV 2017, "Focal loss for dense object detection"), multi-class form
  ``FL = -alpha_y (1 - p_y)^gamma log p_y`` with ``p = softmax(logits)`` and ``gamma = 2``; no class
  weighting unless ``alpha`` (a per-class sequence) is given; averaged over the non-ignored pixels.
* Soft Dice over the foreground classes (``1..K-1``; set ``include_background`` to add class 0):
  per class, ``1 - (2 sum p g + s) / (sum p + sum g + s)`` with the sums over batch *and* pixels
  (stable on slices without foreground), averaged over classes; ``s = smooth = 1e-5``. Choice: the
  authors' code smooths by 1.0, so on a batch without foreground their Dice term still pushes foreground
  probability down (1 - 1/(sum p + 1)); at 1e-5 it is ~1 with no gradient there and only the focal term acts.
  ``++module.loss.base.smooth=1.0`` gives theirs (the paper prints no smoothing).
* ``ignore_index`` pixels are left out of both terms.
* Weights: focal + Dice, 1 : 1. Paper 001 names "the focal dice loss" without weights; the authors' public code
  (``calc_loss``) takes ``0.5 focal + 0.5 Dice``, which halves L_seg against Eq. 5's ``beta L_F + lam L_P``.
  ``++module.loss.base.focal_weight=0.5 ++module.loss.base.dice_weight=0.5`` gives their balance.

Inputs: logits ``float[B, K, H, W]`` (K >= 2) and ``int64[B, H, W]`` masks.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.losses.hybrid import valid_target


def focal_loss(logits: Tensor, target: Tensor, gamma: float = 2.0,
               alpha: Sequence[float] | Tensor | None = None, ignore_index: int | None = None) -> Tensor:
    """Multi-class focal loss (Lin et al. 2017) averaged over the non-ignored pixels."""
    safe_target, valid = valid_target(target, ignore_index)
    log_p = F.log_softmax(logits.float(), dim=1)
    log_pt = log_p.gather(1, safe_target[:, None]).squeeze(1)  # [B, H, W]
    loss = -(1.0 - log_pt.exp()).pow(gamma) * log_pt
    if alpha is not None:
        alpha_t = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)[safe_target]
        loss = alpha_t * loss
    loss = loss * valid
    return loss.sum() / valid.sum().clamp_min(1)


def soft_dice_loss(logits: Tensor, target: Tensor, include_background: bool = False,
                   smooth: float = 1e-5, ignore_index: int | None = None) -> Tensor:
    """``1 - mean_k Dice_k`` of softmax probabilities vs one-hot masks (foreground classes by default)."""
    num_classes = logits.shape[1]
    safe_target, valid = valid_target(target, ignore_index)
    probs = F.softmax(logits.float(), dim=1) * valid[:, None]
    onehot = F.one_hot(safe_target, num_classes).permute(0, 3, 1, 2).to(probs.dtype) * valid[:, None]
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * inter + smooth) / (denom + smooth)  # [K]
    if not include_background:
        dice = dice[1:]
    return 1.0 - dice.mean()


class FocalDiceLoss(nn.Module):
    """L_seg of HLFD: ``focal_weight * focal + dice_weight * dice`` (see module docstring)."""

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None,
                 focal_weight: float = 1.0, dice_weight: float = 1.0,
                 include_background: bool = False, smooth: float = 1e-5,
                 ignore_index: int | None = None) -> None:
        super().__init__()
        self.gamma, self.alpha = gamma, None if alpha is None else list(alpha)
        self.focal_weight, self.dice_weight = focal_weight, dice_weight
        self.include_background, self.smooth, self.ignore_index = include_background, smooth, ignore_index

    def terms(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{focal, dice, total}``."""
        if logits.dim() != 4 or logits.shape[1] < 2:
            raise ValueError(f"FocalDiceLoss expects logits [B, K>=2, H, W], got {tuple(logits.shape)}")
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"mask shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
        target = target.long()
        focal = focal_loss(logits, target, self.gamma, self.alpha, self.ignore_index)
        dice = soft_dice_loss(logits, target, self.include_background, self.smooth, self.ignore_index)
        return {"focal": focal, "dice": dice,
                "total": self.focal_weight * focal + self.dice_weight * dice}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.terms(logits, target)["total"]
