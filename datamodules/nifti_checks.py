"""What a NIfTI file from elsewhere must satisfy before its voxels are read or resampled.

A file is data: its header decides how much memory a read takes, and its affine how large the working
grid becomes. Both are checked first; each failure is one :class:`DataError` naming the file.

* Size: the header's voxel count is capped (:data:`MAX_VOXELS`) and the file must hold the bytes its
  header claims: an uncompressed file by its size, a gzip one by decompressing it as a stream (only when
  the claim is large, :data:`STREAM_CHECK_BYTES`; nibabel's own read fails cheaply below it). A 1.3 KB
  file claiming 1000^3 voxels took 16 s and 4.4 GB of memory before nibabel said it was truncated.
* Affine: finite, a voxel spacing of at least :data:`MIN_SPACING_MM` on every axis, and voxel axes that
  are not (nearly) collinear. A zero or NaN spacing raised from nibabel's orientation code as a
  traceback; a singular affine (no orientation) and a 1e-6 mm spacing (the volume collapsed to one
  slice) were segmented without a word.

nibabel itself replaces a raw ``pixdim`` of 0 by 1 mm with a warning, when the affine comes from
``pixdim`` (no sform/qform); that case reaches these checks as 1 mm.
"""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from datamodules.errors import DataError

__all__ = ["MAX_VOXELS", "MIN_SPACING_MM", "STREAM_CHECK_BYTES", "check_header", "check_affine", "space_unit"]

#: the most voxels a volume (or a working grid) may hold: 2^31, 8 GiB as float32 (a 512 x 512 x 8192 CT)
MAX_VOXELS = 2 ** 31
#: the smallest voxel spacing taken as real (mm); CT and MR voxels are 0.1-10 mm
MIN_SPACING_MM = 1e-3
#: a gzip file claiming more than this many bytes is decompressed once to count them before the read
STREAM_CHECK_BYTES = 256 * 2 ** 20


def _available(path: Path, need: int) -> int:
    """How many bytes the file holds, counted up to ``need`` (decompressed for ``.gz``)."""
    if path.suffix != ".gz":
        return path.stat().st_size
    if need <= STREAM_CHECK_BYTES:
        return need
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total < need:
                chunk = fh.read(16 * 2 ** 20)
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, ValueError) as exc:  # not gzip, truncated stream: nibabel names it below too
        raise DataError(f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from None
    return total


def check_header(path: Path, img) -> None:
    """The header's claim is bounded and backed by the file's bytes (see the module docstring)."""
    shape = tuple(int(s) for s in img.shape)
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise DataError(f"NIfTI file {path}: its header claims {shape} = {voxels:.3g} voxels, more than the "
                        f"{MAX_VOXELS:.3g} a volume may hold")
    need = int(img.header.get_data_offset()) + voxels * np.dtype(img.get_data_dtype()).itemsize
    have = _available(path, need)
    if have < need:
        raise DataError(f"NIfTI file {path} is truncated: its header claims {need} bytes of voxels, the file "
                        f"holds {have}")


#: millimetres per unit of the header's ``xyzt_units`` (NIfTI's default, and ``unknown``, is mm)
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}


def space_unit(img) -> str:
    """The header's spatial unit (``meter``, ``mm``, ``micron``; ``mm`` when unset or unknown)."""
    try:
        unit = str(img.header.get_xyzt_units()[0])
    except (AttributeError, IndexError, TypeError):
        return "mm"
    return unit if unit in _MM_PER_UNIT else "mm"


def check_affine(path: Path, affine: np.ndarray, unit: str = "mm") -> None:
    """A finite affine with real voxel sizes along independent axes (see the module docstring); the
    minimum spacing is judged in mm, from the header's ``unit``."""
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise DataError(f"NIfTI file {path} has a non-finite affine (voxel-to-world matrix)")
    m = a[:3, :3]
    spacing = np.sqrt((m ** 2).sum(0))
    if spacing.min() * _MM_PER_UNIT.get(unit, 1.0) < MIN_SPACING_MM:
        raise DataError(f"NIfTI file {path}: voxel spacing {np.round(spacing, 6).tolist()} {unit}; every axis must "
                        f"be at least {MIN_SPACING_MM} mm")
    if abs(float(np.linalg.det(m))) < 1e-3 * float(np.prod(spacing)):
        raise DataError(f"NIfTI file {path} has a singular affine: its voxel axes are (nearly) collinear, so it "
                        f"has no orientation")
