"""The slice-based segmentation core shared by 3D volumes and 2D folders: cases of slices, the target
mapping, one dataset class over cached or in-memory slices, and :class:`SliceDataModule` (patient-level
splits, training-slice selection, augmentation, loaders). Subclasses only say how to get the cases
(:meth:`SliceDataModule.load_cases`): :class:`datamodules.segmentation.VolumeSegmentationDataModule`
(NIfTI volumes), :class:`datamodules.folder2d.FolderSegmentationDataModule` (2D image folders).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset

from datamodules.augmentation_checks import probe_augmentation
from datamodules.collate import PadCollate
from datamodules.errors import DataError
from datamodules.loaders import SplitLoadersMixin
from datamodules.splits import patient_split, read_split_file
from datamodules.transforms import SliceAugment, build_augmentation

log = logging.getLogger(__name__)

__all__ = ["TARGETS", "SliceCase", "TargetMap", "SliceDataset", "SliceDataModule"]

TARGETS = ("organ", "tumor", "multiclass")


@dataclass
class SliceCase:
    """The slices of one case: ``image[p]`` / ``label[p]`` are 2D arrays for ``p`` in ``positions``
    (an ``[D, H, W]`` array, possibly memory-mapped, or a list of 2D arrays); ``slice_indices`` are
    the slice numbers reported in batches, in the same order."""

    case_id: str
    image: Sequence[np.ndarray]
    label: Sequence[np.ndarray]
    positions: list[int]
    slice_indices: list[int]
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: the slices are one volume's own (``slice_indices`` their z), so 3D surface metrics may stack them; a folder
    #: of slices sampled from volumes (gaps, flipped copies, no z spacing) is not (scored slice by slice)
    stacks: bool = True


class TargetMap:
    """Label volume -> training target: ``organ`` = label >= 1 (liver incl. tumour), ``tumor`` =
    label == 2, ``multiclass`` = labels unchanged. A class (not a lambda) so workers can pickle it."""

    def __init__(self, target: str) -> None:
        if target not in TARGETS:
            raise DataError(f"data.target={target!r} is not one of {list(TARGETS)}")
        self.target = target

    def __call__(self, label: np.ndarray) -> np.ndarray:
        if self.target == "organ":
            return (label >= 1).astype(np.uint8)
        if self.target == "tumor":
            return (label == 2).astype(np.uint8)
        return label.astype(np.uint8)


def largest_class(mask: np.ndarray) -> int:
    """The largest class in a mask, the ignore value 255 left out (0 for an empty or all-ignored mask): a
    segmentation item's label for partitioning (0 = empty slice, 2 = slice with tumour, ...)."""
    mask = np.asarray(mask)
    valid = mask[mask != 255]
    return int(valid.max()) if valid.size else 0


class SliceDataset(Dataset):
    """Map-style dataset over ``(case index, position index)`` items; yields
    ``dict(image=float32[1,H,W], mask=int64[H,W], case_id=str, slice_index=int, spacing, stacks=bool)``."""

    def __init__(self, cases: list[SliceCase], items: list[tuple[int, int]],
                 label_fn: Callable[[np.ndarray], np.ndarray],
                 augment: SliceAugment | None = None) -> None:
        self.cases, self.items, self.label_fn, self.augment = cases, items, label_fn, augment
        self._summary: np.ndarray | None = None

    @property
    def label_summary(self) -> np.ndarray:
        """Largest class in each item's mask (the ignore value 255 left out), from the stored labels: what the
        partitioners and the partition report read. A review: read through ``__getitem__`` they went through
        the training augmentation (a rotation can drop a small lesion) and two passes with one seed disagreed."""
        if self._summary is None:
            self._summary = np.asarray([largest_class(self.label_fn(np.asarray(self.cases[c].label[
                self.cases[c].positions[k]]))) for c, k in self.items], dtype=np.int64)
        return self._summary

    def __len__(self) -> int:
        return len(self.items)

    def raw(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``i``'s slice and mask as stored, before augmentation."""
        c, k = self.items[i]
        case = self.cases[c]
        p = case.positions[k]
        return np.array(case.image[p], dtype=np.float32), self.label_fn(np.asarray(case.label[p]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        image, mask = self.raw(i)
        c, k = self.items[i]
        case = self.cases[c]
        if self.augment is not None:
            image, mask = self.augment(image, mask)
        image = torch.from_numpy(np.ascontiguousarray(image))
        return {"image": image[None] if image.ndim == 2 else image,
                "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
                "case_id": case.case_id, "slice_index": int(case.slice_indices[k]),
                "spacing": torch.tensor(case.spacing, dtype=torch.float32), "stacks": bool(case.stacks)}


class SliceDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Shared split/selection/loader logic for slice-based segmentation.

    ``train_slices``: ``"all"``, ``"foreground"`` (slices with any label > 0, whatever the target, so
    a tumour net also sees tumour-free organ) or a float f: all foreground slices plus a seeded random
    fraction f of the empty ones (default 0.25: enough empty slices to learn "nothing here" for
    per-volume metrics, few enough not to drown the organ). Val/test always use every slice, cases in
    sorted order and slices in order, with shuffle off, so per-case 3D metrics can be reassembled.
    ``train_cases``: null (every training case) or N, a seeded subset of the training split (val/test kept).
    """

    in_channels = 1

    def __init__(self, val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                 batch_size: int = 16, num_workers: int = 0, augment: bool = True,
                 rotation_limit: float = 15.0, train_slices: str | float = 0.25,
                 train_cases: int | None = None, augmentation: Sequence[Any] | None = None) -> None:
        super().__init__()
        if not (train_slices in ("all", "foreground") or isinstance(train_slices, (int, float))):
            raise DataError(f"data.train_slices={train_slices!r} must be 'all', 'foreground' or a float")
        if not isinstance(train_slices, str) and not 0.0 <= float(train_slices) <= 1.0:  # -0.25 kept 75 % (a review)
            raise DataError(f"data.train_slices={train_slices!r}: a fraction of the empty slices must lie in [0, 1]")
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        self.augment, self.rotation_limit, self.train_slices = augment, rotation_limit, train_slices
        self.augmentation = None if augmentation is None else list(augmentation)
        if train_cases is not None and int(train_cases) < 1:
            raise DataError(f"data.train_cases={train_cases!r} must be a positive number of cases or null")
        self.train_cases = None if train_cases is None else int(train_cases)
        self.splits: dict[str, list[str]] | None = None
        self.train_dataset = self.val_dataset = self.test_dataset = None

    # --- hooks for subclasses -------------------------------------------------------------------
    def load_cases(self) -> list[SliceCase]:
        raise NotImplementedError

    def label_fn(self) -> Callable[[np.ndarray], np.ndarray]:
        return TargetMap("multiclass")

    def fill_value(self) -> float:
        return 0.0

    # --- shared logic ---------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        cases = sorted(self.load_cases(), key=lambda c: c.case_id)
        self.splits = self.make_splits([c.case_id for c in cases])
        pos = {c.case_id: i for i, c in enumerate(cases)}
        fn = self.label_fn()
        aug = build_augmentation(self.augment, self.rotation_limit, self.fill_value(), self.augmentation)
        self.train_dataset = SliceDataset(cases, self._train_items(cases, pos), fn, aug)
        if self.augmentation is not None:
            self._probe_augmentation(aug)
        self.val_dataset, self.test_dataset = (
            SliceDataset(cases, [(pos[cid], k) for cid in self.splits[s]
                                 for k in range(len(cases[pos[cid]].positions))], fn)
            for s in ("val", "test"))

    def _probe_augmentation(self, aug: SliceAugment | None) -> None:
        """``data.augmentation`` tried on a training slice with labels (:func:`probe_augmentation`); a pipeline
        that ``augment: false`` turns off is said so."""
        if aug is None:
            log.warning("data.augmentation is not used: data.augment=false")
            return
        train = self.train_dataset
        for i in range(min(len(train), 64)):
            image, mask = train.raw(i)
            if np.any(mask > 0) or i == min(len(train), 64) - 1:
                probe_augmentation(aug, image, mask)
                return

    def train_eval_dataset(self) -> SliceDataset | None:
        """The training slices as evaluated (no augmentation), index-aligned with ``train_dataset``: a
        federated client's validation split is carved from them (a walkthrough: it was scored on randomly
        augmented slices, so client/local validation differed between runs and transports)."""
        if self.train_dataset is None:
            return None
        if getattr(self, "_train_eval", None) is None:
            t = self.train_dataset
            self._train_eval = SliceDataset(t.cases, t.items, t.label_fn)
        return self._train_eval

    def every_slice_of(self, val_items: Sequence[int], train_items: Sequence[int]) -> SliceDataset | None:
        """Every slice of the training cases that the training items ``val_items`` belong to, as evaluated (no
        augmentation): a federated client's validation split carved from its training items by whole cases.
        ``train_slices`` keeps a fraction of the empty slices for training only; validation scores every slice
        (a review: a client's validation case had 9 of its 20 slices, so false positives on the dropped empty
        slices never counted). None where it cannot apply: items that are no slices (3D patches), or a val case
        that also trains (a client with one volume, whose slices are split)."""
        t = self.train_dataset
        if not isinstance(t, SliceDataset) or not len(val_items):
            return None
        cases = {t.items[int(i)][0] for i in val_items}
        if cases & {t.items[int(i)][0] for i in train_items}:
            return None
        return SliceDataset(t.cases, [(c, k) for c in sorted(cases) for k in range(len(t.cases[c].positions))],
                            t.label_fn)

    def make_splits(self, case_ids: list[str]) -> dict[str, list[str]]:
        """Patient-level splits: ``split_file`` when set (JSON of case-id lists), else seeded fractions."""
        split_file = getattr(self, "split_file", None)
        elsewhere = getattr(self, "shard_elsewhere", ())  # case_shard: the other shards' cases
        splits = (read_split_file(split_file, case_ids, elsewhere) if split_file else
                  patient_split(case_ids, self.val_fraction, self.test_fraction, self.seed))
        return self.limit_train_cases(splits)

    def limit_train_cases(self, splits: dict[str, list[str]]) -> dict[str, list[str]]:
        """``train_cases`` = N: train on a seeded random N of the training cases (a labelled-data budget,
        e.g. a distillation student with less data than its teacher); val and test are unchanged."""
        n, train = self.train_cases, list(splits["train"])
        if n is None or n == len(train):
            return splits
        if n > len(train):
            raise DataError(f"data.train_cases={n} but the split has only {len(train)} training cases")
        keep = np.random.default_rng(self.seed).permutation(len(train))[:n]
        return {**splits, "train": [train[i] for i in sorted(keep)]}

    def collate_fn(self, train: bool):
        """With ``image_size=None`` batches of mixed slice sizes are padded per batch (aspect ratio kept,
        :class:`datamodules.collate.PadCollate`); else the default collate."""
        return PadCollate(32, self.fill_value()) if getattr(self, "image_size", None) is None else None

    def _train_items(self, cases: list[SliceCase], pos: dict[str, int]) -> list[tuple[int, int]]:
        items, empty = [], []
        for cid in self.splits["train"]:
            case = cases[pos[cid]]
            for k, p in enumerate(case.positions):
                fg = self.train_slices == "all" or bool(np.any(np.asarray(case.label[p]) > 0))
                (items if fg else empty).append((pos[cid], k))
        if isinstance(self.train_slices, (int, float)) and empty:
            rng = np.random.default_rng(self.seed)
            keep = rng.permutation(len(empty))[: int(round(float(self.train_slices) * len(empty)))]
            items += [empty[i] for i in sorted(keep)]
        if not items:
            raise DataError(f"data.train_slices={self.train_slices!r} selects no training slice "
                            f"(no foreground in the {len(self.splits['train'])} training cases)")
        return sorted(items)

    def case_ids(self, split: str) -> list[str]:
        """Case ids of ``split`` ("train" | "val" | "test"), after :meth:`setup`."""
        if self.splits is None:
            self.setup()
        return list(self.splits[split])
