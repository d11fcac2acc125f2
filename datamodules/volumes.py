"""The one volume pipeline shared by every 3D layout (LiTS, KiTS19, MSD, COVID stacks).

NIfTI read (nibabel) -> label checks -> HU window + rescale -> axial slices -> optional resize, with the
result cached on disk so a second epoch or run never decodes the NIfTI again.

Array conventions: nibabel returns volumes in voxel (x, y, z) order, called (H, W, D) here; axial
slices are taken along the last axis and stored as ``[D, H, W]``.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from datamodules.errors import DataError

__all__ = [
    "PreprocessParams", "CachedVolume", "VolumeCache", "load_nifti", "apply_window", "to_slices",
    "resize_slices", "check_labels", "preprocess_image", "restore_label_volume",
]


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI file as ``(float32 array in (H, W, D) = nibabel x,y,z order, affine, header)``.

    A missing, corrupt or truncated file raises :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"NIfTI file {path} does not exist")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel/gzip/zlib raise many types for a damaged file
        raise DataError(f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"NIfTI file {path} has shape {data.shape}, expected a 3D volume")
    return data, img.affine, img.header


def apply_window(x: np.ndarray, lo: float, hi: float,
                 out_range: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """Clip intensities to the HU window ``[lo, hi]`` and map it linearly onto ``out_range``.

    Windows used in the papers: liver -40..160 HU and kidney -200..300 HU (HLFD, paper 001,
    ``001_b32febb3a09ef2c2.txt`` §Experiments, out_range [0, 1]); pancreas -200..250 HU rescaled to
    [-1, 1] (paper 003, ``003_b4df17e9a6a6137e.txt`` §Implementation).
    """
    if hi <= lo:
        raise DataError(f"data.window must be [lo, hi] with lo < hi, got [{lo}, {hi}]")
    a, b = float(out_range[0]), float(out_range[1])
    y = (np.clip(x, lo, hi).astype(np.float32) - lo) / float(hi - lo)
    return (y * (b - a) + a).astype(np.float32)


def to_slices(volume: np.ndarray) -> np.ndarray:
    """(H, W, D) volume -> contiguous ``[D, H, W]`` stack of axial slices."""
    return np.ascontiguousarray(np.moveaxis(volume, -1, 0))


def resize_slices(slices: np.ndarray, size: int | None, is_label: bool) -> np.ndarray:
    """Resize a ``[D, H, W]`` stack to ``size x size``: bilinear (antialiased) for images,
    nearest for labels so no new class values appear. ``size=None`` returns the input."""
    if size is None or slices.shape[1:] == (size, size):
        return slices
    t = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    if is_label:
        out = F.interpolate(t, size=(size, size), mode="nearest")
        return out[:, 0].numpy().astype(slices.dtype)
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[:, 0].numpy()


def check_labels(label: np.ndarray, allowed: Sequence[int], path: str | Path) -> np.ndarray:
    """Round a label volume to integers and check every value is a declared class.

    Raises :class:`DataError` naming the file and the offending values otherwise.
    """
    values = np.unique(label)
    rounded = np.rint(values)
    bad = sorted(set(values[np.abs(values - rounded) > 1e-3].tolist())
                 | set(rounded[~np.isin(rounded, list(allowed))].tolist()))
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:10])
        raise DataError(f"label file {path} has values [{shown}] outside the declared classes "
                        f"{sorted(int(a) for a in allowed)}")
    return np.rint(label).astype(np.uint8)


@dataclass(frozen=True)
class PreprocessParams:
    """Everything that changes the preprocessed slices; part of the cache key."""

    window: tuple[float, float] = (-40.0, 160.0)
    out_range: tuple[float, float] = (0.0, 1.0)
    image_size: int | None = None
    labels: tuple[int, ...] = (0, 1, 2)


@dataclass
class CachedVolume:
    """Preprocessed slices of one volume: ``image`` float32 ``[D, H, W]``, ``label`` uint8 ``[D, H, W]``
    (or None for unlabelled volumes) and the original (H, W, D) shape for resizing predictions back."""

    image: np.ndarray
    label: np.ndarray | None
    original_shape: tuple[int, int, int]


def preprocess_image(volume: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """(H, W, D) HU volume -> windowed, rescaled, resized ``[D, H, W]`` float32 slices."""
    x = apply_window(volume, params.window[0], params.window[1], params.out_range)
    return resize_slices(to_slices(x), params.image_size, is_label=False)


def restore_label_volume(pred: np.ndarray, original_shape: Sequence[int]) -> np.ndarray:
    """Predicted labels ``[D, h, w]`` -> uint8 (H, W, D) volume in the source NIfTI's voxel grid."""
    h, w, _ = original_shape
    out = np.asarray(pred, dtype=np.uint8)
    if out.shape[1:] != (h, w):
        t = torch.from_numpy(out.astype(np.float32))[:, None]
        out = F.interpolate(t, size=(h, w), mode="nearest")[:, 0].numpy().astype(np.uint8)
    return np.moveaxis(out, 0, -1)


def _file_key(path: Path | None) -> dict | None:
    if path is None:
        return None
    st = path.stat()
    return {"path": str(path.resolve()), "mtime_ns": st.st_mtime_ns, "size": st.st_size}


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """np.save to a temp file in the same folder, then os.replace: never a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class VolumeCache:
    """Disk cache of preprocessed slices.

    Layout: ``cache_dir/<hash>/<name>_image.npy`` (+ ``<name>_label.npy``, ``<name>_meta.json``) where
    ``<hash>`` covers the preprocessing params and the source files' paths, mtimes and sizes, so
    editing a file or a param never serves stale slices. Files are written atomically (temp file +
    ``os.replace``), the image last, so its presence marks a complete entry. Cached arrays are
    memory-mapped, hence large datasets do not have to fit in RAM.
    ``decode_count`` counts NIfTI decodes done by this instance (a cache hit does none).
    """

    def __init__(self, cache_dir: str | Path, params: PreprocessParams) -> None:
        self.cache_dir = Path(cache_dir)
        self.params = params
        self.decode_count = 0

    def entry_dir(self, image: Path, label: Path | None) -> Path:
        key = json.dumps({"params": asdict(self.params), "image": _file_key(image),
                          "label": _file_key(label)}, sort_keys=True)
        return self.cache_dir / hashlib.sha1(key.encode()).hexdigest()[:20]

    def load(self, image: str | Path, label: str | Path | None, name: str) -> CachedVolume:
        """Preprocessed slices of ``image``/``label``; decodes and caches them on a miss."""
        image, label = Path(image), (Path(label) if label is not None else None)
        if not image.is_file():
            raise DataError(f"image file {image} does not exist")
        if label is not None and not label.is_file():
            raise DataError(f"label file {label} does not exist")
        d = self.entry_dir(image, label)
        img_f, lab_f, meta_f = (d / f"{name}_image.npy", d / f"{name}_label.npy", d / f"{name}_meta.json")
        if img_f.is_file() and meta_f.is_file() and (label is None or lab_f.is_file()):
            shape = tuple(json.loads(meta_f.read_text())["original_shape"])
            return CachedVolume(np.load(img_f, mmap_mode="r"),
                                np.load(lab_f, mmap_mode="r") if label is not None else None, shape)
        vol = self.decode(image, label)
        d.mkdir(parents=True, exist_ok=True)
        if vol.label is not None:
            _atomic_save(lab_f, vol.label)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{meta_f.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump({"original_shape": list(vol.original_shape), "image": str(image),
                       "label": str(label) if label else None}, fh)
        os.replace(tmp, meta_f)
        _atomic_save(img_f, vol.image)
        return vol

    def decode(self, image: Path, label: Path | None) -> CachedVolume:
        """Read, check and preprocess one volume (no cache involved)."""
        self.decode_count += 1
        x, _, _ = load_nifti(image)
        if not np.isfinite(x).all():  # NaN would train to a NaN loss and write metrics as if nothing happened
            raise DataError(f"image {image} has {int((~np.isfinite(x)).sum())} NaN/inf voxels")
        y = None
        if label is not None:
            y_raw, _, _ = load_nifti(label)
            if y_raw.shape != x.shape:
                raise DataError(f"shape mismatch: image {image} is {x.shape} but label {label} "
                                f"is {y_raw.shape}")
            y = check_labels(y_raw, self.params.labels, label)
            y = resize_slices(to_slices(y), self.params.image_size, is_label=True)
        return CachedVolume(preprocess_image(x, self.params), y, tuple(int(s) for s in x.shape))
