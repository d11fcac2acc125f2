"""Non-IID partitioners and per-site feature shift.

Every partitioner is a pure function of (labels / size, seed): it returns one sorted ``int64`` index
array per client, the arrays are disjoint and together cover exactly the given indices (pass the
indices left after :meth:`federation.core.sharing.SharedPool.carve` so no client owns shared data).

* :func:`iid`, :func:`quantity_skew` (same distribution, different volumes - paper 000 §5.1 Fig. 3),
  :func:`dirichlet` label skew (NIID-Bench's per-class Dirichlet split, which skews sizes too), :func:`pathological` (paper 000 §5.1: 80 % of a
  client's data from k randomly chosen classes, 20 % from the rest, equal sizes; k = 1, 2) and
  :func:`by_group` (natural partition by site) and :func:`remote_sites` (a real deployment: named sites
  whose data the server never holds).
* :data:`PARTITIONERS`: every partitioner by name (a parameter that belongs to one of them but not to the
  configured one is dropped with a warning, so switching partitioner on the command line just works).
* :class:`FeatureShift` / :func:`feature_skew_params`: per-site intensity transforms (feature skew).
Partial labels live in :mod:`federation.core.partial_labels`, reports in :mod:`federation.core.partition_report`
(both re-exported here).
"""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .partial_labels import label_mask, mask_unannotated, partial_label_sets
from .partition_report import partition_report

__all__ = [
    "iid", "dirichlet", "pathological", "quantity_skew", "by_group", "remote_sites", "FeatureShift",
    "feature_skew_params", "partial_label_sets", "mask_unannotated", "label_mask",
    "partition_report", "PARTITIONERS",
]


def _indices(n_or_indices: int | np.ndarray | None, n: int | None = None) -> np.ndarray:
    if n_or_indices is None:
        return np.arange(n, dtype=np.int64)
    if np.isscalar(n_or_indices):
        return np.arange(int(n_or_indices), dtype=np.int64)
    return np.asarray(n_or_indices, dtype=np.int64)


def _split_counts(idx: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    return [np.sort(p) for p in np.split(idx, np.cumsum(counts)[:-1])]


def _largest_remainder(p: np.ndarray, total: int) -> np.ndarray:
    raw = p / p.sum() * total
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(-(raw - out), kind="stable")[: total - out.sum()]] += 1
    return out


def iid(n: int | np.ndarray, num_clients: int, seed: int = 0) -> list[np.ndarray]:
    """Uniform random split of ``n`` samples (or of an index array) into equal-size shards (±1)."""
    idx = np.random.default_rng(seed).permutation(_indices(n))
    return [np.sort(p) for p in np.array_split(idx, num_clients)]


def quantity_skew(n: int | np.ndarray, num_clients: int, seed: int = 0, alpha: float = 0.5,
                  sizes: Sequence[float] | None = None, min_size: int = 1) -> list[np.ndarray]:
    """Different volumes, same distribution: random shards with sizes ~ Dir(alpha) (Li et al. 2022,
    NIID-Bench "quantity skew") or given ``sizes`` (whole counts summing to n, or fractions summing to 1; anything
    else is refused: a review found counts summing to another n silently rescaled)."""
    if sizes is None and not float(alpha) > 0:
        raise ValueError(f"alpha={alpha}: the Dirichlet concentration must be > 0")
    idx = _indices(n)
    rng = np.random.default_rng(seed)
    if sizes is not None:
        given = np.asarray(sizes, dtype=float)
        whole = bool(np.all(given == np.round(given))) and given.sum() > 1.0 + 1e-9
        if whole and int(given.sum()) != len(idx):
            raise ValueError(f"sizes={[int(x) for x in given]} sum to {int(given.sum())}, not the {len(idx)} samples "
                             f"(or volumes) to split: give counts that sum to {len(idx)}, or fractions that sum to 1")
        if not whole and abs(given.sum() - 1.0) > 1e-3:  # hand-typed thirds (0.333 x 3) are fractions
            raise ValueError(f"sizes={list(sizes)} sum to {given.sum():g}: give fractions that sum to 1, or whole "
                             f"counts that sum to {len(idx)}")
        counts = _largest_remainder(given, len(idx))
    else:
        for _ in range(1000):
            counts = _largest_remainder(rng.dirichlet(np.full(num_clients, alpha)), len(idx))
            if counts.min() >= min_size:
                break
        else:
            raise ValueError(f"no Dirichlet({alpha}) draw gave every client >= {min_size} samples")
    if len(counts) != num_clients:
        raise ValueError(f"{len(counts)} sizes for {num_clients} clients")
    return _split_counts(rng.permutation(idx), counts)


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, seed: int = 0, min_size: int = 1,
              indices: np.ndarray | None = None, max_tries: int = 100) -> list[np.ndarray]:
    """Label skew, NIID-Bench's "distribution-based label imbalance" (Li et al. 2022, after Yurochkin et al. 2019):
    for each class, its samples are split among clients with proportions ~ Dir(alpha · 1). Small alpha -> few
    classes per client, and unequal client sizes too (10 clients at alpha 0.5: 61 to 344 of 2,000 samples, a
    review); Hsu et al. 2019's variant (equal sizes, a class mix per client) is not this one. Redraws (at most
    ``max_tries``) until every client has ``min_size`` samples."""
    if not float(alpha) > 0:
        raise ValueError(f"alpha={alpha}: the Dirichlet concentration must be > 0")
    labels = np.asarray(labels)
    idx = _indices(indices, len(labels))
    lab = labels[idx]
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in np.unique(lab):
            members = rng.permutation(idx[lab == c])
            counts = _largest_remainder(rng.dirichlet(np.full(num_clients, alpha)), len(members))
            for k, chunk in enumerate(np.split(members, np.cumsum(counts)[:-1])):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise ValueError(f"Dirichlet({alpha}) gave a client < {min_size} samples in {max_tries} tries")


def pathological(labels: np.ndarray, num_clients: int, k: int, major_fraction: float = 0.8, seed: int = 0,
                 indices: np.ndarray | None = None) -> list[np.ndarray]:
    """Paper 000 §5.1: each client holds s = n // K samples, ``major_fraction`` of them from k randomly
    chosen classes (split evenly) and the rest drawn uniformly from the remaining samples of the
    other classes.

    Major classes are assigned balanced (each class is a major class of about K·k/C clients; ties
    broken at random) so the pools suffice; if a pool is short, the demand on it is scaled down and
    the shortfall filled from other classes. The n mod K left-over samples go one each to clients,
    so sizes differ by at most 1 and the union is exactly the given indices.
    """
    labels = np.asarray(labels)
    idx = _indices(indices, len(labels))
    lab = labels[idx]
    classes = np.unique(lab)
    C, K = len(classes), num_clients
    if not 1 <= k < C:
        raise ValueError(f"k must be in [1, {C - 1}], got {k}")
    rng = np.random.default_rng(seed)
    pools = [rng.permutation(idx[lab == c]) for c in classes]
    ptr = np.zeros(C, dtype=np.int64)
    s = len(idx) // K
    load = np.zeros(C)
    majors = []
    for _ in range(K):
        chosen = np.lexsort((rng.random(C), load))[:k]
        load[chosen] += 1
        majors.append(np.sort(chosen))
    quota = _largest_remainder(np.ones(k), int(round(major_fraction * s)))
    parts: list[list[np.ndarray]] = [[] for _ in range(K)]
    for c in range(C):
        demand = [(i, quota[j]) for i in range(K) for j, mc in enumerate(majors[i]) if mc == c]
        total = sum(q for _, q in demand)
        scale = min(1.0, len(pools[c]) / total) if total else 1.0
        if scale < 1.0:
            warnings.warn(f"pathological: class {classes[c]} has {len(pools[c])} samples for a major demand "
                          f"of {total}; clients get fewer than {major_fraction:.0%} from it")
        for i, q in demand:
            take = int(np.floor(q * scale))
            parts[i].append(pools[c][ptr[c]: ptr[c] + take])
            ptr[c] += take

    need = np.array([s - sum(len(p) for p in parts[i]) for i in range(K)], dtype=float)
    allowed = np.ones((K, C), dtype=bool)
    for i in range(K):
        allowed[i, majors[i]] = False
    minor = _spread(need, (np.array([len(p) for p in pools]) - ptr).astype(float), allowed, rng)
    for i in range(K):
        for c in np.flatnonzero(minor[i]):
            parts[i].append(pools[c][ptr[c]: ptr[c] + minor[i, c]])
            ptr[c] += minor[i, c]
    for i in rng.permutation(K):  # fallback (only when the other classes ran out): any class
        short = max(s - sum(len(p) for p in parts[i]), 0)
        avail = np.array([len(p) for p in pools]) - ptr
        for c, t in enumerate(rng.multivariate_hypergeometric(avail, min(short, int(avail.sum())))):
            parts[i].append(pools[c][ptr[c]: ptr[c] + t])
            ptr[c] += t
    rest = rng.permutation(np.concatenate([p[q:] for p, q in zip(pools, ptr)]))
    for j, i in enumerate(rng.permutation(K)[: len(rest)]):
        parts[i].append(rest[j: j + 1])
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def _spread(need: np.ndarray, avail: np.ndarray, allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer matrix x[i, c] >= 0, zero where not allowed, row sums <= need, column sums <= avail,
    spreading each row evenly: iterative proportional fitting towards row sums ``need`` and column
    sums proportional to ``avail``, then largest-remainder rounding within the capacities."""
    if avail.sum() <= 0 or need.sum() <= 0:
        return np.zeros(allowed.shape, dtype=np.int64)
    col = avail * min(1.0, need.sum() / avail.sum())
    x = allowed.astype(float)
    for _ in range(300):
        x *= (need / np.maximum(x.sum(1), 1e-12))[:, None]
        x *= (col / np.maximum(x.sum(0), 1e-12))[None, :]
    x = np.minimum(x, need[:, None])
    out = np.floor(x + 1e-9).astype(np.int64)
    for i in range(len(need)):  # the fitting caps cells, not rows: a row may sum past its need (a review: a
        while out[i].sum() > need[i]:  # short class pool gave [27, 5, 27] for need [22, 18, 22], then a crash)
            out[i, int(np.argmax(out[i]))] -= 1
    cap = avail.astype(np.int64) - out.sum(0)
    for i in rng.permutation(len(need)):
        for c in np.argsort(-(x[i] - out[i]), kind="stable"):
            if out[i].sum() >= need[i]:
                break
            if allowed[i, c] and cap[c] > 0:
                out[i, c] += 1
                cap[c] -= 1
    return out


def by_group(groups: Sequence | np.ndarray, indices: np.ndarray | None = None) -> list[np.ndarray]:
    """Natural partition by source/site: one client per distinct group value, in ``np.unique`` order."""
    groups = np.asarray(groups)
    idx = _indices(indices, len(groups))
    g = groups[idx]
    return [np.sort(idx[g == v]) for v in np.unique(g)]


def remote_sites(indices: np.ndarray | None, sites: Sequence[str]) -> list[np.ndarray]:
    """A deployment's sites by name: the server holds none of their data, so every part is empty (each
    SuperNode trains on its own folder, node config ``partition="all"``); the names are the client ids
    everywhere (node config ``site``, W&B keys, the store)."""
    del indices
    names = [str(s) for s in (sites or [])]
    if not names or len(set(names)) != len(names) or any(not n for n in names):
        raise ValueError(f"sites={list(sites or [])}: give distinct, non-empty site names")
    return [np.empty(0, dtype=np.int64) for _ in names]


@dataclass(frozen=True)
class FeatureShift:
    """Per-site acquisition shift applied to an image tensor (feature skew, as in FedBN's
    multi-site setting): gamma on the image's own [min, max] range, then ``x * scale + offset``,
    then Gaussian noise. Deterministic: the noise is seeded by ``seed`` and the image content."""

    intensity_offset: float = 0.0
    intensity_scale: float = 1.0
    contrast_gamma: float = 1.0
    noise_std: float = 0.0
    seed: int = 0

    def __call__(self, image: Tensor) -> Tensor:
        x = image.float()
        if self.contrast_gamma != 1.0:
            lo, hi = x.amin(), x.amax()
            span = (hi - lo).clamp_min(1e-8)
            x = ((x - lo) / span).clamp(0, 1).pow(self.contrast_gamma) * span + lo
        x = x * self.intensity_scale + self.intensity_offset
        if self.noise_std > 0:
            key = zlib.crc32(image.detach().cpu().contiguous().numpy().tobytes())
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + key) % (2**63))
            x = x + self.noise_std * torch.randn(x.shape, generator=gen).to(x.device)
        return x.to(image.dtype) if image.is_floating_point() else x


def feature_skew_params(num_clients: int, seed: int = 0, strength: float = 1.0) -> list[FeatureShift]:
    """One :class:`FeatureShift` per client: offset ~ U(±0.1 s), scale and gamma ~ exp(U(±0.2 s)),
    exp(U(±0.4 s)), noise std ~ U(0, 0.05 s), with s = ``strength`` (0 gives identities)."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, size=(num_clients, 4))
    return [FeatureShift(float(0.1 * strength * a), float(np.exp(0.2 * strength * b)),
                         float(np.exp(0.4 * strength * c)), float(0.025 * strength * (d + 1)), seed * 1000 + i)
            for i, (a, b, c, d) in enumerate(u)]


PARTITIONERS = {"iid": iid, "quantity_skew": quantity_skew, "dirichlet": dirichlet, "pathological": pathological,
                "by_group": by_group, "remote_sites": remote_sites}
