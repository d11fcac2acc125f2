"""Voxel grids: one canonical orientation and an optional target spacing, and the exact way back.

Every volume is brought to one orientation at load (``data.orientation``, RAS by default: voxel axis 0
runs to the patient's Right, 1 to Anterior, 2 to Superior -- so the last axis is always axial whatever
axis order the file was stored in), then optionally resampled to ``data.spacing`` (mm; paper 003
resamples to 1 mm isotropic: ``003_b4df17e9a6a6137e.txt`` §2.3, Data Pre-Processing). :class:`GridMeta` records
what was done so a prediction made in that space is mapped back onto the input's own voxel grid
(shape, axis order and affine) -- nnU-Net / MONAI's ``Orientationd`` + ``Spacingd`` + inverse.

Reorientation uses nibabel's orientation transforms (pure axis permutations and flips: exact, no
interpolation); resampling uses ``torch.nn.functional.interpolate`` (trilinear for images, nearest for
labels) with nnU-Net's shape rule: the new shape is the extent over the target spacing, rounded, and the grid
keeps the volume's outer edges, so the spacing reached is extent / new shape (64 x 0.8 mm at 1 mm: 51 voxels of
1.0039 mm), not exactly ``data.spacing``. MONAI's ``Spacing`` keeps the exact spacing and the first voxel's
centre instead (51 x 51 x 38 where this gives 51 x 51 x 40 for 16 slices of 2.5 mm; a 3D review): grids and
patches differ from a MONAI pipeline's by a voxel or so; the affine (:class:`GridMeta`) and the HD95/NSD
spacing are the grid's own, so scores are in true mm.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from nibabel import orientations as nio

from datamodules.errors import DataError
from datamodules.nifti_checks import MAX_VOXELS

__all__ = ["GridMeta", "to_grid", "from_grid", "resize_volume", "voxel_spacing", "check_orientation", "MAX_GROWTH",
           "label_orientation", "on_image_grid"]

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # files whose header mismatch was reported (once each)


def forget_warnings() -> None:
    """A new run reports each file's header mismatch afresh (:func:`experiments.run.dispatch`)."""
    _WARNED.clear()

#: the most a resampling may multiply a volume's voxel count (0.8 x 0.8 x 5 mm CT to 0.5 mm isotropic is 26x)
MAX_GROWTH = 64


def check_orientation(codes: str | None) -> str | None:
    """``"RAS"``-style axis codes (one of R/L, A/P, S/I per axis) or None (keep the stored order)."""
    if codes is None:
        return None
    codes = str(codes).upper()
    groups = sorted(next((i for i, p in enumerate(("RL", "AP", "SI")) if c in p), 9) for c in codes)
    if len(codes) != 3 or groups != [0, 1, 2]:
        raise DataError(f"data.orientation={codes!r} must be three axis codes, one of R/L, A/P and S/I "
                        "each (e.g. RAS, LPS)")
    return codes


def target_spacing(spacing: object) -> tuple[float, float, float]:
    """``data.spacing`` as three positive floats, else one :class:`DataError` line: a walkthrough's
    ``data.spacing=1.0`` (one number for "1 mm isotropic") and ``[1,1,abc]`` stopped in Hydra's multi-line
    "Error in call to target" with exit 1, from the datamodule's constructor."""
    try:
        target = () if isinstance(spacing, str) else tuple(float(v) for v in spacing)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        target = ()
    if len(target) != 3 or not all(math.isfinite(v) and v > 0 for v in target):
        shown = list(spacing) if isinstance(spacing, (list, tuple)) else spacing
        raise DataError(f"data.spacing={shown!r} must be three positive numbers (mm) or null, e.g. [1, 1, 1]")
    return target  # type: ignore[return-value]


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis from the affine's column norms."""
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0)))


def _is_identity(ornt: np.ndarray) -> bool:
    """Whether a nibabel ``ornt`` keeps every axis in place and direction."""
    return bool((ornt[:, 0] == np.arange(3)).all() and (ornt[:, 1] == 1).all())


def label_orientation(shape: Sequence[int], affine: np.ndarray, image_shape: Sequence[int], image_affine: np.ndarray,
                      path: str | Path, image_path: str | Path, what: str = "label") -> np.ndarray:
    """The nibabel ``ornt`` that puts a label's (or another channel's) voxels in its image's voxel order,
    read by the label's own affine, as MONAI's ``Orientationd`` reads each file by its own (a walkthrough: a
    label stored flipped, with its affine saying so, was read in the image's order, and its Dice fell from
    0.80 to 0.59). A label on another grid (spacing, origin or axes differ by over 1% of a voxel after the
    reorientation) is refused in one line, as nnU-Net refuses a label whose spacing is not its image's:
    resampling a label silently would score or train on a guess. One stored in its image's axis order whose
    origin or axis directions alone differ (a header written by another tool) is taken voxel for voxel with one
    warning, as nnU-Net does; a reorientation is read from a label's header only when that header otherwise
    matches the image's."""
    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.io_orientation(image_affine))
    moved_shape = [0, 0, 0]
    for axis, (to, _) in enumerate(ornt):
        moved_shape[int(to)] = int(shape[axis])
    if tuple(moved_shape) != tuple(int(n) for n in image_shape):
        raise DataError(f"shape mismatch: image {image_path} is {tuple(image_shape)} but {what} {path} is "
                        f"{tuple(shape)}" + ("" if tuple(moved_shape) == tuple(shape) else
                                             f" ({tuple(moved_shape)} in the image's axis order)"))
    moved = np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(ornt, tuple(int(n) for n in shape))
    ref = np.asarray(image_affine, dtype=np.float64)
    tol = 0.01 * min(voxel_spacing(ref))
    if np.abs(moved[:3] - ref[:3]).max() > tol:
        mine, theirs = voxel_spacing(moved), voxel_spacing(ref)
        why = ("their axis directions differ" if np.abs(moved[:3, :3] - ref[:3, :3]).max() > tol else
               f"origin {np.round(moved[:3, 3], 3).tolist()} vs {np.round(ref[:3, 3], 3).tolist()} mm")
        if not np.allclose(mine, theirs, rtol=0.01):
            why = f"spacing {[round(v, 4) for v in mine]} vs {[round(v, 4) for v in theirs]} mm"
        reoriented = not _is_identity(ornt)
        if why.startswith("spacing") or reoriented:  # a reorientation read from a header that is off elsewhere
            raise DataError(f"{what} {path} is not on the voxel grid of image {image_path} ({why}"
                            f"{', after reading its axis order from it' if reoriented else ''}): write the {what} "
                            f"with its image's geometry (header)")
        if str(path) not in _WARNED:  # as nnU-Net: a spacing mismatch is an error, origin/direction a warning
            _WARNED.add(str(path))
            log.warning("%s %s and image %s share shape and spacing but not their headers (%s): the %s's voxels "
                        "are taken as the image's", what, path, image_path, why, what)
    return ornt


def on_image_grid(x: np.ndarray, affine: np.ndarray, image_affine: np.ndarray, image_shape: Sequence[int],
                  path: str | Path, image_path: str | Path, what: str = "label") -> np.ndarray:
    """``x`` (a label or another channel) in its image's voxel order (:func:`label_orientation`); a view."""
    ornt = label_orientation(x.shape, affine, image_shape, image_affine, path, image_path, what)
    return x if _is_identity(ornt) else nio.apply_orientation(x, ornt)


@dataclass(frozen=True)
class GridMeta:
    """How a volume was moved to the working grid: the source shape/affine, the orientation transform
    (nibabel ``ornt``), the reoriented shape, and the working grid's shape and spacing (mm)."""

    source_shape: tuple[int, int, int]
    source_affine: tuple[tuple[float, ...], ...]
    ornt: tuple[tuple[float, float], ...]
    inverse: tuple[tuple[float, float], ...]
    oriented_shape: tuple[int, int, int]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def to_json(self) -> dict:
        return {k: [list(r) if isinstance(r, tuple) else r for r in v] for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, d: dict) -> "GridMeta":
        return cls(**{k: tuple(tuple(r) if isinstance(r, list) else r for r in v) for k, v in d.items()})

    @property
    def affine(self) -> np.ndarray:
        """The working grid's affine (world mm), e.g. to save an intermediate volume: working voxel ``i`` is
        oriented voxel ``(i + 0.5) * s - 0.5`` (pixel-centre aligned resampling, scale ``s``), so the scaling
        carries a ``(s - 1) / 2`` shift of the origin (a review found it missing: half a voxel off)."""
        src = np.asarray(self.source_affine)
        aff = src @ nio.inv_ornt_aff(np.asarray(self.ornt), self.source_shape)
        scale = np.array(self.oriented_shape, float) / np.array(self.shape, float)
        working = np.diag([*scale, 1.0])
        working[:3, 3] = (scale - 1.0) / 2.0
        return aff @ working


def resize_volume(t: torch.Tensor, shape: Sequence[int], is_label: bool) -> torch.Tensor:
    """Resize a 3D tensor (or ``[C, H, W, D]``) to ``shape`` on its own device, as float32: trilinear for
    images, nearest for labels."""
    if tuple(t.shape[-3:]) == tuple(shape):
        return t
    batched = t.float()[None, None] if t.ndim == 3 else t.float()[None]
    if is_label:
        out = F.interpolate(batched, size=tuple(shape), mode="nearest-exact")
    else:
        out = F.interpolate(batched, size=tuple(shape), mode="trilinear", align_corners=False)
    return out[0, 0] if t.ndim == 3 else out[0]


def _resize(x: np.ndarray, shape: Sequence[int], is_label: bool) -> np.ndarray:
    """:func:`resize_volume` of a numpy array, in its own dtype."""
    if tuple(x.shape[-3:]) == tuple(shape):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return resize_volume(t, shape, is_label).numpy().astype(x.dtype)


def to_grid(x: np.ndarray, affine: np.ndarray, orientation: str | None = "RAS",
            spacing: Sequence[float] | None = None, is_label: bool = False,
            source: str | Path = "volume", contiguous: bool = True) -> tuple[np.ndarray, GridMeta]:
    """``(H, W, D)`` or ``[C, H, W, D]`` volume -> the working grid (``orientation``, then ``spacing``).
    ``contiguous=False`` may return a strided view (a flipped or transposed file's own memory): for a caller
    that copies next anyway, as slicing does (nibabel reads Fortran-ordered data: a 512 x 512 x 200 CT's extra
    copy took 0.9 s).
    A grid over :data:`~datamodules.nifti_checks.MAX_VOXELS` or :data:`MAX_GROWTH` times the source's voxels
    is refused, naming ``source``: a file's spacing is wrong (a 20000-mm slice asked for 3.3 GB) or
    ``data.spacing`` too fine."""
    src_shape = tuple(int(s) for s in x.shape[-3:])
    start = nio.io_orientation(affine)
    end = nio.axcodes2ornt(orientation) if orientation else start
    ornt, inverse = nio.ornt_transform(start, end), nio.ornt_transform(end, start)
    if x.ndim == 3:
        y = nio.apply_orientation(x, ornt)
    else:
        y = np.stack([nio.apply_orientation(c, ornt) for c in x])
    oriented_shape = tuple(int(s) for s in y.shape[-3:])
    src_spacing = np.array(voxel_spacing(affine))
    # the source axis that lands on working axis i is the one whose ornt row maps to i
    oriented_spacing = tuple(float(src_spacing[list(ornt[:, 0].astype(int)).index(i)]) for i in range(3))
    if spacing is None:
        shape, out_spacing = oriented_shape, oriented_spacing
    else:
        target = list(target_spacing(spacing))
        shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(oriented_shape, oriented_spacing, target))
        grown = math.prod(shape) / max(1, math.prod(oriented_shape))
        if math.prod(shape) > MAX_VOXELS or grown > MAX_GROWTH:
            raise DataError(f"{source}: {oriented_shape} voxels of {[round(v, 4) for v in oriented_spacing]} mm "
                            f"resampled to data.spacing={target} mm make a {shape} grid ({grown:.0f}x the voxels, "
                            f"at most {MAX_GROWTH}x); the file's spacing is wrong or data.spacing too fine")
        out_spacing = tuple(n * s / m for n, s, m in zip(oriented_shape, oriented_spacing, shape))
        y = _resize(y, shape, is_label)
    meta = GridMeta(src_shape, tuple(tuple(float(v) for v in r) for r in np.asarray(affine)),
                    tuple(tuple(float(v) for v in r) for r in ornt),
                    tuple(tuple(float(v) for v in r) for r in inverse), oriented_shape, tuple(shape),
                    tuple(float(s) for s in out_spacing))
    return (np.ascontiguousarray(y) if contiguous else y), meta


def from_grid(y: np.ndarray, meta: GridMeta, is_label: bool = True, contiguous: bool = True) -> np.ndarray:
    """A volume on the working grid (``(h, w, d)`` or ``[C, h, w, d]``) -> the source voxel grid.
    ``contiguous=False``: where ``y`` is already at the source spacing, a view of it (the orientation is axis
    flips and permutations), for a caller that only writes it out (``np.savez`` streams a view in chunks):
    a CT's class probabilities are then held once, not twice."""
    y = _resize(y, meta.oriented_shape, is_label)
    inv = np.asarray(meta.inverse)
    if y.ndim == 3:
        back = nio.apply_orientation(y, inv)
    else:  # channels last, so the orientation applies to the three spatial axes of every channel at once
        back = np.moveaxis(nio.apply_orientation(np.moveaxis(y, 0, -1), inv), -1, 0)
    assert back.shape[-3:] == meta.source_shape, (back.shape, meta.source_shape)
    return np.ascontiguousarray(back) if contiguous else back
