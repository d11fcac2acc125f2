"""Marginal probabilities for partially annotated segmentation (Shi et al., "Marginal loss and exclusion
loss for partially supervised multi-organ segmentation", MedIA 2021, Eq. 2-3; used for SegViz, paper 004).

A site that annotates only some organs labels every other organ as background. Supervising such a mask
with plain CE + Dice would teach "spleen = background" at every liver-only site. The marginal reading
merges, per sample, the probability of each class the sample's site does *not* annotate into background
(``P'_bg = P_bg + Σ_{c unannotated} P_c``; the merged classes get P' = 0) and computes the usual loss on
``P'``: the site then only says "not one of *my* organs" where it has background. The Dice of a class is
summed over the samples whose site annotates it, and a class no sample in the batch annotates is left
out of the mean (its Dice is undefined there), rather than counted as 0 or 1.

Written here, not taken from MONAI: MONAI has no partial-label loss; the computation is a few lines on
the probabilities the hybrid loss already forms.
"""
from __future__ import annotations

import torch
from torch import Tensor


def annotated_classes(label_mask: Tensor, batch: int, num_classes: int, background: int = 0) -> Tensor:
    """``bool[B, K]`` of the classes each sample's site annotates (``label_mask``: ``[K]`` or ``[B, K]``);
    background is always annotated."""
    lm = label_mask.bool()
    if lm.shape[-1] != num_classes:
        raise ValueError(f"label_mask has {lm.shape[-1]} classes but the net predicts {num_classes}")
    lm = lm.expand(batch, num_classes).clone()
    lm[:, background] = True
    return lm


def marginal_probabilities(prob: Tensor, label_mask: Tensor, background: int = 0) -> tuple[Tensor, Tensor]:
    """``P'`` of the module docstring ([B, K, *spatial], sums to 1 over K) and the ``bool[B, K]`` annotated
    classes. ``prob``: class probabilities [B, K, *spatial] (2D or 3D)."""
    lm = annotated_classes(label_mask.to(prob.device), prob.shape[0], prob.shape[1], background)
    keep = lm.to(prob.dtype).view(*lm.shape, *([1] * (prob.ndim - 2)))
    merged = prob[:, background] + (prob * (1 - keep)).sum(1)
    out = prob * keep
    out = torch.cat([out[:, :background], merged.unsqueeze(1), out[:, background + 1:]], dim=1)
    return out, lm
