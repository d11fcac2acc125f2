"""2D image classification from class subfolders (e.g. COVID-CT: ``CT_COVID/``, ``CT_NonCOVID/``).

``root/<class folder>/*.{png,jpg,jpeg,bmp,tif}``; classes are the subfolders named in ``classes`` (in
label order) or all subfolders sorted. Official split lists are optional: ``split_dir`` holding text files
whose names contain ``train`` / ``val`` / ``test`` and list file names (one a line), as COVID-CT's
``Data-split/{COVID,NonCOVID}/{train,val,test}CT_*.txt``; without them a stratified seeded split is drawn, of
whole groups when ``group_pattern`` names an image's group in its file stem (COVID-CT's config: the crops
``name%0``, ``name%1`` of one figure are one group).
Images are converted to grey (or RGB), resized to ``size`` x ``size`` and kept in memory as uint8 (the
COVID-CT set at 64 px is ~3 MB). Items follow ``docs/architecture.md``; datasets expose ``targets``.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from datamodules.classification import ArrayClassificationDataset, ClassificationDataModule
from datamodules.digits import stratified_split
from datamodules.errors import DataError, missing_root
from datamodules.jsonfile import data_file_text
from lightning_modules.tasks import normalize_task

log = logging.getLogger(__name__)

EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _load(path: Path, size: int, rgb: bool) -> np.ndarray:
    """An image file as uint8 ``[size, size]`` grey or ``[size, size, 3]`` RGB. 16-bit and 32-bit integer grey are
    scaled by their bit depth and float grey in [0, 1] by 255 (a 2D data review: Pillow's conversion to 8 bits
    clipped them, so every 16-bit level above 255 was white and a float image 0 or 1); a float image outside
    [0, 1] is one line (its scale is unknown)."""
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I") or im.mode == "F":
                im = Image.fromarray(_deep_to_uint8(np.asarray(im), im, path))
            im = im.convert("RGB" if rgb else "L").resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # a review: PIL's error named no file
        raise DataError(f"cannot read image file {path}: {exc}") from None


def _deep_to_uint8(x: np.ndarray, im: Image.Image, path: Path) -> np.ndarray:
    """16-bit (``I;16*``, or ``I`` as Pillow opens a 16-bit PNG) / 32-bit integer / float grey -> uint8 by scale."""
    if im.mode == "F":
        if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise DataError(f"image file {path} is floating point with values outside [0, 1] "
                            f"([{np.nanmin(x):g}, {np.nanmax(x):g}]); save it as 8- or 16-bit")
        return np.rint(x * 255.0).astype(np.uint8)
    top = 65535.0 if im.mode.startswith("I;16") or im.format == "PNG" or (x.size and x.max() <= 65535) else 2.0**32 - 1
    if x.size and x.min() < 0:
        raise DataError(f"image file {path} has negative grey levels (min {x.min()}); save it as 8- or 16-bit")
    return np.rint(x.astype(np.float64) * (255.0 / top)).astype(np.uint8)


def group_split(labels: np.ndarray, groups: Sequence[str], val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, np.ndarray]:
    """:func:`~datamodules.digits.stratified_split` over groups (a group's images stay in one split), stratified
    by each group's label; a review: COVID-CT's crops of one paper figure (``...-p6-52%0`` .. ``%15``, one
    patient) were scattered over train and test by a per-image split."""
    names, inverse = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    # one unit per group, stratified by its most common label (a later review: keyed by label and group, a
    # patient with images of both classes became two units and could land in train and test)
    majority = np.asarray([np.bincount(labels[inverse == k]).argmax() for k in range(len(names))])
    mixed = [str(names[k]) for k in range(len(names)) if len(np.unique(labels[inverse == k])) > 1]
    if mixed:
        log.warning("data.group_pattern: %d group(s) hold images of more than one class (e.g. %s); each stays in "
                    "one split, stratified by its most common class", len(mixed), ", ".join(mixed[:3]))
    by_group = stratified_split(majority, val_fraction, test_fraction, seed)
    return {s: np.flatnonzero(np.isin(inverse, idx)) for s, idx in by_group.items()}


def _split_lists(split_dir: Path) -> tuple[dict[str, list[str]], list[str]]:
    """The names each split's text files list (in file order), and one note per name listed twice in a file."""
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    twice: list[str] = []
    for f in sorted(split_dir.rglob("*.txt")):
        name = f.stem.lower()
        split = next((s for s in ("train", "val", "test") if name.startswith(s) or f"_{s}" in name), None)
        if split is not None:
            names = [line.strip() for line in data_file_text(f, "split list").splitlines() if line.strip()]
            twice += [f"{n} twice in {f.name}" for n, k in sorted(Counter(names).items()) if k > 1]  # not O(n^2)
            out[split] += names
    return out, twice


def _split_notes(lists: dict[str, list[str]], twice: list[str], names: Sequence[str]) -> list[str]:
    """What the split lists drop silently otherwise: names listed twice, names in two splits (val, then test,
    then train wins), listed names with no image, and images in no list (left out of every split)."""
    on_disk, where, notes = set(names), {}, list(twice)
    for s in ("val", "test", "train"):
        for n in dict.fromkeys(lists[s]):
            if n in where:
                notes.append(f"{n} in {where[n]} and {s} (kept in {where[n]})")
            else:
                where[n] = s
    notes += [f"{n} (in {s}) has no image" for n, s in where.items() if n not in on_disk]
    notes += [f"{n} is in no list (left out)" for n in names if n not in where]
    return notes


class ImageFolderDataModule(ClassificationDataModule):
    """Class-subfolder image classification (module docstring). ``task`` is ``binary`` for two classes."""

    def __init__(self, root: str, classes: Sequence[str] | None = None, class_names: Sequence[str] | None = None,
                 split_dir: str | None = None, size: int = 64, rgb: bool = False, batch_size: int = 32,
                 val_fraction: float = 0.15, test_fraction: float = 0.25, seed: int = 0, num_workers: int = 0,
                 task: str | None = None, mean: float = 0.0, std: float = 1.0,
                 group_pattern: str | None = None, augmentation: Sequence[Any] | None = None) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed, augmentation=augmentation)
        self.root = Path(root)
        self.classes = list(classes) if classes else None
        self.split_dir = None if split_dir in (None, "") else Path(split_dir)
        if self.split_dir is not None and not self.split_dir.is_absolute():
            self.split_dir = self.root / self.split_dir
        self.size, self.rgb = int(size), bool(rgb)
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.mean, self.std = float(mean), float(std)
        self._names = list(class_names) if class_names else None
        self._task = task
        self.in_channels = 3 if rgb else 1
        try:
            self.group_pattern = re.compile(group_pattern) if group_pattern else None
        except re.error as exc:
            raise DataError(f"data.group_pattern={group_pattern!r} is not a regular expression: {exc}") from None
        self._resolve_classes()

    def _resolve_classes(self) -> None:
        if not self.root.is_dir():
            raise missing_root(self.root, expected="class subfolders")
        folders = self.classes or sorted(p.name for p in self.root.iterdir() if p.is_dir() and
                                         any(q.suffix.lower() in EXTS for q in p.iterdir()))
        missing = [c for c in folders if not (self.root / c).is_dir()]
        if missing or len(folders) < 2:
            raise DataError(f"data.root {self.root}: class folders {missing or folders} missing or fewer than two")
        self.classes = folders
        self.num_classes = len(folders)
        self.class_names = self._names or folders
        self.task = normalize_task(self._task or ("binary" if self.num_classes == 2 else "multi-class"))

    def _group(self, stem: str) -> str:
        """The group an image belongs to: ``group_pattern``'s first group (else its match) in the file stem; a stem
        it does not match is its own group."""
        m = self.group_pattern.search(stem)
        return stem if m is None else (m.group(1) if m.groups() else m.group(0))

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        files, labels = [], []
        for k, c in enumerate(self.classes):
            found = [p for p in sorted((self.root / c).iterdir())
                     if p.suffix.lower() in EXTS and not p.name.startswith(".")]  # macOS ._ files are no images
            if not found:  # a review: a class with no image trained a "binary" task on one class
                raise DataError(f"data.root {self.root}: class folder {c} has no images ({', '.join(sorted(EXTS))})")
            files += found
            labels += [k] * len(found)
        labels_arr = np.asarray(labels, dtype=np.int64)
        images = np.stack([_load(p, self.size, self.rgb) for p in files])
        groups = None if self.group_pattern is None else np.asarray([self._group(p.stem) for p in files])
        if self.split_dir is not None:
            if not self.split_dir.is_dir():
                raise DataError(f"data.split_dir {self.split_dir} does not exist")
            lists, twice = _split_lists(self.split_dir)
            names = np.asarray([p.name for p in files])
            notes = _split_notes(lists, twice, names.tolist())
            if notes:
                log.warning("split lists in %s: %d name(s) not used as listed: %s", self.split_dir, len(notes),
                            "; ".join(notes[:5]) + ("; ..." if len(notes) > 5 else ""))
            parts = {s: np.flatnonzero(np.isin(names, sorted(set(lists[s])))) for s in ("train", "val", "test")}
            listed = np.zeros(len(files), bool)
            for s in ("val", "test"):
                parts[s] = parts[s][~listed[parts[s]]]
                listed[parts[s]] = True
            parts["train"] = parts["train"][~listed[parts["train"]]]
            if not all(len(v) for v in parts.values()):
                raise DataError(f"split lists in {self.split_dir} leave an empty split: "
                                f"{ {k: len(v) for k, v in parts.items()} }")
        elif groups is not None:
            parts = group_split(labels_arr, groups.tolist(), self.val_fraction, self.test_fraction, self.seed)
        else:
            parts = stratified_split(labels_arr, self.val_fraction, self.test_fraction, self.seed)
        made = {s: ArrayClassificationDataset(images[idx], labels_arr[idx], scale=255.0, mean=self.mean, std=self.std,
                                              transform=self.train_augmentation() if s == "train" else None)
                for s, idx in parts.items()}
        if groups is not None:  # a review: a federation's pool, partition and client val split went image by image
            for s, idx in parts.items():  # (datamodules.subset.sample_cases): crops of one figure in train and val
                made[s].case_ids = groups[idx]
        self.train_dataset, self.val_dataset, self.test_dataset = made["train"], made["val"], made["test"]
        self.probe_augmentation()
