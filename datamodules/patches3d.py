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
import warnings
import zlib
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


#: foreground voxels kept per case (and set of centre classes) to centre foreground patches on, a uniform sample of
#: them (nnU-Net keeps 10,000 a class): drawing from it is drawing from the foreground, without a whole-volume pass;
#: at most 0.4 MB a case (int32) in each loader worker
FG_KEPT = 100_000
#: uniform voxel draws per patch from which background centres are taken (those of a centre class dropped)
BG_DRAWS = 64


class PatchDataset(Dataset):
    """``samples_per_volume`` random patches per volume per item (a list the collate flattens).

    Centres are MONAI's (``generate_pos_neg_label_crop_centers``, what ``RandCropByPosNegLabeld`` draws with):
    foreground-centred from each case's foreground voxels, found once per case and process and kept
    (:data:`FG_KEPT`), background-centred from uniform voxel draws that are background, so each centre is uniform
    over its kind, as before. Only the patches are read and copied from the memory-mapped cache. Until the
    fifty-fifth session every item copied the whole volume channel-first and let MONAI index every voxel: 4.1 s and
    +1,649 MiB peak RSS an item of a 500 x 350 x 350 volume (``python -m benchmarks.patch_item_memory``)."""

    def __init__(self, cases: list[SliceCase], label_fn, patch_size: Sequence[int], samples: int,
                 pos: float, neg: float, fill: float, flip: bool) -> None:
        from monai.transforms import Compose, RandFlipd, SpatialPadd

        self.cases, self.label_fn = cases, label_fn
        self.case_ids = np.asarray([c.case_id for c in cases])
        self._summary: np.ndarray | None = None
        self.patch_size, self.samples = tuple(int(p) for p in patch_size), int(samples)
        self.pos_ratio = pos / (pos + neg)
        # a volume smaller than the patch along an axis is padded there, as MONAI's pad-then-crop did
        ops = [SpatialPadd(["image"], self.patch_size, value=fill), SpatialPadd(["label"], self.patch_size, value=0)]
        if flip:
            ops += [RandFlipd(["image", "label"], prob=0.5, spatial_axis=a) for a in range(3)]
        self.transform = Compose(ops)  # its generator also draws the centres
        self._seeded: tuple[int, int] | None = None
        self.centre_classes: tuple[int, ...] | None = None  # None: every foreground class may centre a patch
        self._foreground: dict[tuple[int, tuple[int, ...] | None], np.ndarray] = {}  # shared by restricted views

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

    def _centres(self, labels: np.ndarray) -> np.ndarray:
        """Whether each label value may centre a foreground patch (MONAI's ``label > 0`` of the centres map)."""
        return labels > 0 if self.centre_classes is None else np.isin(labels, self.centre_classes)

    def foreground(self, i: int) -> np.ndarray:
        """Flat ``[H, W, D]`` indices (MONAI's order) of case ``i``'s centre voxels, at most :data:`FG_KEPT`, a
        sample fixed by the case id (the same in every process and run)."""
        key = (i, self.centre_classes)
        if key not in self._foreground:
            case = self.cases[i]
            d, h, w = np.nonzero(self._centres(self.label_fn(np.asarray(case.label))))
            if len(d) > FG_KEPT:
                rng = np.random.default_rng(zlib.crc32(str(case.case_id).encode()))
                keep = rng.choice(len(d), FG_KEPT, replace=False)
                d, h, w = d[keep], h[keep], w[keep]
            depth, height, width = case.label.shape
            flat = np.ravel_multi_index((h, w, d), (height, width, depth))  # int32 where it fits: half the memory
            self._foreground[key] = flat.astype(np.int32) if flat.size and depth * height * width < 2**31 else flat
        return self._foreground[key]

    def background(self, i: int, rng: np.random.RandomState) -> np.ndarray:
        """Flat ``[H, W, D]`` indices of background voxels drawn uniformly (a whole-volume search when the draws
        find none: a volume almost all foreground)."""
        label = self.cases[i].label
        depth, height, width = label.shape
        flat = rng.randint(0, depth * height * width, size=BG_DRAWS * self.samples)
        h, w, d = np.unravel_index(flat, (height, width, depth))
        found = flat[~self._centres(self.label_fn(np.asarray(label[d, h, w])))]
        if len(found):
            return found
        d, h, w = np.nonzero(~self._centres(self.label_fn(np.asarray(label))))
        return np.ravel_multi_index((h, w, d), (height, width, depth))

    def __getitem__(self, i: int) -> list[dict[str, Any]]:
        from monai.transforms.utils import generate_pos_neg_label_crop_centers

        case = self.cases[i]
        self._seeded = reseed_from_torch(self.transform, self._seeded)
        depth, height, width = case.label.shape
        shape = (height, width, depth)
        with warnings.catch_warnings():  # MONAI warns when a case has no foreground (background centres only)
            warnings.filterwarnings("ignore", message="Num foregrounds 0")
            centres = generate_pos_neg_label_crop_centers(
                self.patch_size, self.samples, self.pos_ratio, shape, self.foreground(i),
                self.background(i, self.transform.R), self.transform.R, allow_smaller=True)
        out = []
        for centre in centres:
            (h0, h1), (w0, w1), (d0, d1) = (_span(int(c), p, n) for c, p, n in zip(centre, self.patch_size, shape))
            img = np.moveaxis(np.asarray(case.image[d0:d1, ..., h0:h1, w0:w1], dtype=np.float32), 0, -1)
            img = img[None] if img.ndim == 3 else img
            lab = np.moveaxis(self.label_fn(np.asarray(case.label[d0:d1, h0:h1, w0:w1])), 0, -1)
            o = self.transform({"image": torch.from_numpy(np.ascontiguousarray(img)),
                                "label": torch.from_numpy(np.ascontiguousarray(lab)[None])})
            out.append({"image": torch.as_tensor(o["image"]).float(), "mask": torch.as_tensor(o["label"])[0].long(),
                        "case_id": case.case_id, "spacing": torch.tensor(case.spacing, dtype=torch.float32)})
        return out


def _span(centre: int, patch: int, size: int) -> tuple[int, int]:
    """The patch's ``[start, end)`` along an axis of ``size`` voxels (the whole axis when it is shorter than the
    patch, padded afterwards), as MONAI's ``SpatialCrop(roi_center, roi_size)`` cuts it."""
    if size <= patch:
        return 0, size
    start = min(max(centre - patch // 2, 0), size - patch)
    return start, start + patch


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
        if kwargs.get("augmentation") is not None:  # 2D albumentations; the 3D pipeline is MONAI's
            raise DataError("data.augmentation is a 2D slice pipeline (albumentations); 3D patches are augmented by "
                            "MONAI's flips and rotations (data.augment)")
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
