"""2D segmentation from image/mask folders (PNG, JPG or NPY pairs matched by file stem).

Slices are grouped into cases (patients/volumes) by ``case_pattern`` so that splits stay
patient-level; everything else (dataset, splits, slice selection, augmentation, loaders) is the
shared :class:`datamodules.slices.SliceDataModule`.

Defaults fit ``../shared/data/liver-tumor-msd-slices`` (root = that folder): ``test/images`` +
``test/masks``, RGB JPGs of grey CT, masks thresholded at > 127 (liver incl. tumour = 1), names
``{flipped|mirrored}_<volume>_<slice>.jpg`` grouped by volume. For
``kidney-tumor-kits19-slices``: ``image_dir=mini_eval/images``, ``mask_dir=mini_eval/masks``,
``mask_channel=0`` (tumour drawn in red), ``class_names=[background, tumor]``.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.errors import DataError, missing_root
from datamodules.image_files import EXTENSIONS, decode_mask, load_image, strip_suffix
from datamodules.slices import SliceCase, SliceDataModule
from datamodules.splits import patient_split
from datamodules.volumes import apply_window, resize_slices
from lightning_modules.kinds import is_whole

log = logging.getLogger(__name__)

def _natural(case_id: str) -> tuple:
    """Sort key: numeric case ids by value (``"9"`` before ``"10"``), others after them by name."""
    return (0, int(case_id), "") if case_id.isdigit() else (1, 0, case_id)


def _check_shard(shard: Sequence[int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    vals = list(shard)
    if len(vals) != 2 or not all(is_whole(v) for v in vals) \
            or vals[1] < 1 or not 0 <= vals[0] < vals[1]:
        raise DataError(f"data.case_shard={vals}: expected [i, n] with integers 0 <= i < n")
    return vals[0], vals[1]


def _check_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    if window is None:
        return None
    vals = [float(v) for v in window]
    if len(vals) != 2 or not vals[0] < vals[1]:
        raise DataError(f"data.window={list(window)}: expected [lo, hi] with lo < hi (in the stored units: grey [0, 1] "
                        f"for PNG/JPEG, as stored for NPY)")
    return vals[0], vals[1]


class FolderSegmentationDataModule(SliceDataModule):
    """2D image/mask folders as a segmentation DataModule (same batch/split contract as volumes).

    Files pair up when ``<stem><image_suffix>`` in ``image_dir`` matches ``<stem><mask_suffix>`` in
    ``mask_dir``. ``case_pattern`` is searched in the stem: group 1 is the case id, an optional named
    group ``slice`` gives the slice number (else slices are numbered in name order); stems that do
    not match are their own case (a warning; a pattern no stem matches is an error, ``case_pattern=None`` says
    each image is its own case). ``class_names`` defaults to background + one class per label.
    ``test_image_dir``/``test_mask_dir``: an explicit test folder (its cases are the test split; train
    and val are drawn from ``image_dir`` with ``val_fraction``). ``split_file``: a JSON of case-id
    lists ``{"train": [...], "val": [...], "test": [...]}`` instead of seeded fractions.
    ``image_size=null`` keeps each slice's own size; batches are padded to a common size.
    ``case_shard=[i, n]``: keep only the cases whose position in the sorted case ids is ``i`` mod ``n``, so
    ``n`` datamodules over one folder are ``n`` disjoint sites (whole cases; ``data/liver_slices_two_sites``).
    ``window=[lo, hi]``: re-window the grey [0, 1] image to ``clip((x - lo) / (hi - lo), 0, 1)``, as a site
    whose scanner or export uses another intensity window would store it (applied before resizing).
    ``background``: the stored value of air, before ``window`` (0, black, for PNG/JPEG; e.g. -1024 for ``.npy``
    slices in HU): what rotated-in corners and batch padding hold; a stored value below it is warned about once.
    """

    def __init__(self, root: str, image_dir: str = "test/images", mask_dir: str = "test/masks",
                 image_suffix: str = "", mask_suffix: str = "", mask_threshold: float | None = 127,
                 mask_channel: int | None = None, label_map: Mapping[int, int] | None = None,
                 case_pattern: str | None = r"^(?:flipped_|mirrored_)?(\d+)_(?P<slice>\d+)",
                 class_names: Sequence[str] | None = ("background", "liver"),
                 image_size: int | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
                 seed: int = 0, batch_size: int = 16, num_workers: int = 0, augment: bool = True,
                 rotation_limit: float = 15.0, train_slices: str | float = "all",
                 test_image_dir: str | None = None, test_mask_dir: str | None = None,
                 split_file: str | None = None, train_cases: int | None = None,
                 case_shard: Sequence[int] | None = None, window: Sequence[float] | None = None,
                 background: float = 0.0,
                 augmentation: Sequence[Any] | None = None) -> None:
        super().__init__(val_fraction, test_fraction, seed, batch_size, num_workers, augment,
                         rotation_limit, train_slices, train_cases, augmentation)
        self.root = Path(root)
        self.image_dir, self.mask_dir = self.root / image_dir, self.root / mask_dir
        self.image_suffix, self.mask_suffix = image_suffix, mask_suffix
        self.mask_threshold, self.mask_channel = mask_threshold, mask_channel
        self.label_map = None if label_map is None else {int(k): int(v) for k, v in label_map.items()}
        self.case_pattern = re.compile(case_pattern) if case_pattern else None
        self.image_size = None if image_size is None else int(image_size)
        if (test_image_dir is None) != (test_mask_dir is None):
            raise DataError("data.test_image_dir and data.test_mask_dir must be given together")
        self.test_dirs = None if test_image_dir is None else (self.root / test_image_dir, self.root / test_mask_dir)
        self.split_file = split_file
        self.test_ids: set[str] = set()
        self.case_shard = _check_shard(case_shard)
        self.shard_elsewhere: set[str] = set()  # with case_shard: the cases of the folder's other shards
        self.window = _check_window(window)
        self.background = float(background)
        if class_names is None:
            n = max(self.label_map.values()) + 1 if self.label_map else 2
            class_names = ["background"] + [f"class_{i}" for i in range(1, n)]
        self.class_names = list(class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def fill_value(self) -> float:
        """What rotated-in corners and batch padding hold: ``background`` (the stored air, black by default) after
        ``window``, as every pixel of the site. A review: with ``window=[-0.5, 1.0]`` black is 0.333, and the fill
        of 0.0 was a value that site's data never holds; another: HU ``.npy`` slices were filled with 0 HU, water,
        not air (``data.background=-1024`` now; a config value, so predict fills as training did)."""
        air = np.full(1, self.background, np.float32)
        return float(air[0] if self.window is None else apply_window(air, *self.window)[0])

    # --- prediction on image files (experiments.predict; engine/predict_images.py) -----------------------
    def preprocess_image(self, path: str | Path) -> tuple[torch.Tensor, tuple[int, int]]:
        """An image file through the training pipeline (grey [0, 1], ``window``, ``image_size``):
        ``(float32 [1, 1, h, w], (H, W) of the file)``; :meth:`restore_image_probabilities` maps back."""
        x = load_image(Path(path))
        if self.window is not None:
            x = apply_window(x, *self.window)
        y = resize_slices(x[None], self.image_size, is_label=False)
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))[:, None], (int(x.shape[0]), int(x.shape[1]))

    @staticmethod
    def restore_image_probabilities(prob: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
        """Class probabilities ``[1, K, h, w]`` -> float32 ``[K, H, W]`` on the file's own pixel grid, resampled
        bilinearly (probabilities, then labels: as volumes are mapped back)."""
        t = prob.float()
        if tuple(t.shape[-2:]) != tuple(shape):
            t = F.interpolate(t, size=tuple(int(v) for v in shape), mode="bilinear", align_corners=False)
        return t[0].numpy()

    def read_label(self, path: str | Path) -> np.ndarray:
        """A mask file decoded as training decodes it (``mask_threshold``/``mask_channel``/``label_map``)."""
        y = decode_mask(Path(path), self.mask_threshold, self.mask_channel, self.label_map)
        if y.max() >= self.num_classes:
            raise DataError(f"mask {path} has label {int(y.max())} but data.class_names has {self.num_classes} classes")
        return y

    def _files(self, folder: Path, suffix: str) -> dict[str, Path]:
        if not folder.is_dir():
            raise missing_root(folder, "data folder")
        out: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in EXTENSIONS and not p.name.startswith(".") and p.stem.endswith(suffix):
                stem = strip_suffix(p.stem, suffix)
                if stem in out:  # a walkthrough: the last extension won, pairing an image with a prediction
                    raise DataError(f"{out[stem]} and {p.name} share the name {stem!r} in {folder}: keep one (a "
                                    f"prediction written beside ground truth?)")
                out[stem] = p
        return out

    def pairs(self, image_dir: Path | None = None, mask_dir: Path | None = None) -> list[tuple[str, Path, Path]]:
        """``(stem, image, mask)`` for every pair; unmatched files are an error."""
        image_dir, mask_dir = image_dir or self.image_dir, mask_dir or self.mask_dir
        same = image_dir.resolve() == mask_dir.resolve()
        if same and self.mask_suffix == self.image_suffix:  # a 2D review: every file was paired with itself
            raise DataError(f"data.image_dir and data.mask_dir are one folder ({image_dir}) with one suffix "
                            f"({self.image_suffix!r}): each file would be its own mask; set data.mask_suffix (e.g. "
                            f"'_mask' for x.png + x_mask.png) or data.image_suffix")
        images, masks = self._files(image_dir, self.image_suffix), self._files(mask_dir, self.mask_suffix)
        if same:
            # one folder of x.png and x_mask.png (or x_img.png and x.png): a file both suffixes match is of the
            # longer, more specific one (a review: x_mask.png was read as an image "without a matching mask";
            # a later one: the mirror layout failed so, and the test was quadratic in the files)
            both = set(images.values()) & set(masks.values())
            if len(self.mask_suffix) > len(self.image_suffix):
                images = {k: v for k, v in images.items() if v not in both}
            else:
                masks = {k: v for k, v in masks.items() if v not in both}
        if not images:
            raise DataError(f"no images ({'/'.join(EXTENSIONS)}) found in {image_dir}")
        for a, b, what in ((images, masks, "mask"), (masks, images, "image")):
            missing = sorted(set(a) - set(b))
            if missing:
                raise DataError(f"{len(missing)} file(s) without a matching {what}, e.g. {a[missing[0]]}")
        return [(s, images[s], masks[s]) for s in sorted(images)]

    def _case_of(self, stem: str) -> tuple[str, int | None]:
        m = self.case_pattern.search(stem) if self.case_pattern else None
        if m is None:
            return stem, None
        sl = m.groupdict().get("slice")
        return m.group(1), (int(sl) if sl is not None else None)

    def make_splits(self, case_ids: list[str]) -> dict[str, list[str]]:
        if self.test_dirs is None or self.split_file:
            return super().make_splits(case_ids)
        rest = [c for c in case_ids if c not in self.test_ids]
        splits = patient_split(rest, self.val_fraction, 0.0, self.seed)
        splits["test"] = sorted(self.test_ids)
        return self.limit_train_cases(splits)  # a review: data.train_cases was ignored with a test folder

    def _groups(self, image_dir: Path, mask_dir: Path) -> dict[str, list[tuple[Any, str, Path, Path]]]:
        groups: dict[str, list[tuple[Any, str, Path, Path]]] = defaultdict(list)
        pairs = self.pairs(image_dir, mask_dir)
        for stem, img, msk in pairs:
            cid, sl = self._case_of(stem)
            groups[cid].append((sl if sl is not None else -1, stem, img, msk))
        self._check_pattern([stem for stem, _, _ in pairs], image_dir)
        return groups

    def _check_pattern(self, stems: list[str], image_dir: Path) -> None:
        """A ``case_pattern`` no stem matches is one :class:`DataError`; stems it misses are one warning. A review:
        ``case000_slice000`` missed the default pattern, so every slice was its own case and one patient's slices
        were split over train and test without a word (``case_pattern: null`` says each image is a case)."""
        if self.case_pattern is None:
            return
        missed = [s for s in stems if not self.case_pattern.search(s)]
        if missed and len(missed) == len(stems):
            raise DataError(f"data.case_pattern={self.case_pattern.pattern!r} matches no file name in {image_dir} "
                            f"(e.g. {missed[0]!r}): give a pattern whose group 1 is the case (patient) id, or "
                            f"data.case_pattern=null when every image is its own case")
        if missed:
            log.warning("data.case_pattern=%r does not match %d of %d file names in %s (e.g. %r): each is its own "
                        "case", self.case_pattern.pattern, len(missed), len(stems), image_dir, missed[0])

    def load_cases(self) -> list[SliceCase]:
        groups = self._groups(self.image_dir, self.mask_dir)
        if self.test_dirs is not None:
            test = self._groups(*self.test_dirs)
            both = sorted(set(test) & set(groups))
            if both:
                raise DataError(f"case(s) {both[:5]} appear in both {self.image_dir} and {self.test_dirs[0]}")
            self.test_ids = set(test)
            groups.update(test)
        if self.case_shard is not None:
            i, n = self.case_shard
            keep = sorted(groups, key=_natural)[i::n]
            if not keep:
                raise DataError(f"data.case_shard=[{i}, {n}] keeps none of the {len(groups)} cases in {self.image_dir}")
            self.shard_elsewhere = set(groups) - set(keep)  # the other shards' cases, named by a shared split_file
            groups = {c: groups[c] for c in keep}
            self.test_ids &= set(keep)
        cases, low = [], None
        for cid, members in groups.items():
            members.sort(key=lambda t: (t[0], t[1]))
            images, labels = [], []
            for _, _, img, msk in members:
                x = load_image(img)
                if low is None and x.size and float(x.min()) < self.background - 1e-6:
                    low = (img, float(x.min()))
                if self.window is not None:
                    x = apply_window(x, *self.window)
                y = self.read_label(msk)
                if x.shape != y.shape:
                    raise DataError(f"shape mismatch: image {img} is {x.shape} but mask {msk} is {y.shape}")
                images.append(resize_slices(x[None], self.image_size, is_label=False)[0])
                labels.append(resize_slices(y[None], self.image_size, is_label=True)[0])
            numbers = [t[0] if t[0] >= 0 else i for i, t in enumerate(members)]
            cases.append(SliceCase(cid, images, labels, list(range(len(members))), numbers, stacks=False))
        if cases and not any(np.any(np.asarray(y) > 0) for c in cases for y in c.label):
            raise DataError(self._no_foreground(next(iter(groups.values()))[0][3]))
        if low is not None:
            log.warning("image %s stores %g, below data.background=%g (the air that rotated-in corners and padding "
                        "hold): for slices in HU give data.background=-1024", low[0], low[1], self.background)
        return cases

    def _no_foreground(self, mask: Path) -> str:
        """Why training cannot start: every decoded mask is background (a walkthrough trained such a folder to
        Dice 0, exit 0; masks whose values the threshold erases are refused one by one in :func:`decode_mask`)."""
        return (f"no mask in {self.mask_dir} has any foreground once decoded, e.g. {mask}; nothing to learn to "
                f"segment")
