"""The one volume pipeline shared by every 3D layout (LiTS, KiTS19, MSD, COVID stacks).

NIfTI read (nibabel) -> label checks -> canonical orientation + optional resampling
(:mod:`datamodules.spatial`) -> HU window + rescale (or per-image z-score) -> axial slices -> optional
resize, with the result cached on disk so a second epoch or run never decodes the NIfTI again.

Array conventions: nibabel returns volumes in voxel (x, y, z) order, called (H, W, D) here. After
reorientation (RAS by default) the last axis is the axial one whatever the file's axis order; slices are
taken along it and stored as ``[D, H, W]`` (``[D, C, H, W]`` for multi-channel inputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from datamodules.errors import DataError
from datamodules.nifti_checks import affine_mm, check_affine, check_header, space_unit
from datamodules.spatial import GridMeta, check_orientation, from_grid, on_image_grid, resize_volume, to_grid

__all__ = [
    "PreprocessParams", "load_nifti", "apply_window", "to_slices",
    "resize_slices", "check_labels", "preprocess_image", "restore_label_volume", "restore_probability_volume",
    "restore_label_map", "NORMALIZATIONS",
]

NORMALIZATIONS = ("window", "zscore", "ct")


def load_nifti(path: str | Path) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI file as ``(float32 array in (H, W, D) = nibabel x,y,z order, affine in mm, header)``.

    A missing, corrupt or truncated file, or one whose header or affine fails
    :mod:`datamodules.nifti_checks`, raises :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"NIfTI file {path} does not exist")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel/gzip/zlib raise many types for a damaged file
        raise DataError(f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from None
    data = check_header(path, img)  # before the read: a tiny file may claim gigabytes (a large .gz: read)
    check_affine(path, img.affine, space_unit(img))
    try:
        data = np.asarray(img.dataobj, dtype=np.float32) if data is None else data
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"NIfTI file {path} has shape {data.shape}, expected a 3D volume")
    return data, affine_mm(img), img.header


def apply_window(x: np.ndarray, lo: float, hi: float,
                 out_range: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """Clip intensities to the HU window ``[lo, hi]`` and map it linearly onto ``out_range``.

    Windows used in the papers: liver -40..160 HU and kidney -200..300 HU (HLFD, paper 001,
    ``001_b32febb3a09ef2c2.txt`` §3, Implementation Details, out_range [0, 1]); pancreas -200..250 HU rescaled to
    [-1, 1] (paper 003, ``003_b4df17e9a6a6137e.txt`` §2.3, Data Pre-Processing).
    """
    if hi <= lo:
        raise DataError(f"data.window must be [lo, hi] with lo < hi, got [{lo}, {hi}]")
    a, b = float(out_range[0]), float(out_range[1])
    y = np.clip(x, lo, hi).astype(np.float32, copy=False)  # a new array: the steps below work in place
    y -= lo  # the same float32 steps as ((y - lo) / (hi - lo)) * (b - a) + a, without four temporaries
    y /= float(hi - lo)
    y *= b - a
    y += a
    return y


def to_slices(volume: np.ndarray) -> np.ndarray:
    """(H, W, D) volume -> contiguous ``[D, H, W]`` stack of axial slices."""
    return np.ascontiguousarray(np.moveaxis(volume, -1, 0))


def resize_slices(slices: np.ndarray, size: int | None, is_label: bool) -> np.ndarray:
    """Resize a ``[D, H, W]`` (or ``[D, C, H, W]``) stack to ``size x size``: bilinear (antialiased)
    for images, nearest for labels so no new class values appear, pixel-centre aligned as the images are
    (``nearest-exact``; torch's ``nearest`` shifted masks by up to half a working pixel against their
    images, a review: +0.39 px at 512 -> 128). ``size=None`` returns the input."""
    if size is None or slices.shape[-2:] == (size, size):
        return slices
    t = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))
    t = t[:, None] if t.ndim == 3 else t
    if is_label:
        out = F.interpolate(t, size=(size, size), mode="nearest-exact")
    else:
        out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    out = out[:, 0] if slices.ndim == 3 else out
    return out.numpy().astype(slices.dtype)


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
    orientation: str | None = "RAS"
    spacing: tuple[float, float, float] | None = None
    normalization: str = "window"

    def __post_init__(self) -> None:
        # upper-cased here: nibabel takes "RAS", not "ras" (a review: "las" passed the check, then a traceback)
        object.__setattr__(self, "orientation", check_orientation(self.orientation))
        if self.normalization not in NORMALIZATIONS:
            raise DataError(f"data.normalization={self.normalization!r} is not one of {list(NORMALIZATIONS)}")


def _identity_grid(shape: Sequence[int]) -> GridMeta:
    eye = tuple(tuple(float(v) for v in r) for r in np.eye(4))
    ident = ((0.0, 1.0), (1.0, 1.0), (2.0, 1.0))
    shape = tuple(int(s) for s in shape)
    return GridMeta(shape, eye, ident, ident, shape, shape, (1.0, 1.0, 1.0))


def normalise(volume: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """HU window + rescale (CT, papers 001/003), per-image per-channel z-score (MRI, nnU-Net) or, for
    ``ct``, raw HU (nnU-Net's CT scheme needs training-set statistics: :mod:`datamodules.intensity`)."""
    if params.normalization == "window":
        return apply_window(volume, params.window[0], params.window[1], params.out_range)
    if params.normalization == "ct":
        return volume.astype(np.float32)
    axes = tuple(range(volume.ndim - 3, volume.ndim))
    mean, std = volume.mean(axis=axes, keepdims=True), volume.std(axis=axes, keepdims=True)
    return ((volume - mean) / np.maximum(std, 1e-8)).astype(np.float32)


def preprocess_image(volume: np.ndarray, params: PreprocessParams) -> np.ndarray:
    """(H, W, D) or [C, H, W, D] volume already on the working grid -> normalised, resized
    ``[D, H, W]`` (``[D, C, H, W]``) float32 slices."""
    x = normalise(volume, params)
    x = to_slices(x) if x.ndim == 3 else np.ascontiguousarray(np.moveaxis(x, -1, 0))
    return resize_slices(x, params.image_size, is_label=False)


def restore_label_volume(pred: np.ndarray, grid: GridMeta | Sequence[int]) -> np.ndarray:
    """Predicted labels ``[D, h, w]`` on the working grid -> uint8 volume on the source NIfTI's voxel
    grid (its shape and axis order). ``grid`` may be a plain (H, W, D) shape (no reorientation)."""
    grid = grid if isinstance(grid, GridMeta) else _identity_grid(grid)
    h, w, _ = grid.shape
    out = np.asarray(pred, dtype=np.uint8)
    if out.shape[1:] != (h, w):
        t = torch.from_numpy(out.astype(np.float32))[:, None]
        out = F.interpolate(t, size=(h, w), mode="nearest-exact")[:, 0].numpy().astype(np.uint8)
    return from_grid(np.moveaxis(out, 0, -1), grid, is_label=True).astype(np.uint8)


def restore_probability_volume(prob: np.ndarray | torch.Tensor, grid: GridMeta | Sequence[int]) -> np.ndarray:
    """Class probabilities ``[D, K, h, w]`` on the working grid -> float32 ``[K, ...]`` on the source NIfTI's
    voxel grid: bilinear back to the slice size, then trilinear back to the source spacing and orientation.
    Taking the labels after this (nnU-Net exports the same way) keeps boundaries that resampling the
    arg-max labels with nearest neighbour moves by up to half a working voxel: on 0.8 x 0.8 x 2.5 mm volumes
    an audit found the label round trip alone at Dice 0.975 (organ) / 0.94 (tumour) against the truth."""
    grid = grid if isinstance(grid, GridMeta) else _identity_grid(grid)
    oriented = _at_source_spacing(torch.as_tensor(prob).cpu(), grid)
    return from_grid(oriented.contiguous().numpy(), grid, is_label=False)


def restore_label_map(prob: torch.Tensor, grid: GridMeta | Sequence[int],
                      to_labels: Callable[[torch.Tensor], torch.Tensor],
                      with_probabilities: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[D, K, h, w]`` on the working grid -> uint8 labels on the source NIfTI's voxel
    grid, the labels (``to_labels`` of ``[K, ...]``) taken after the probabilities are resampled, as
    :func:`restore_probability_volume`. The resampling and the labels run on ``prob``'s own device (a GPU when
    predict runs there) and only the labels cross to the CPU; the orientation, pure axis permutations and
    flips that the arg-max commutes with, is undone on the labels. The same labels as on the CPU (on a GPU, to the
    interpolation's float rounding at exact ties), a 512 x 512 x 200 CT's post-processing off the CPU
    (docs/benchmarks.md "GPU"). ``with_probabilities``: ``(labels, float32 [K, ...] probabilities on the source
    grid)``, those :func:`restore_probability_volume` gives, as a view (not C-contiguous) to save the copy."""
    grid = grid if isinstance(grid, GridMeta) else _identity_grid(grid)
    oriented = _at_source_spacing(prob, grid)
    labels = from_grid(to_labels(oriented).to(torch.uint8).cpu().numpy(), grid, is_label=True)
    if not with_probabilities:
        return labels
    # a view in the source orientation, not a copy: predict only writes it (save_probabilities)
    return labels, from_grid(oriented.cpu().numpy(), grid, is_label=False, contiguous=False)


def _at_source_spacing(prob: torch.Tensor, grid: GridMeta) -> torch.Tensor:
    """``[D, K, h, w]`` -> float32 ``[K, H, W, D]`` on the source spacing, still in the working orientation, on
    ``prob``'s device: bilinear back to the slice size, then trilinear back to the source spacing."""
    h, w, _ = grid.shape
    t = prob.float()
    if tuple(t.shape[-2:]) != (h, w):
        t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return resize_volume(t.permute(1, 2, 3, 0), grid.oriented_shape, is_label=False)


def load_on_grid(images: Path | Sequence[Path], params: PreprocessParams,
                 label: Path | None = None) -> tuple[np.ndarray, np.ndarray | None, GridMeta]:
    """Read image channel file(s) (+ label) and move them to the working grid: ``(image (H, W, D) or
    [C, H, W, D], raw label (H, W, D) or None, grid)``; shapes are checked against each other."""
    paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
    chans, affine = [], None
    for p in paths:
        x, aff, _ = load_nifti(p)
        if not np.isfinite(x).all():  # NaN would train to a NaN loss, or spread through a prediction
            raise DataError(f"image {p} has {int((~np.isfinite(x)).sum())} NaN/inf voxels")
        if chans:  # every channel read by its own affine onto the first one's voxel grid
            x = on_image_grid(x, aff, affine, chans[0].shape, p, paths[0], what="channel")
        chans.append(x)
        affine = aff if affine is None else affine
    x = chans[0] if len(chans) == 1 else np.stack(chans)
    y = None
    if label is not None:
        y, label_affine, _ = load_nifti(label)
        y = on_image_grid(y, label_affine, affine, chans[0].shape, label, paths[0])
        y, _ = to_grid(y, affine, params.orientation, params.spacing, is_label=True, source=paths[0],
                       contiguous=False)
    # strided views: both are sliced next, one copy (preprocess_image, to_slices) instead of two
    x, grid = to_grid(x, affine, params.orientation, params.spacing, is_label=False, source=paths[0],
                      contiguous=False)
    return x, y, grid
