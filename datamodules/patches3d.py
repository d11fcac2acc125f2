"""3D patch-based segmentation (nnU-Net / paper 003 style) through MONAI transforms.

Volumes go through the same cached pipeline as the 2D path (:mod:`datamodules.volumes`: orientation,
spacing, HU window; ``image_size`` must stay null). Training draws ``samples_per_volume`` random patches
per volume with MONAI's ``RandCropByPosNegLabeld`` -- foreground-centred and background-centred patches
in the ratio ``pos:neg`` (paper 003 §3: "the sample rate of foreground patches and background patches
are equal", 96^3 patches) -- plus random flips; validation and test see whole volumes (batch size 1),
segmented by the module's Gaussian sliding window.
Batches: ``image`` float32 ``[B, C, H, W, D]``, ``mask`` ``[B, H, W, D]`` (int64 patches; whole volumes as the
smallest integer type that holds their labels, :func:`compact_labels`, widened on the device by the module),
``case_id``, ``spacing``.
The datamodule says how its items are batched (:mod:`datamodules.loaders`): training items (lists of
patches) through :func:`flatten_collate`, whole volumes one per batch, and ``train_eval_dataset()`` the
training cases as whole volumes (client validation splits carved from training cases, federation).
"""
from __future__ import annotations

import copy
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from datamodules.errors import DataError
from datamodules.segmentation import VolumeSegmentationDataModule
from datamodules.slices import SliceCase
from datamodules.transforms import reseed_from_torch


def _volume(case: SliceCase, label_fn) -> tuple[np.ndarray, np.ndarray]:
    """Cached ``[D, H, W]`` (``[D, C, H, W]``) slices -> channel-first ``[C, H, W, D]`` image, ``[H, W, D]`` mask."""
    img = np.asarray(case.image, dtype=np.float32)
    img = np.moveaxis(img, 0, -1)[None] if img.ndim == 3 else np.moveaxis(img, 0, -1)
    return np.ascontiguousarray(img), np.ascontiguousarray(np.moveaxis(label_fn(np.asarray(case.label)), 0, -1))


class PatchDataset(Dataset):
    """``samples_per_volume`` random patches per volume per item (a list the collate flattens)."""

    def __init__(self, cases: list[SliceCase], label_fn, patch_size: Sequence[int], samples: int,
                 pos: float, neg: float, fill: float, flip: bool) -> None:
        from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, SpatialPadd

        self.cases, self.label_fn = cases, label_fn
        self.case_ids = np.asarray([c.case_id for c in cases])
        self._summary: np.ndarray | None = None
        # patch centres come from "centres": the label, or only the classes a site annotates (restricted_to)
        ops = [SpatialPadd(["image"], patch_size, value=fill), SpatialPadd(["label", "centres"], patch_size, value=0),
               RandCropByPosNegLabeld(["image", "label"], "centres", patch_size, pos=pos, neg=neg,
                                      num_samples=samples)]
        if flip:
            ops += [RandFlipd(["image", "label"], prob=0.5, spatial_axis=a) for a in range(3)]
        self.transform = Compose(ops)
        self._seeded: tuple[int, int] | None = None
        self.centre_classes: tuple[int, ...] | None = None  # None: every foreground class may centre a patch

    def restricted_to(self, classes: Sequence[int]) -> "PatchDataset":
        """This dataset with foreground-centred patches drawn on ``classes`` only (a partially annotated site's
        view, shared transform and cases; a 3D review: centres were drawn from the full label, so a site that
        does not annotate the tumour still had patches centred on tumour voxels)."""
        view = copy.copy(self)
        view.centre_classes = tuple(sorted(int(c) for c in classes))
        return view

    @property
    def label_summary(self) -> np.ndarray:
        """Largest class in each case's label (the per-item summary partitioners read; computed once,
        without drawing patches)."""
        if self._summary is None:
            self._summary = np.asarray([int(np.max(self.label_fn(np.asarray(c.label)), initial=0))
                                        for c in self.cases], dtype=np.int64)
        return self._summary

    def set_random_state(self, seed: int) -> None:
        self.transform.set_random_state(seed=seed)
        self._seeded = (os.getpid(), torch.initial_seed())  # re-seeded from torch once that moves on

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> list[dict[str, Any]]:
        case = self.cases[i]
        img, lab = _volume(case, self.label_fn)
        self._seeded = reseed_from_torch(self.transform, self._seeded)
        centres = lab if self.centre_classes is None else np.where(np.isin(lab, self.centre_classes), lab, 0)
        out = self.transform({"image": torch.from_numpy(img), "label": torch.from_numpy(lab[None].astype(np.float32)),
                              "centres": torch.from_numpy(centres[None].astype(np.float32))})
        return [{"image": torch.as_tensor(o["image"]).float(), "mask": torch.as_tensor(o["label"])[0].long(),
                 "case_id": case.case_id, "spacing": torch.tensor(case.spacing, dtype=torch.float32)}
                for o in out]


class WholeVolumeDataset(Dataset):
    """One whole volume per item (validation, test, and the training cases as evaluated); ``pad_value`` (the
    training patches' padding, per item so it survives site concatenation) is what the sliding window pads with."""

    def __init__(self, cases: list[SliceCase], label_fn, pad_value: float) -> None:
        self.cases, self.label_fn, self.pad_value = cases, label_fn, float(pad_value)
        self.case_ids = np.asarray([c.case_id for c in cases])

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, i: int) -> dict[str, Any]:
        case = self.cases[i]
        img, lab = _volume(case, self.label_fn)
        return {"image": torch.from_numpy(img), "mask": torch.from_numpy(compact_labels(lab)),
                "case_id": case.case_id, "spacing": torch.tensor(case.spacing, dtype=torch.float32),
                "pad_value": torch.tensor(self.pad_value)}


def compact_labels(lab: np.ndarray) -> np.ndarray:
    """``lab`` as uint8 when every value fits (classes below 255 and the ignore label 255), else int32: a whole CT
    volume's mask as int64 was 8 of an evaluation item's 12 bytes a voxel in every loader worker and host-to-device
    copy; :meth:`lightning_modules.base.BaseModule.on_after_batch_transfer` widens it to int64 on the device."""
    fits = lab.size == 0 or (int(lab.min()) >= 0 and int(lab.max()) <= 255)
    return lab.astype(np.uint8 if fits else np.int32, copy=False)


def flatten_collate(batch: list[list[dict]]) -> dict[str, Any]:
    """Patches of several volumes -> one batch (every key, e.g. partial labels' ``label_mask``, kept)."""
    return default_collate([x for group in batch for x in group])


class PatchVolumeDataModule(VolumeSegmentationDataModule):
    """3D patches for training, whole volumes for val/test; every other argument as
    :class:`VolumeSegmentationDataModule` (``image_size`` is fixed to null: 3D nets see the grid as is).

    ``patch_size``: training patch (paper 003: 96^3; CPU configs use less); ``samples_per_volume``:
    patches drawn per volume per step; ``pos``/``neg``: foreground/background-centred patch ratio.
    ``batch_size`` counts volumes per step (so ``batch_size * samples_per_volume`` patches).
    """

    eval_batch_size = 1  # whole volumes of different sizes

    def __init__(self, root: str, patch_size: Sequence[int] = (96, 96, 96), samples_per_volume: int = 2,
                 pos: float = 1.0, neg: float = 1.0, class_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        if kwargs.get("image_size") is not None:
            raise DataError(f"data.image_size={kwargs['image_size']} must be null for 3D patches (use data.spacing)")
        kwargs["image_size"] = None
        kwargs.pop("train_slices", None)
        kwargs.pop("rotation_limit", None)
        super().__init__(root, class_names=class_names, **kwargs)
        if self.layout == "covid_stack":  # a review: every case (train and test) was the whole shared stack
            raise DataError("data.layout=covid_stack is one stack of unrelated 2D slices (tr_im.nii.gz), not volumes: "
                            "3D patches would train and test on the same stack; use a 2D net (data=covid_ct)")
        if len(patch_size) != 3 or min(patch_size) < 1:
            raise DataError(f"data.patch_size={list(patch_size)} must be three positive integers")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.samples_per_volume, self.pos, self.neg = int(samples_per_volume), float(pos), float(neg)
        if self.samples_per_volume < 1:  # a review: 0 was an IndexError in the first batch's collate
            raise DataError(f"data.samples_per_volume={samples_per_volume}: at least one patch per volume")
        if self.pos < 0 or self.neg < 0 or self.pos + self.neg <= 0:  # MONAI's ValueError was a traceback
            raise DataError(f"data.pos={pos}, data.neg={neg}: the foreground/background patch ratio needs "
                            f"non-negative values, not both 0")

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        cases = sorted(self.load_cases(), key=lambda c: c.case_id)
        self.splits = self.make_splits([c.case_id for c in cases])  # split_file, train_cases as in 2D
        by_id = {c.case_id: c for c in cases}
        fn = self.label_fn()
        self.train_dataset = PatchDataset([by_id[c] for c in self.splits["train"]], fn, self.patch_size,
                                          self.samples_per_volume, self.pos, self.neg, self.fill_value(),
                                          self.augment)
        self.train_dataset.set_random_state(self.seed)
        self.val_dataset, self.test_dataset = (WholeVolumeDataset([by_id[c] for c in self.splits[s]], fn,
                                                                  self.fill_value()) for s in ("val", "test"))

    def collate_fn(self, train: bool):
        return flatten_collate if train else None

    def train_eval_dataset(self) -> Dataset | None:
        """The training cases as whole volumes, index-aligned with the patch dataset (one item per case)."""
        if self.train_dataset is None:
            return None
        if getattr(self, "_train_whole", None) is None:
            self._train_whole = WholeVolumeDataset(self.train_dataset.cases, self.train_dataset.label_fn,
                                                   self.fill_value())
        return self._train_whole
