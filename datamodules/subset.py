"""A client's view of a set-up base datamodule: index lists over its datasets (federated clients).

:class:`SubsetDataModule` is an ordinary LightningDataModule (any Trainer can fit / validate / test it)
whose datasets are index subsets of a *base* datamodule that was built and ``setup()`` once:

* train = the client's partition of the base train set, plus the shared-pool samples the server sent
  (paper 000 §4.1 step 8-9: "the client will share data and local data to train together");
* val   = a split carved from the client's local data (:func:`carve_val`), never from shared samples
  (read from the base's ``train_eval_dataset()``: whole volumes where training draws 3D patches);
* test  = a subset of the base (pooled) test set, or the whole of it.

Items can be post-processed per client (``item_fn``), e.g. partial labels for SegViz-style sites:
:class:`federation.core.partial_labels.PartialLabels` hides the classes a site does not annotate (mask ->
ignore index, plus the batch key ``label_mask``). Only indices are kept: no data is copied, so a client costs a few arrays.
Loaders batch as the base does (its ``collate_fn`` and ``eval_batch_size``, :mod:`datamodules.loaders`).

Helpers :func:`sample_labels` / :func:`sample_groups` give the per-sample label summary the
partitioners need: ``targets`` for classification; for segmentation the largest class present in the
slice mask (label summary) and the site (``groups``) or case id of every item.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from datamodules.loaders import SplitLoadersMixin, train_eval_dataset
from datamodules.slices import largest_class

__all__ = ["IndexSubset", "SubsetDataModule", "carve_val", "sample_labels", "sample_groups",
           "sample_cases"]


def val_carved_from_train(base: Any, val_indices: Sequence[int] | np.ndarray, train_indices: Sequence[int] | np.ndarray,
                          item_fn: Callable[[dict], dict] | None = None) -> Dataset:
    """A validation split carved from ``base``'s training items: every slice of those cases where the base can
    give them (``every_slice_of``: the training items keep only ``train_slices`` of the empty slices), else the
    training items themselves as evaluated (``train_eval_dataset``: whole volumes for 3D patches)."""
    fn = getattr(base, "every_slice_of", None)
    full = fn(val_indices, train_indices) if callable(fn) else None
    if full is None:
        return IndexSubset(train_eval_dataset(base), val_indices, item_fn)
    return IndexSubset(full, np.arange(len(full)), item_fn)


class IndexSubset(Dataset):
    """``dataset[indices[i]]``, optionally through ``item_fn``; ``targets``/``groups`` follow the subset."""

    def __init__(self, dataset: Dataset, indices: Sequence[int] | np.ndarray,
                 item_fn: Callable[[dict], dict] | None = None) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.item_fn = item_fn
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(dataset)):
            raise IndexError(f"subset indices span [{self.indices.min()}, {self.indices.max()}] "
                             f"outside a dataset of {len(dataset)}")
        for attr in ("targets", "groups"):
            values = getattr(dataset, attr, None)
            if values is not None:
                setattr(self, attr, np.asarray(values)[self.indices])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[int(self.indices[i])]
        return self.item_fn(item) if self.item_fn is not None else item


def sample_cases(dataset: Dataset) -> np.ndarray | None:
    """Case id per item: ``dataset.case_ids`` when present, derived for slice datasets
    (``SliceDataset``: ``items`` + ``cases``), else None (classification: every item is its own case)."""
    ids = getattr(dataset, "case_ids", None)
    if ids is not None and not callable(ids):
        return np.asarray(ids)
    items, cases = getattr(dataset, "items", None), getattr(dataset, "cases", None)
    if items is None or cases is None:
        return None
    return np.asarray([cases[c].case_id for c, _ in items])


def sample_groups(dataset: Dataset) -> np.ndarray | None:
    """Group (site) of every item: ``dataset.groups`` when present, else the case id for slice
    datasets, else None (classification: an image group, e.g. a COVID-CT figure's crops, is no site; a review
    found ``by_site`` making one client per figure once image folders carried their groups as case ids)."""
    groups = getattr(dataset, "groups", None)
    if groups is not None:
        return np.asarray(groups)
    return None if getattr(dataset, "targets", None) is not None else sample_cases(dataset)


def sample_labels(dataset: Dataset) -> np.ndarray:
    """Per-sample label for partitioning: ``targets`` (classification), or the largest class present
    in each item's mask (segmentation label summary: 0 = empty slice, 2 = slice with tumour, ...).
    Multi-label targets ``[N, L]``: a sample's first positive label, and ``L`` (a bucket of its own, "no
    finding") for a sample with none; a review: ``argmax`` counted those as label 0, so ChestMNIST's
    no-finding majority was partitioned and reported as atelectasis."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        t = np.asarray(targets)
        return np.where(t.any(1), t.argmax(1), t.shape[1]) if t.ndim == 2 else t
    summary = getattr(dataset, "label_summary", None)  # 3D patch datasets: per case, without drawing patches
    if summary is not None:
        return np.asarray(summary, dtype=np.int64)
    masks = (dataset[i]["mask"] for i in range(len(dataset)))
    return np.asarray([largest_class(m.numpy() if isinstance(m, torch.Tensor) else m) for m in masks], dtype=np.int64)


def carve_val(indices: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's local indices into ``(train, val)``; ``val`` holds about ``fraction`` of them.

    With ``groups`` (case id per item of the base dataset) whole cases go to val, so per-case
    segmentation metrics stay meaningful; at least one item (one case) stays in train. Seeded.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if fraction <= 0 or len(idx) < 2:
        return np.sort(idx), np.empty(0, np.int64)
    rng = np.random.default_rng(seed)
    if groups is not None:
        g = np.asarray(groups)[idx]
        uniq = rng.permutation(np.unique(g))
        if len(uniq) >= 2:
            n_val = min(len(uniq) - 1, max(1, int(round(fraction * len(uniq)))))
            is_val = np.isin(g, uniq[:n_val])
            return np.sort(idx[~is_val]), np.sort(idx[is_val])
    n_val = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
    perm = rng.permutation(idx)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _site_view(dataset: Dataset, item_fn: Callable | None) -> Dataset:
    """``dataset`` as the site sees it before its items are drawn: a 3D patch dataset draws foreground-centred
    patches on the classes the site annotates (``item_fn.foreground_classes``, partial labels) where it can
    (``restricted_to``); anything else is returned as is."""
    classes = getattr(item_fn, "foreground_classes", None)
    restrict = getattr(dataset, "restricted_to", None)
    return restrict(classes) if classes is not None and callable(restrict) else dataset


class SubsetDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Datamodule over index subsets of a set-up ``base`` datamodule (see the module docstring).

    Args:
        base: a datamodule after ``setup()`` (exposes ``train_dataset``/``val_dataset``/``test_dataset``).
        train_indices: the client's local training indices into ``base.train_dataset``.
        val_indices: validation indices into ``base.train_dataset`` (carved from local data) or, with
            ``val_from="val"``, into ``base.val_dataset`` (the server's held-out set).
        shared_indices: shared-pool indices into ``base.train_dataset`` added to training only.
        test_indices: indices into ``base.test_dataset``; None = the whole pooled test set.
        train_item_fn: per-item transform of the training items (e.g. federation's ``PartialLabels``);
        val_item_fn: of the validation items (a partially annotated site validates on its own labels).
        seed: seeds the training shuffle (a fresh generator per ``train_dataloader`` call).
    """

    def __init__(self, base: pl.LightningDataModule, train_indices: Sequence[int] | np.ndarray,
                 val_indices: Sequence[int] | np.ndarray | None = None,
                 shared_indices: Sequence[int] | np.ndarray | None = None,
                 test_indices: Sequence[int] | np.ndarray | None = None, *,
                 val_from: str = "train", batch_size: int | None = None, num_workers: int | None = None,
                 seed: int = 0, train_item_fn: Callable[[dict], dict] | None = None,
                 val_item_fn: Callable[[dict], dict] | None = None) -> None:
        super().__init__()
        if getattr(base, "train_dataset", None) is None:
            raise RuntimeError("SubsetDataModule needs a base datamodule after setup()")
        self.base = base
        local = np.asarray(train_indices, dtype=np.int64)
        shared = np.asarray([] if shared_indices is None else shared_indices, dtype=np.int64)
        overlap = np.intersect1d(local, shared)
        if len(overlap):
            raise ValueError(f"{len(overlap)} shared indices are also local training indices")
        self.num_local, self.num_shared = len(local), len(shared)
        self.train_indices = np.concatenate([local, shared])
        self.batch_size = int(batch_size or getattr(base, "batch_size", 32))
        # the base's data.num_workers unless given (a profile: federated clients always loaded in the main process)
        self.num_workers = int(getattr(base, "num_workers", 0) or 0) if num_workers is None else int(num_workers)
        self.seed = int(seed)
        for attr in ("in_channels", "num_classes", "class_names", "task", "patch_size"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))
        self.train_dataset = IndexSubset(_site_view(base.train_dataset, train_item_fn), self.train_indices, train_item_fn)
        self.val_dataset = None
        if val_indices is not None and len(val_indices):
            self.val_dataset = (val_carved_from_train(base, val_indices, self.train_indices, val_item_fn)
                                if val_from == "train" else IndexSubset(base.val_dataset, val_indices, val_item_fn))
        self.test_dataset = base.test_dataset if test_indices is None else IndexSubset(base.test_dataset, test_indices)
        self.eval_batch_size = getattr(base, "eval_batch_size", None)

    def setup(self, stage: str | None = None) -> None:  # everything is built in __init__
        pass

    def val_dataloader(self) -> Any:
        """No loader where the client has no validation split (``federation.client_val_fraction=0``): a
        ``fast_dev_run`` validated anyway and every client failed with "setup() must run" (found this session)."""
        return [] if self.val_dataset is None else super().val_dataloader()

    def collate_fn(self, train: bool):
        fn = getattr(self.base, "collate_fn", None)
        return fn(train) if callable(fn) else None

    def train_eval_dataset(self) -> Dataset:
        return IndexSubset(train_eval_dataset(self.base), self.train_indices)
