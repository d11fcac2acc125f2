"""nnU-Net's CT normalisation (Isensee et al. 2021, "CTNormalization"): clip every volume to the 0.5 and
99.5 percentiles of the *training set's foreground* intensities, then z-score with that foreground's
mean and standard deviation. Volumes are cached in raw HU (``data.normalization=ct``); the statistics
are computed from the training split after caching and applied lazily when slices are read.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from datamodules.errors import DataError


def checked_ct_stats(value: object, what: str) -> tuple[float, float, float, float] | None:
    """``[lo, hi, mean, std]`` as floats (``None`` stays ``None``), or one :class:`DataError` naming ``what``:
    the statistics a checkpoint's datamodule state carries are data from a file, checked before use."""
    if value is None:
        return None
    if not (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in value)):
        raise DataError(f"{what}={value!r} is not [lo, hi, mean, std] (four finite numbers)")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def foreground_stats(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], max_voxels: int = 1_000_000,
                     seed: int = 0) -> tuple[float, float, float, float]:
    """``(p0.5, p99.5, mean, std)`` of the voxels with label > 0 (a seeded subsample of at most
    ``max_voxels``, as nnU-Net samples 10^4 per case)."""
    rng = np.random.default_rng(seed)
    per_case = max(1, max_voxels // max(1, len(images)))
    values = []
    for img, lab in zip(images, labels):
        fg = np.asarray(img)[np.asarray(lab) > 0]
        if fg.size > per_case:
            fg = rng.choice(fg, per_case, replace=False)
        values.append(fg.astype(np.float64))
    v = np.concatenate(values) if values else np.empty(0)
    if v.size == 0:
        raise DataError("data.normalization=ct needs foreground voxels in the training cases (none found)")
    lo, hi = np.percentile(v, [0.5, 99.5])
    clipped = np.clip(v, lo, hi)
    return float(lo), float(hi), float(clipped.mean()), float(max(clipped.std(), 1e-8))


class CTNormalised:
    """A lazy normalised view of a cached ``[D, ...]`` raw-HU stack (indexing and ``np.asarray`` work)."""

    def __init__(self, raw: np.ndarray, stats: Sequence[float]) -> None:
        self.raw = raw
        self.lo, self.hi, self.mean, self.std = (float(s) for s in stats)

    def _norm(self, x: np.ndarray) -> np.ndarray:
        return ((np.clip(np.asarray(x, np.float32), self.lo, self.hi) - self.mean) / self.std).astype(np.float32)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.raw.shape

    @property
    def ndim(self) -> int:
        return self.raw.ndim

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index) -> np.ndarray:
        return self._norm(self.raw[index])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._norm(self.raw)
        return out.astype(dtype) if dtype is not None else out
