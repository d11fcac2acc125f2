"""Partial annotation: each client labels a subset of classes (SegViz, paper 004; Wang et al., paper 003).

Two ways to simulate it on fully labelled data (``federation.unannotated``):

* ``ignore``: a client's unannotated classes become ``ignore_index`` in its targets (:func:`mask_unannotated`)
  and the loss skips those pixels. This knows *where* the unannotated organs are, which a real partially
  annotated site does not: an upper bound.
* ``background``: they become background, as in real partially annotated data, and the training items carry
  ``label_mask`` so the segmentation loss merges the unannotated classes into background (the marginal loss,
  ``lightning_modules/losses/marginal.py``). On real partially labelled data this is the sound choice for
  separate organs (SegViz's liver / spleen / pancreas / kidney).

Not covered: nested classes. A real site that labels only the organ of an organ-with-tumour marks the tumour
voxels as *organ*, not background; neither mode says so (``background`` merges the tumour into background).
Paper 003's organ-only institution (C1) is healthy, with no tumour voxels at all; the synthetic site 1 of
``fed_pancreas`` has tumours (the phantoms are shared with site 2), which is an artefact of the simulation, and
``ignore`` (its default) leaves those voxels out of the loss rather than calling them anything.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["check_partial_spec", "partial_label_sets", "mask_unannotated", "label_mask", "PartialLabels"]


def unknown_client_key(keys: Iterable[Any], client_ids: Sequence[str], key: str) -> str | None:
    """The one-line error for the first of ``keys`` (a per-client setting's keys under ``key``) that is no
    client id, or None: the one check of ``federation.partial_labels`` and ``federation.client_module``."""
    ids = [str(c) for c in client_ids]
    unknown = [str(k) for k in keys if str(k) not in ids]
    if not unknown:
        return None
    return f"{key} names {unknown[0]!r}, which is no client of this federation (clients: {', '.join(ids[:8])})"


def check_partial_spec(spec: Any, client_ids: Sequence[str] | None, num_classes: int | None,
                       key: str = "federation.partial_labels") -> dict[str, list[int]]:
    """An explicit annotation spec checked, the one check of the simulation, a Flower node and
    :func:`partial_label_sets`: ``{client id: annotated class ids}``, keys as strings (a YAML ``0:`` is the
    client ``"0"``); a client not named is fully labelled. A key that is no client (``client_ids``; None: not
    known, a real site's node), a class outside ``[0, num_classes)`` or a class id that is no whole number is
    one ``ValueError`` naming ``key``: each was once silently taken (a review: paper 004's partial-label runs
    quietly became fully labelled ones; 1.7 and True were taken as class 1)."""
    spec = spec or {}
    if not isinstance(spec, Mapping):
        raise ValueError(f"{key}={spec!r} must map client ids to lists of class ids")
    out: dict[str, list[int]] = {}
    for k, classes in spec.items():
        cid = str(k)
        unknown = None if client_ids is None else unknown_client_key([cid], client_ids, key)
        if unknown:
            raise ValueError(unknown)
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
            raise ValueError(f"{key}.{cid}={classes!r} must be a list of class ids")
        given = list(classes)
        ids = [int(c) for c in given if isinstance(c, (int, np.integer)) and not isinstance(c, bool)]
        if len(ids) != len(given):
            raise ValueError(f"{key}.{cid}={given!r} must be a list of class ids (whole numbers)")
        bad = [c for c in ids if c < 0 or (num_classes is not None and c >= num_classes)]
        if bad:
            raise ValueError(f"{key}.{cid} names class {bad[0]}, outside the data's {num_classes} classes "
                             f"[0, {num_classes})")
        out[cid] = ids
    return out


def partial_label_sets(num_classes: int, clients: int | Sequence[str], spec: Mapping[str, Iterable[int]] | None = None,
                       seed: int = 0, per_client: int | None = None, background: int = 0) -> dict[str, frozenset[int]]:
    """Annotated classes per client (background always included). ``spec`` gives them explicitly, checked and
    read as the federation reads ``federation.partial_labels`` (:func:`check_partial_spec`: a client not named
    annotates every class); otherwise foreground classes are shuffled and dealt round-robin (every class
    annotated by at least one client when there are enough clients), topped up at random to ``per_client``."""
    ids = [str(i) for i in range(clients)] if isinstance(clients, int) else [str(c) for c in clients]
    if spec is not None:
        given = check_partial_spec(spec, ids, num_classes, key="partial-label spec")
        every = range(num_classes)
        return {c: frozenset(given.get(c, every)) | {background} for c in ids}
    rng = np.random.default_rng(seed)
    fg = rng.permutation([c for c in range(num_classes) if c != background])
    sets = [{int(fg[j]) for j in range(i, len(fg), len(ids))} if i < len(fg) else {int(fg[i % len(fg)])}
            for i in range(len(ids))]
    for s in sets:
        extra = [int(c) for c in rng.permutation(fg) if c not in s]
        s.update(extra[: max(0, (per_client or 0) - len(s))])
    return {c: frozenset(s) | {background} for c, s in zip(ids, sets)}


def _fits(info: Any, value: int) -> bool:
    """Whether an integer dtype (its ``iinfo``) holds ``value``."""
    return int(info.min) <= value <= int(info.max)


def mask_unannotated(target: Tensor | np.ndarray, annotated: Iterable[int], ignore_index: int = 255,
                     background: int = 0) -> Tensor | np.ndarray:
    """Simulate partial labels on a fully labelled mask: pixels of classes the client does *not*
    annotate become ``ignore_index`` (unknown: excluded from the loss), **not** background; background
    and annotated classes are kept. For real partially annotated data, where unannotated organs are
    already labelled background, use :class:`PartialLabels` with ``unannotated="background"`` instead."""
    keep = sorted(set(int(a) for a in annotated) | {background, ignore_index})
    if isinstance(target, Tensor):
        if target.dtype != torch.bool and not target.is_floating_point() and \
                not _fits(torch.iinfo(target.dtype), ignore_index):
            target = target.long()  # a review: a uint8 volume mask turned ignore_index=-100 into 156
        known = torch.isin(target, torch.tensor(keep, dtype=target.dtype, device=target.device))
        return torch.where(known, target, torch.full_like(target, ignore_index))
    target = np.asarray(target)
    if target.dtype.kind in "iu" and not _fits(np.iinfo(target.dtype), ignore_index):
        target = target.astype(np.int64)
    return np.where(np.isin(target, keep), target, np.asarray(ignore_index, dtype=target.dtype))


def label_mask(annotated: Iterable[int], num_classes: int) -> Tensor:
    """``bool[K]`` mask of annotated classes (the batch key ``label_mask`` of docs/architecture.md)."""
    m = torch.zeros(num_classes, dtype=torch.bool)
    m[list(annotated)] = True
    return m


class PartialLabels:
    """Per-site partial annotation as a training-item transform (SegViz, paper 004), the module docstring's
    ``unannotated`` mode: ``ignore`` sets the unannotated classes' pixels to ``ignore_index``;
    ``background`` sets them to background and adds ``label_mask=bool[K]`` (the loss then marginalises).
    3D training items (lists of patches) are handled patch by patch. Picklable (a class, not a closure) so
    loader workers and Ray carry it; given to :class:`datamodules.subset.SubsetDataModule` as ``train_item_fn``.
    ``for_validation``: the same labels for the site's validation split, plus ``annotated=bool[K]``, so the
    site picks its best round and stops early by the classes it labels, as a real site must (a review: its
    validation Dice counted the organs it does not annotate, from labels it would not have)."""

    MODES = ("ignore", "background")

    def __init__(self, annotated: Iterable[int], num_classes: int, ignore_index: int = 255,
                 background: int = 0, unannotated: str = "ignore", for_validation: bool = False) -> None:
        if unannotated not in self.MODES:
            raise ValueError(f"federation.unannotated={unannotated!r}: expected one of {', '.join(self.MODES)}")
        self.annotated = sorted({int(a) for a in annotated} | {int(background)})  # background always known
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.background, self.unannotated = int(background), unannotated
        self.for_validation = bool(for_validation)

    @property
    def foreground_classes(self) -> list[int]:
        """The annotated classes other than background: where a 3D site's foreground patches may be centred
        (:meth:`datamodules.patches3d.PatchDataset.restricted_to`)."""
        return [c for c in self.annotated if c != self.background]

    def __call__(self, item: dict | list[dict]) -> dict | list[dict]:
        if isinstance(item, list):  # 3D training items: the patches of one volume
            return [self(x) for x in item]
        out = self._masked(item)
        if self.for_validation:  # the site scores the classes it labels only (SegmentationModule._evaluate)
            out["annotated"] = label_mask(self.annotated, self.num_classes)
        return out

    def _masked(self, item: dict) -> dict:
        out = dict(item)
        if self.unannotated == "ignore":
            out["mask"] = mask_unannotated(item["mask"], self.annotated, self.ignore_index)
            return out
        m = item["mask"]
        hidden = (mask_unannotated(m, self.annotated, self.ignore_index) == self.ignore_index) & (m != self.ignore_index)
        out["mask"] = (torch.where(hidden, torch.full_like(m, self.background), m) if isinstance(m, Tensor)
                       else np.where(hidden, np.asarray(self.background, dtype=m.dtype), m))
        out["label_mask"] = label_mask(self.annotated, self.num_classes)
        return out
