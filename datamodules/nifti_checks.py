"""What a NIfTI file from elsewhere must satisfy before its voxels are read or resampled.

A file is data: its header decides how much memory a read takes, and its affine how large the working
grid becomes. Both are checked first; each failure is one :class:`DataError` naming the file.

* Size: the header's voxel count is capped (:data:`MAX_VOXELS`) and the file must hold the bytes its
  header claims: an uncompressed file by its size, a gzip one by decompressing it (only when the claim is
  large, :data:`STREAM_CHECK_BYTES`; nibabel's own read fails cheaply below it) into the buffer the voxels
  are then taken from, so it is decompressed once. A 1.3 KB file claiming 1000^3 voxels took 16 s and
  4.4 GB of memory before nibabel said it was truncated.
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

__all__ = ["MAX_VOXELS", "MIN_SPACING_MM", "STREAM_CHECK_BYTES", "check_header", "check_affine", "space_unit",
           "affine_mm"]

#: the most voxels a volume (or a working grid) may hold: 2^31, 8 GiB as float32 (a 512 x 512 x 8192 CT)
MAX_VOXELS = 2 ** 31
#: the smallest voxel spacing taken as real (mm); CT and MR voxels are 0.1-10 mm
MIN_SPACING_MM = 1e-3
#: a gzip file claiming more than this many bytes is decompressed once to count them before the read
STREAM_CHECK_BYTES = 256 * 2 ** 20


def _stream_gz(path: Path, need: int) -> tuple[int, np.ndarray]:
    """Decompress up to ``need`` bytes of a gzip file into an uninitialised buffer: ``(bytes held, buffer)``.
    Pages are touched only as bytes arrive, so a file that claims more than it holds costs what it holds."""
    buf, total = np.empty(need, np.uint8), 0
    view = memoryview(buf)
    try:
        with gzip.open(path, "rb") as fh:
            while total < need:
                got = fh.readinto(view[total:min(need, total + 16 * 2 ** 20)])
                if not got:
                    break
                total += got
    except (OSError, EOFError, ValueError) as exc:  # not gzip, truncated stream: nibabel names it below too
        raise DataError(f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from None
    return total, buf


def _voxels(img, buf: np.ndarray) -> np.ndarray | None:
    """The scaled float32 voxels of ``img`` from its whole file's bytes, as ``np.asarray(img.dataobj,
    float32)`` reads them (nibabel's ``ArrayProxy._get_scaled``); None for a proxy of another kind."""
    from nibabel.arrayproxy import ArrayProxy
    from nibabel.volumeutils import apply_read_scaling

    proxy = img.dataobj
    if not isinstance(proxy, ArrayProxy):
        return None
    raw = np.ndarray(proxy.shape, dtype=proxy.dtype, buffer=buf, offset=int(proxy.offset), order=proxy.order)
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    slope = slope.astype(np.float32) if np.can_cast(slope, np.float32) else slope
    inter = inter.astype(np.float32) if np.can_cast(inter, np.float32) else inter
    return np.asarray(apply_read_scaling(raw, slope, inter), dtype=np.float32)


def check_header(path: Path, img) -> np.ndarray | None:
    """The header's claim is bounded and backed by the file's bytes (see the module docstring). A large
    gzip file is counted by decompressing it: its float32 voxels are returned then, so that the caller
    does not decompress it a second time (None otherwise: read them with nibabel)."""
    shape = tuple(int(s) for s in img.shape)
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise DataError(f"NIfTI file {path}: its header claims {shape} = {voxels:.3g} voxels, more than the "
                        f"{MAX_VOXELS:.3g} a volume may hold")
    # where the reader starts (a single-file NIfTI's header may say 0: nibabel then reads from byte 352)
    offset = int(getattr(img.dataobj, "offset", img.header.get_data_offset()))
    need = offset + voxels * np.dtype(img.get_data_dtype()).itemsize
    streamed = path.suffix == ".gz" and need > STREAM_CHECK_BYTES
    have, buf = _stream_gz(path, need) if streamed else (need if path.suffix == ".gz" else path.stat().st_size, None)
    if have < need:
        raise DataError(f"NIfTI file {path} is truncated: its header claims {need} bytes of voxels, the file "
                        f"holds {have}")
    if buf is None:
        return None
    try:
        return _voxels(img, buf)
    except Exception as exc:  # noqa: BLE001 - as load_nifti's own read: one line naming the file
        raise DataError(f"cannot read NIfTI file {path}: {type(exc).__name__}: {exc}") from None


#: millimetres per unit of the header's ``xyzt_units`` (NIfTI's default, and ``unknown``, is mm)
_MM_PER_UNIT = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}


def space_unit(img) -> str:
    """The header's spatial unit (``meter``, ``mm``, ``micron``; ``mm`` when unset or unknown)."""
    try:
        unit = str(img.header.get_xyzt_units()[0])
    except (AttributeError, IndexError, TypeError):
        return "mm"
    return unit if unit in _MM_PER_UNIT else "mm"


def affine_mm(img) -> np.ndarray:
    """The voxel-to-world affine in millimetres, whatever the header's spatial unit (a walkthrough: a header
    in metres was read as mm, so resampling to 1 mm shrank the volume to one voxel and HD95 came out in m)."""
    return np.asarray(img.affine, dtype=np.float64) * np.array([[_MM_PER_UNIT[space_unit(img)]]] * 3 + [[1.0]])


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
