"""Binned one-vs-rest ROC curve and AUC over every test pixel, counted in O(pixels · classes · log T).

torchmetrics' ``MulticlassROC(thresholds=T)`` keeps the right state (a ``[T, C, 2, 2]`` confusion count per
threshold) but fills it by comparing every probability with every threshold: a ``[pixels, classes, T]`` tensor
per batch (0.38 s for one 4×32×32 test batch here, ~1 GB at 16×128×128 with T = 200; under deterministic
algorithms a ``[pixels, classes·T·4]`` mesh of 15-22 GB), and the module used to fill it twice (once for the
curve, once for ``MulticlassAUROC``). :class:`BinnedMulticlassROC` keeps torchmetrics' state, argument checks,
DDP sync and ``compute()``; only ``update`` differs: each probability is placed among the thresholds once
(``searchsorted``), the positions are counted per class (a sort, deterministic on every device, no bincount),
and the counts at or above each threshold follow by a cumulative sum. :meth:`auroc` is the area under that
same curve, so the test pass counts once. Equal to torchmetrics' counts and AUC exactly
(tests/test_metrics_seg.py).
"""
from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassROC
from torchmetrics.functional.classification.precision_recall_curve import (
    _multiclass_precision_recall_curve_format,
    _multiclass_precision_recall_curve_tensor_validation,
)


def _counts(index: torch.Tensor, size: int) -> torch.Tensor:
    """How often each of ``0 .. size-1`` occurs in ``index`` (sort + searchsorted: deterministic anywhere)."""
    edges = torch.searchsorted(index.flatten().sort().values, torch.arange(size + 1, device=index.device))
    return edges.diff()


def binned_confusion(probs: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """``[T, C, 2, 2]`` counts ``[t, c, truth, prediction]`` where prediction is ``probs[:, c] >= thresholds[t]``
    and truth is ``target == c`` (torchmetrics' binned multiclass PR/ROC state)."""
    n, c = probs.shape
    t = thresholds.numel()
    # bins[i, k] = number of thresholds <= probs[i, k]: the pixel is predicted positive at threshold j iff bin > j
    bins = torch.searchsorted(thresholds.contiguous(), probs.contiguous(), right=True)
    slot = bins + torch.arange(c, device=probs.device) * (t + 1)  # one run of T + 1 slots per class
    every = _counts(slot, c * (t + 1)).reshape(c, t + 1)
    positive = target.unsqueeze(1) == torch.arange(c, device=probs.device)
    hits = _counts(slot[positive], c * (t + 1)).reshape(c, t + 1)
    pos = positive.sum(0)  # [C]
    tp = pos.unsqueeze(1) - hits.cumsum(1)[:, :t]  # bins > j
    pp = n - every.cumsum(1)[:, :t]
    fp, fn = pp - tp, pos.unsqueeze(1) - tp
    tn = n - pos.unsqueeze(1) - fp
    return torch.stack([torch.stack([tn, fp], -1), torch.stack([fn, tp], -1)], -2).permute(1, 0, 2, 3).long()


class BinnedMulticlassROC(MulticlassROC):
    """torchmetrics' binned ``MulticlassROC`` with a counting ``update`` (module docstring) and :meth:`auroc`."""

    def __init__(self, num_classes: int, thresholds: int = 200, **kwargs) -> None:
        if not isinstance(thresholds, int) or thresholds < 2:
            raise ValueError(f"thresholds must be an int >= 2 (bins of the curve), got {thresholds!r}")
        if kwargs.get("average") is not None:
            raise ValueError("BinnedMulticlassROC is one-vs-rest per class (average=None)")
        super().__init__(num_classes, thresholds=thresholds, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        if self.validate_args:
            _multiclass_precision_recall_curve_tensor_validation(preds, target, self.num_classes, self.ignore_index)
        preds, target, _ = _multiclass_precision_recall_curve_format(
            preds, target, self.num_classes, self.thresholds, self.ignore_index, None)
        self.confmat += binned_confusion(preds, target, self.thresholds)

    def auroc(self) -> torch.Tensor:
        """Per-class area under the binned curve (trapezoids), as ``MulticlassAUROC(average=None)`` gives it,
        except for a class with no positive (or no negative) pixel: NaN, as Dice for an absent class, since the
        area is undefined there (torchmetrics gives 0.0, which would pull any mean over runs down)."""
        fpr, tpr, _ = self.compute()
        auc = torch.trapezoid(tpr, fpr, dim=-1)
        # [C, 2]: negative and positive pixels per class, over every rank: compute() gives this rank's own state
        # back after syncing, so a rank without a class's pixels read NaN where the others did not, and the
        # ranks then logged different keys (a review: with gloo, rank 0 NaN, rank 1 0.81)
        with self.sync_context():
            truth = self.confmat[0].sum(-1).clone()
        return torch.where((truth > 0).all(-1), auc, torch.full_like(auc, float("nan")))
