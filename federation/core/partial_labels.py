"""Partial annotation: each client labels a subset of classes (SegViz, paper 004; Wang et al., paper 003).

A client's unannotated classes are set to ``ignore_index`` in its targets (:func:`mask_unannotated`) so
the loss ignores them, or its logits are merged into background (:func:`merge_unannotated_to_background`,
the marginal-loss reading).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["partial_label_sets", "mask_unannotated", "label_mask", "merge_unannotated_to_background", "PartialLabels"]


def partial_label_sets(num_classes: int, clients: int | Sequence[str], spec: Mapping[str, Iterable[int]] | None = None,
                       seed: int = 0, per_client: int | None = None, background: int = 0) -> dict[str, frozenset[int]]:
    """Annotated classes per client (background always included). ``spec`` gives them explicitly;
    otherwise foreground classes are shuffled and dealt round-robin (every class annotated by at
    least one client when there are enough clients), topped up at random to ``per_client``."""
    ids = [str(i) for i in range(clients)] if isinstance(clients, int) else [str(c) for c in clients]
    if spec is not None:
        out = {str(c): frozenset(int(x) for x in v) | {background} for c, v in spec.items()}
        bad = [c for c, v in out.items() if not all(0 <= x < num_classes for x in v)]
        if bad or set(out) != set(ids):
            raise ValueError(f"bad partial-label spec for clients {bad or sorted(set(out) ^ set(ids))}")
        return {c: out[c] for c in ids}
    rng = np.random.default_rng(seed)
    fg = rng.permutation([c for c in range(num_classes) if c != background])
    sets = [{int(fg[j]) for j in range(i, len(fg), len(ids))} if i < len(fg) else {int(fg[i % len(fg)])}
            for i in range(len(ids))]
    for s in sets:
        extra = [int(c) for c in rng.permutation(fg) if c not in s]
        s.update(extra[: max(0, (per_client or 0) - len(s))])
    return {c: frozenset(s) | {background} for c, s in zip(ids, sets)}


def mask_unannotated(target: Tensor | np.ndarray, annotated: Iterable[int], ignore_index: int = 255,
                     background: int = 0) -> Tensor | np.ndarray:
    """Simulate partial labels on a fully labelled mask: pixels of classes the client does *not*
    annotate become ``ignore_index`` (unknown: excluded from the loss), **not** background; background
    and annotated classes are kept. For real partially annotated data, where unannotated organs are
    already labelled background, use :func:`merge_unannotated_to_background` instead."""
    keep = sorted(set(int(a) for a in annotated) | {background, ignore_index})
    if isinstance(target, Tensor):
        known = torch.isin(target, torch.tensor(keep, dtype=target.dtype, device=target.device))
        return torch.where(known, target, torch.full_like(target, ignore_index))
    target = np.asarray(target)
    return np.where(np.isin(target, keep), target, np.asarray(ignore_index, dtype=target.dtype))


def label_mask(annotated: Iterable[int], num_classes: int) -> Tensor:
    """``bool[K]`` mask of annotated classes (the batch key ``label_mask`` of docs/architecture.md)."""
    m = torch.zeros(num_classes, dtype=torch.bool)
    m[list(annotated)] = True
    return m


def merge_unannotated_to_background(logits: Tensor, label_mask: Tensor, background: int = 0) -> Tensor:
    """Marginal log-probabilities for partially annotated data (Shi et al. 2021, marginal loss):
    softmax over all K classes, then the probability of every class the sample's site does not
    annotate is merged into background (log-sum-exp) and the class itself gets log p = -inf.
    ``logits``: [B, K, ...]; ``label_mask``: bool [B, K] or [K]. Feed the result to ``F.nll_loss``."""
    logp = logits.log_softmax(1)
    lm = label_mask.bool().to(logits.device).expand(logits.shape[0], -1).clone()
    lm[:, background] = True
    unann = (~lm).view(*lm.shape, *([1] * (logits.dim() - 2))).expand_as(logp)
    to_bg = unann.clone()
    to_bg[:, background] = True
    merged = torch.logsumexp(logp.masked_fill(~to_bg, float("-inf")), dim=1)
    out = logp.masked_fill(unann, float("-inf"))
    return torch.cat([out[:, :background], merged.unsqueeze(1), out[:, background + 1:]], dim=1)


class PartialLabels:
    """Per-site partial annotation as a training-item transform (SegViz, paper 004): mask pixels of
    classes the site does not annotate become ``ignore_index`` (:func:`mask_unannotated`) and the item
    gets ``label_mask=bool[K]`` (each patch of a 3D training item alike). Picklable (a class, not a closure) so loader workers and Ray carry it;
    given to :class:`datamodules.subset.SubsetDataModule` as ``train_item_fn``."""

    def __init__(self, annotated: Iterable[int], num_classes: int, ignore_index: int = 255,
                 background: int = 0) -> None:
        self.annotated = sorted({int(a) for a in annotated} | {int(background)})  # background always known
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)

    def __call__(self, item: dict | list[dict]) -> dict | list[dict]:
        if isinstance(item, list):  # 3D training items: the patches of one volume
            return [self(x) for x in item]
        out = dict(item)
        out["mask"] = mask_unannotated(item["mask"], self.annotated, self.ignore_index)
        out["label_mask"] = label_mask(self.annotated, self.num_classes)
        return out
