"""Hybrid pixel cross-entropy + Dice loss of D-Net, Eq. (1) of paper 000 (000_44cbc91774f2c4df.txt, §4.2).

Eq. (1) is printed as  L = -(1/N) Σ_c Σ_n ( y log P + 2 y P / (y² + P²) ).  Read literally, the Dice
term is evaluated per pixel, where it is 0 for every background pixel whatever P is, so false positives
would never be penalised. Eq. (1) is copied from UNet++ (Zhou et al. 2019), whose text and reference code
compute the Dice term over the whole batch. We therefore implement

    L = CE + (1 - mean_c Dice_c),   CE   = -(1/N) Σ_n Σ_c y_{n,c} log P_{n,c}
                                    Dice_c = 2 Σ_n y_{n,c} P_{n,c} / (Σ_n y_{n,c}² + Σ_n P_{n,c}² + ε)

i.e. the sums over pixels moved inside the fraction (batch Dice with the squared denominator of the
equation) and the constant 1 added so the loss is non-negative (no effect on gradients). With one output
channel the net is read as sigmoid (binary) and both classes {1-P, P} enter the sums, so binary and
two-channel softmax models get the same loss. Choice: §4.2 B ends each head in "a sigmoid function"; with C ≥ 2
output channels we take the softmax over classes, so each pixel's P sums to 1 over the c of Eq. (1).

A class absent from the whole batch has Dice 0 whatever the prediction (ε = 1e-6 only guards the division),
so it adds the constant 1/C and its false positives cost through the CE term alone; the loss then bottoms
out at (number of absent classes)/C, not 0. UNet++'s Keras code would instead add a smoothing of 1 to the
numerator and denominator, which gives such false positives a small Dice gradient; Eq. (1) has no such
term and we do not add one (it would change every published figure of this project for a constant the
paper does not have).

Partially annotated batches (``label_mask``, SegViz / paper 004): the probabilities of the classes a
sample's site does not annotate are merged into background first and each class's Dice is summed over
the samples that annotate it (the marginal loss, :mod:`lightning_modules.losses.marginal`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.losses.marginal import marginal_probabilities


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes, or ``[1-σ, σ]`` for a single-channel (sigmoid) output: [B, C≥2, H, W]."""
    if logits.shape[1] == 1:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    return logits.softmax(dim=1)


def class_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """``log`` of :func:`class_probabilities`, computed in log space (``log_softmax``; ``[log σ(-z), log σ(z)]``
    for one channel), so a confidently wrong pixel keeps its CE gradient. A review found ``log(P.clamp(1e-8))``
    passing no gradient once P < 1e-8 (a logit gap above 18.4): 0 where ``F.cross_entropy`` gives 0.0625."""
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return logits.log_softmax(dim=1)


def marginal_log_probabilities(logp: torch.Tensor, lm: torch.Tensor, background: int = 0) -> torch.Tensor:
    """``log P'`` of the marginal loss (:mod:`lightning_modules.losses.marginal`) in log space: background
    ``logsumexp`` over itself and the sample's unannotated classes; the merged classes 0 (their one-hot target
    is 0, so they add nothing to the CE and no ``0 * -inf``). ``lm``: the ``bool[B, K]`` annotated classes."""
    keep = lm.view(*lm.shape, *([1] * (logp.ndim - 2))).expand_as(logp)
    into_bg = ~keep.clone()
    into_bg[:, background] = True
    merged = torch.logsumexp(logp.masked_fill(~into_bg, float("-inf")), dim=1)
    out = logp.masked_fill(~keep, 0.0)
    return torch.cat([out[:, :background], merged.unsqueeze(1), out[:, background + 1:]], dim=1)


def valid_target(target: torch.Tensor, ignore_index: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(safe, valid)``: ``target`` with its ``ignore_index`` voxels set to class 0 (so it can index and one-hot)
    and the bool mask, of ``target``'s shape, of the voxels that count. Shared with :mod:`.focal_dice`."""
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    return torch.where(valid, target, torch.zeros_like(target)), valid


def one_hot(target: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot [B, C, *spatial] float target and the [B, 1, *spatial] mask of voxels that count (2D or 3D)."""
    safe, valid = valid_target(target, ignore_index)
    lo, hi = torch.aminmax(safe) if safe.numel() else (torch.zeros(()), torch.zeros(()))
    if bool((hi >= num_classes) | (lo < 0)):  # one host sync per head, not two (a performance review)
        raise ValueError(f"mask values {sorted(safe.unique().tolist())} outside [0, {num_classes - 1}]")
    y = F.one_hot(safe, num_classes).movedim(-1, 1).to(torch.float32)
    return y, valid.unsqueeze(1)


def hybrid_ce_dice(
    logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-6, ignore_index: int | None = None,
    label_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Hybrid loss, Eq. (1) of paper 000 with batch Dice (see module docstring for the reading); with
    ``label_mask`` (bool [K] or [B, K]) its marginal form for partially annotated sites."""
    prob = class_probabilities(logits.float())
    logp = class_log_probabilities(logits.float())
    counted = None
    if label_mask is not None:
        prob, counted = marginal_probabilities(prob, label_mask)
        logp = marginal_log_probabilities(logp, counted)
    y, valid = one_hot(target, prob.shape[1], ignore_index)
    w = valid.to(prob.dtype)
    n = w.sum().clamp_min(1.0)
    ce = -(y * logp * w).sum() / n
    if counted is not None:  # [B, K]: a class's Dice over the samples whose site annotates it
        w = w * counted.to(prob.dtype).view(*counted.shape, *([1] * (prob.ndim - 2)))
    dims = (0, *range(2, prob.ndim))  # batch + every spatial axis: one Dice per class (2D or 3D)
    inter = (y * prob * w).sum(dim=dims)
    denom = (y.pow(2) * w).sum(dim=dims) + (prob.pow(2) * w).sum(dim=dims)
    dice = 2 * inter / (denom + eps)
    return ce + (1 - (dice.mean() if counted is None else dice[counted.any(0)].mean()))


class HybridCEDiceLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`hybrid_ce_dice` (paper 000, Eq. 1)."""

    def __init__(self, eps: float = 1e-6, ignore_index: int | None = None) -> None:
        super().__init__()
        self.eps, self.ignore_index = eps, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor, label_mask: torch.Tensor | None = None) -> torch.Tensor:
        return hybrid_ce_dice(logits, target, self.eps, self.ignore_index, label_mask)
