"""The anatomy of the synthetic CT phantoms that :mod:`datamodules.synthetic` writes as NIfTI datasets: the
structures and their HU values (:data:`STRUCTURES`, :data:`HU`), the per-site scanner knobs (:class:`SiteParams`,
:data:`REFERENCE_SPACING`), :func:`make_phantom`, which draws one case's HU volume and structure masks (blobby
ellipsoids, tumours placed in their organs) from a seeded generator, and :func:`label_volume`, which paints chosen
structures into a uint8 label volume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.ndimage import zoom

STRUCTURES = ("liver", "spleen", "pancreas", "kidney", "liver_tumor", "kidney_tumor")
HU = {"air": -1000.0, "fat": -100.0, "muscle": 40.0, "bowel": 30.0, "bone": 700.0, "liver": 60.0,
      "spleen": 50.0, "pancreas": 40.0, "kidney": 150.0, "liver_tumor": 20.0, "kidney_tumor": 80.0}
REFERENCE_SPACING = 0.8  # mm; in-plane spacing at which the body fills the field of view


@dataclass(frozen=True)
class SiteParams:
    """Scanner/site knobs: HU' = HU * intensity_scale + intensity_offset + N(0, noise_std), and voxel
    spacing (mm, x/y/z) written to the affine; a coarser in-plane spacing also shrinks the anatomy in
    voxels, as a scanner with a larger field of view would."""

    intensity_offset: float = 0.0
    intensity_scale: float = 1.0
    noise_std: float = 10.0
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5)


def _ellipsoid(grid: tuple[np.ndarray, ...], centre: Sequence[float], radii: Sequence[float],
               rng: np.random.Generator | None = None) -> np.ndarray:
    """Boolean ellipsoid on the normalised grid; with ``rng`` the outline is made blobby by an
    angular modulation of the radius (2nd and 3rd harmonics)."""
    u = [(g - c) / r for g, c, r in zip(grid, centre, radii)]
    d2 = sum(v * v for v in u)
    if rng is None:
        return d2 <= 1.0
    theta = np.arctan2(u[1], u[0])
    a2, a3 = rng.uniform(0.03, 0.10, size=2)
    p2, p3 = rng.uniform(0, 2 * np.pi, size=2)
    wobble = 1.0 + a2 * np.sin(2 * theta + p2) + a3 * np.sin(3 * theta + p3)
    return d2 <= wobble * wobble


def make_phantom(shape: Sequence[int], rng: np.random.Generator,
                 site: SiteParams = SiteParams()) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One phantom: ``(HU volume float32 (H, W, D), {structure name: bool mask})``."""
    h, w, d = (int(s) for s in shape)
    sx, sy = (site.spacing[0] / REFERENCE_SPACING, site.spacing[1] / REFERENCE_SPACING)
    grid = (np.linspace(-1, 1, h, dtype=np.float32)[:, None, None] * sx,
            np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * sy,
            np.linspace(0, 1, d, dtype=np.float32)[None, None, :])
    j = lambda s: rng.uniform(-s, s)  # noqa: E731 - small jitter helper
    ba, bb = 0.85 + j(0.05), 0.68 + j(0.05)
    body = _ellipsoid(grid[:2], (0, 0), (ba, bb))
    wall = _ellipsoid(grid[:2], (0, 0), (ba - 0.09, bb - 0.09))
    inner = _ellipsoid(grid[:2], (0, 0), (ba - 0.14, bb - 0.14))
    body, wall, inner = (np.broadcast_to(m, (h, w, d)) for m in (body, wall, inner))
    m: dict[str, np.ndarray] = {}
    m["liver"] = _ellipsoid(grid, (-0.33 + j(0.05), -0.05 + j(0.05), 0.6 + j(0.05)),
                            (0.42 * (1 + j(0.1)), 0.38 * (1 + j(0.1)), 0.42), rng) & inner
    m["spleen"] = _ellipsoid(grid, (0.45 + j(0.04), 0.2 + j(0.04), 0.7 + j(0.05)),
                             (0.14, 0.2 * (1 + j(0.1)), 0.2), rng) & inner & ~m["liver"]
    m["pancreas"] = _ellipsoid(grid, (0.12 + j(0.04), 0.12 + j(0.03), 0.5 + j(0.05)),
                               (0.3, 0.07, 0.12), rng) & inner & ~m["liver"]
    kz = 0.3 + j(0.05)
    kidney = np.zeros((h, w, d), bool)
    for side in (-1, 1):
        kidney |= _ellipsoid(grid, (side * 0.36 + j(0.03), 0.38 + j(0.03), kz + j(0.03)),
                             (0.12 * (1 + j(0.1)), 0.16, 0.2), rng)
    m["kidney"] = kidney & inner & ~m["liver"]
    m["liver_tumor"] = _tumours(grid, m["liver"], rng, int(rng.integers(1, 4)), (0.05, 0.12))
    m["kidney_tumor"] = _tumours(grid, m["kidney"], rng, 1, (0.06, 0.1), spill=True) & inner & ~m["liver"]
    spine = np.broadcast_to(_ellipsoid(grid[:2], (0, 0.48), (0.11, 0.1)), (h, w, d))

    coarse = rng.standard_normal((8, 8, max(2, d // 6)))
    field = zoom(coarse, [n / c for n, c in zip((h, w, d), coarse.shape)], order=1)[:h, :w, :d]
    vol = np.full((h, w, d), HU["air"], np.float32)
    vol[body] = HU["fat"]
    vol[wall] = HU["muscle"]
    vol[inner] = np.where(field[inner] > 0.2, HU["bowel"], HU["fat"])
    vol[spine] = HU["bone"]
    for name in ("liver", "spleen", "pancreas", "kidney", "liver_tumor", "kidney_tumor"):
        vol[m[name]] = HU[name]
    vol = vol * site.intensity_scale + site.intensity_offset
    vol += rng.normal(0.0, site.noise_std, vol.shape).astype(np.float32) if site.noise_std > 0 else 0.0
    return vol.astype(np.float32), m


def _tumours(grid: tuple[np.ndarray, ...], organ: np.ndarray, rng: np.random.Generator, n: int,
             radius: tuple[float, float], spill: bool = False) -> np.ndarray:
    """``n`` blobby tumours centred on random organ voxels; kept inside the organ unless ``spill``
    (exophytic kidney tumours may grow out of the kidney)."""
    out = np.zeros(organ.shape, bool)
    idx = np.argwhere(organ)
    if len(idx) == 0:
        return out
    for _ in range(n):
        c = idx[rng.integers(len(idx))]
        centre = [float(g.reshape(-1)[i]) for g, i in zip(grid, c)]
        r = rng.uniform(*radius)
        out |= _ellipsoid(grid, centre, (r, r * rng.uniform(0.7, 1.3), r * 1.5), rng)
    return out if spill else out & organ


def label_volume(masks: dict[str, np.ndarray], structures: Sequence[str]) -> np.ndarray:
    """uint8 labels: ``structures[i]`` gets value ``i + 1``; organs are painted first, tumours last
    (a tumour overrides its organ). An organ without its tumour in ``structures`` includes it."""
    lab = np.zeros(next(iter(masks.values())).shape, np.uint8)
    for name in sorted(structures, key=lambda s: s.endswith("_tumor")):
        region = masks[name]
        if not name.endswith("_tumor") and f"{name}_tumor" in masks:
            region = region | masks[f"{name}_tumor"]
        lab[region] = structures.index(name) + 1
    return lab
