"""The on-disk slice cache of the volume pipeline (:mod:`datamodules.volumes`): :class:`VolumeCache`, which
decodes a volume through that pipeline once and serves its preprocessed slices memory-mapped afterwards, checked
as a decode checks the NIfTI; :class:`CachedVolume`, the slices it returns; :data:`CACHE_FORMAT`, the format
number in its key; and the helpers only it uses (file keys, the label-class check, atomic ``np.save``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from datamodules.errors import DataError
from datamodules.spatial import GridMeta
from datamodules.volumes import (PreprocessParams, check_labels, load_on_grid, preprocess_image, resize_slices,
                                 to_slices)
from lightning_modules.atomic import atomic_output

log = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "CachedVolume", "VolumeCache"]


@dataclass
class CachedVolume:
    """Preprocessed slices of one volume: ``image`` float32 ``[D, H, W]`` (``[D, C, H, W]`` with
    several channels), ``label`` uint8 ``[D, H, W]`` (or None for unlabelled volumes) and ``grid``, how
    the source voxel grid was reoriented/resampled (to map predictions back)."""

    image: np.ndarray
    label: np.ndarray | None
    grid: GridMeta

    @property
    def original_shape(self) -> tuple[int, int, int]:
        return self.grid.source_shape

    def slice_spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) of the cached slices (after the in-plane resize), for surface metrics."""
        sx, sy, sz = self.grid.spacing
        h, w, _ = self.grid.shape
        return (sx * h / self.image.shape[-2], sy * w / self.image.shape[-1], sz)


def _file_key(path: Path | None) -> dict | None:
    if path is None:
        return None
    st = path.stat()
    return {"path": str(path.resolve()), "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _only_classes(label: np.ndarray, classes: Sequence[int]) -> bool:
    """Whether a uint8 label array holds declared class values only: its maximum when the classes run 0..K (a
    few ms a volume; a bincount of every value is 25x slower), else every value present."""
    if sorted(classes) == list(range(len(classes))):
        return int(label.max()) < len(classes)
    present = np.flatnonzero(np.bincount(np.asarray(label).ravel(), minlength=256))
    return bool(np.isin(present, list(classes)).all())


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save through :func:`~lightning_modules.atomic.atomic_output` (a temp name unique to each writer, as
    data-loader workers and runs sharing a cache may write one entry at once): never a half-written file."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


#: bumped when the cached slices change for the same params and files (2: labels resized pixel-centre aligned;
#: 3: a label read by its own affine, so one stored flipped is no longer cached misaligned)
CACHE_FORMAT = 3


def default_cache_dir(root: Path) -> Path:
    """``<root>/.cache``; a warning names it when it is a link out of the data folder. A security review: a
    handed-over data folder's ``.cache`` linked elsewhere made every run write its slices there, unsaid. Not
    refused: a site may link its cache to a scratch disk on purpose, and a Flower node cannot set
    ``data.cache_dir`` (the received config's is dropped); what is written there is new cache entries only (each
    file replaced atomically, a linked entry refused)."""
    cache = root / ".cache"
    if cache.is_symlink():
        target = os.path.realpath(cache)
        if not Path(target).is_relative_to(os.path.realpath(root)):
            log.warning("%s is a link to %s, outside data.root %s: the slice cache is written there (remove the "
                        "link if you did not make it; data.cache_dir names a cache folder)", cache, target, root)
    return cache


class VolumeCache:
    """Disk cache of preprocessed slices.

    Layout: ``cache_dir/<hash>/<name>_image.npy`` (+ ``<name>_label.npy``, ``<name>_meta.json``) where
    ``<hash>`` covers :data:`CACHE_FORMAT`, the preprocessing params and the source files' paths, mtimes and
    sizes, so editing a file or a param, or a fix to the preprocessing, never serves stale slices. Files are
    written atomically (:func:`~lightning_modules.atomic.atomic_output`), the image last, so its presence marks
    a complete entry.
    Cached arrays are memory-mapped, hence large datasets do not have to fit in RAM.
    ``decode_count`` counts NIfTI decodes done by this instance (a cache hit does none).
    """

    def __init__(self, cache_dir: str | Path, params: PreprocessParams) -> None:
        self.cache_dir = Path(cache_dir)
        self.params = params
        self.decode_count = 0

    def entry_dir(self, image: Path | Sequence[Path], label: Path | None) -> Path:
        images = [image] if isinstance(image, Path) else list(image)
        key = json.dumps({"format": CACHE_FORMAT, "params": asdict(self.params),
                          "image": [_file_key(p) for p in images], "label": _file_key(label)}, sort_keys=True)
        return self.cache_dir / hashlib.sha1(key.encode()).hexdigest()[:20]

    def load(self, image: str | Path | Sequence[Path], label: str | Path | None, name: str) -> CachedVolume:
        """Preprocessed slices of ``image`` (one file, or one per channel)/``label``; decodes and
        caches them on a miss."""
        image = Path(image) if isinstance(image, (str, Path)) else tuple(Path(p) for p in image)
        label = Path(label) if label is not None else None
        for p in [image] if isinstance(image, Path) else image:
            if not p.is_file():
                raise DataError(f"image file {p} does not exist")
        if label is not None and not label.is_file():
            raise DataError(f"label file {label} does not exist")
        d = self.entry_dir(image, label)
        if d.is_symlink():  # a security review: a handed-over cache's entry linked elsewhere was written through
            raise DataError(f"slice cache entry {d} is a link ({os.readlink(d)}); a cache entry is a folder of its own "
                            f"(remove the link)")
        img_f, lab_f, meta_f = (d / f"{name}_image.npy", d / f"{name}_label.npy", d / f"{name}_meta.json")
        if img_f.is_file() and meta_f.is_file() and (label is None or lab_f.is_file()):
            try:
                return self._checked_hit(img_f, lab_f if label is not None else None, meta_f)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # decoded again, rewritten
                log.warning("slice cache entry %s failed its checks (%s): %s is decoded again", d, err, image)
        vol = self.decode(image, label)
        d.mkdir(parents=True, exist_ok=True)
        if vol.label is not None:
            _atomic_save(lab_f, vol.label)
        with atomic_output(meta_f) as tmp, open(tmp, "w") as fh:
            json.dump({"grid": vol.grid.to_json(), "image": str(image),
                       "label": str(label) if label else None}, fh)
        _atomic_save(img_f, vol.image)
        return vol

    def _checked_hit(self, img_f: Path, lab_f: Path | None, meta_f: Path) -> CachedVolume:
        """A cache entry, memory-mapped, after the checks a decode makes: float32 slices of the grid's count and
        the configured size, with values preprocessing can give (finite; inside ``out_range`` for a window),
        uint8 labels of the declared classes on the same slices (an audit: a cache written by someone else,
        e.g. a data folder's ``.cache`` handed over with it, trained on NaN images and labels of no class,
        exit 0). A few passes over the arrays, which also warm the page cache training reads them from.
        What passes is data as plausible as the NIfTI it stands for: a data folder's sender controls that NIfTI
        anyway. Raises ValueError on a bad one."""
        grid = GridMeta.from_json(json.loads(meta_f.read_text())["grid"])
        image = np.load(img_f, mmap_mode="r", allow_pickle=False)
        if image.dtype != np.float32 or image.ndim not in (3, 4):
            raise ValueError(f"{img_f.name}: not float32 slices")
        size = self.params.image_size
        slices = (int(grid.shape[2]), *((int(size),) * 2 if size else (int(grid.shape[0]), int(grid.shape[1]))))
        if (image.shape[0], *image.shape[-2:]) != slices:  # a second audit: 7x7 slices, or 1 of the grid's 10
            raise ValueError(f"{img_f.name}: {image.shape} is not {slices[0]} slices of {slices[1]}x{slices[2]}")
        lo, hi = (float(image.min()), float(image.max())) if image.size else (0.0, 0.0)
        span = self.params.out_range if self.params.normalization == "window" else (-1e6, 1e6)
        if not (span[0] - 1e-3 <= lo <= hi <= span[1] + 1e-3):  # NaN fails too; so does 3e38 (a second audit)
            raise ValueError(f"{img_f.name}: values [{lo:g}, {hi:g}] outside what preprocessing gives {list(span)}")
        label = None
        if lab_f is not None:
            label = np.load(lab_f, mmap_mode="r", allow_pickle=False)
            if label.dtype != np.uint8 or label.shape != image.shape[:1] + image.shape[-2:]:
                raise ValueError(f"{lab_f.name}: not uint8 labels of the image's slices")
            if label.size and not _only_classes(label, self.params.labels):
                raise ValueError(f"{lab_f.name}: values outside the declared classes {list(self.params.labels)}")
        return CachedVolume(image, label, grid)

    def decode(self, image: Path | Sequence[Path], label: Path | None) -> CachedVolume:
        """Read, check, reorient/resample and preprocess one volume (no cache involved)."""
        self.decode_count += 1
        x, y, grid = load_on_grid(image, self.params, label)
        if y is not None:
            y = check_labels(y, self.params.labels, label)
            y = resize_slices(to_slices(y), self.params.image_size, is_label=True)
        return CachedVolume(preprocess_image(x, self.params), y, grid)
