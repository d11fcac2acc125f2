"""Data-sharing strategy of paper 000 §4.1 (shared-dataset distribution by client accuracy).

The server holds a small shared dataset (step 1), carved out of the training data *before* the
clients' partitions are drawn, so it is disjoint from every client (:class:`SharedPool`). After a
round, each client reports its accuracy; the server sends ``m_i`` shared samples to every client whose
accuracy is below the average (step 7):

    m_i = i * n,   i = (acc_avg - acc_i) / (acc_avg - acc_min)        (paper 000 §4.1, step 7)

with n the shared-dataset size; clients with ``acc_i >= acc_avg`` receive nothing. Interpretation
choices (documented and tested):

* ``m_i`` is floored to an integer (``floor(i * n)``, with a 1e-9 guard against round-off).
* The worst client has ``i = 1`` and therefore receives the *whole* shared set.
* If ``acc_avg == acc_min`` (all accuracies equal), nobody is below the average: everyone gets 0.
* Experiments in §5.1 compare "non-distributed" (``mode="none"``: 0 for all), "all-distributed"
  (``mode="all"``: n for all) and "part-distributed" (``mode="part"``: the formula).
"""
from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np

__all__ = ["SharingMode", "allocate_shared", "select_shared_indices", "client_rng", "SharedPool"]

SharingMode = Literal["none", "part", "all"]
_EPS = 1e-12


def allocate_shared(accuracies: Mapping[str, float], n_shared: int, mode: SharingMode = "part") -> dict[str, int]:
    """Number of shared samples each client receives (paper 000 §4.1 step 7).

    Args:
        accuracies: client id -> accuracy reported after the last local training.
        n_shared: size n of the shared dataset.
        mode: ``"none"`` (0 for all), ``"all"`` (n for all), ``"part"`` (the paper's formula).

    Example: ``{a: .9, b: .7, c: .5}``, n=100 -> avg .7, min .5 -> ``{a: 0, b: 0, c: 100}``.
    """
    if n_shared < 0:
        raise ValueError(f"n_shared must be >= 0, got {n_shared}")
    if mode == "none":
        return {cid: 0 for cid in accuracies}
    if mode == "all":
        return {cid: int(n_shared) for cid in accuracies}
    if mode != "part":
        raise ValueError(f"mode must be 'none', 'part' or 'all', got {mode!r}")
    if not accuracies:
        return {}
    values = [float(a) for a in accuracies.values()]
    if not all(0.0 <= v <= 1.0 for v in values):  # NaN fails too; a client's -1e300 took the whole pool
        raise ValueError(f"accuracies must lie in [0, 1], got {dict(accuracies)}")
    acc_avg = sum(values) / len(values)
    acc_min = min(values)
    spread = acc_avg - acc_min
    out: dict[str, int] = {}
    for cid, acc in accuracies.items():
        if spread <= _EPS or float(acc) >= acc_avg - _EPS:
            out[cid] = 0  # at/above average (or all equal): no shared data
        else:
            i = (acc_avg - float(acc)) / spread
            out[cid] = min(int(n_shared), int(math.floor(i * n_shared + 1e-9)))
    return out


def client_rng(seed: int, client_id: str, round: int = 0) -> np.random.Generator:
    """Generator that depends only on (seed, client id, round): independent of call order."""
    return np.random.default_rng([int(seed), zlib.crc32(client_id.encode()), int(round)])


def select_shared_indices(
    shared_pool_indices: np.ndarray, m: int, rng: np.random.Generator | int
) -> np.ndarray:
    """Choose ``min(m, len(pool))`` shared samples uniformly without replacement (sorted).

    The selection is the first ``m`` entries of a seeded permutation of the pool, so with the same
    seed the subsets are nested: a client whose allocation grows keeps its previous samples.
    ``rng`` is a generator or an int seed; the same seed gives the same selection.
    """
    pool = np.asarray(shared_pool_indices, dtype=np.int64)
    m = max(0, min(int(m), len(pool)))
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(int(rng))
    return np.sort(gen.permutation(pool)[:m])


@dataclass(frozen=True, eq=False)
class SharedPool:
    """The server's shared dataset (paper 000 §4.1 step 1): indices into the full training set.

    Build it with :meth:`carve` before partitioning; pass the returned remaining indices to a
    partitioner so no client ever owns a shared sample.
    """

    indices: np.ndarray
    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        idx = np.array(self.indices, dtype=np.int64, copy=True)
        if len(np.unique(idx)) != len(idx):
            raise ValueError("shared pool indices must be unique")
        idx.setflags(write=False)
        object.__setattr__(self, "indices", idx)

    def __len__(self) -> int:
        return len(self.indices)

    @classmethod
    def carve(
        cls,
        n_or_indices: int | np.ndarray,
        fraction: float,
        seed: int = 0,
        labels: np.ndarray | None = None,
        cases: np.ndarray | None = None,
    ) -> tuple["SharedPool", np.ndarray]:
        """Split ``fraction`` of the samples off as the shared pool.

        Args:
            n_or_indices: dataset size (indices ``0..n-1``) or an explicit index array.
            fraction: share of the samples moved to the pool, in [0, 1).
            seed: RNG seed (reproducible).
            labels: optional label array over the *full* dataset; when given the pool is
                stratified (each class contributes ``round(fraction * count)``), so the shared set
                follows the global label distribution, the point of a shared set under label skew.
            cases: optional case (volume) id per sample over the *full* dataset: the pool then takes whole
                cases (seeded order, until ``round(fraction * n)`` samples are reached), so no case has
                slices both in the pool and with a client, whose validation split takes whole cases
                (slices of a client's own validation case sent back to it would leak into its training).
                Takes precedence over ``labels``.

        Returns:
            ``(pool, remaining)``: the pool and the sorted indices left for the clients.
        """
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        idx = np.arange(n_or_indices) if np.isscalar(n_or_indices) else np.asarray(n_or_indices, dtype=np.int64)
        rng = np.random.default_rng(seed)
        if cases is not None:
            case_of = np.asarray(cases)[idx]
            names, counts = np.unique(case_of, return_counts=True)
            order = rng.permutation(len(names))
            want = int(round(fraction * len(idx)))
            k = int(np.searchsorted(np.cumsum(counts[order]), want, side="left")) + 1 if want else 0
            take = idx[np.isin(case_of, names[order[:k]])]
        elif labels is None:
            take = rng.permutation(idx)[: int(round(fraction * len(idx)))]
        else:
            lab = np.asarray(labels)[idx]
            take_parts = []
            for c in np.unique(lab):
                members = rng.permutation(idx[lab == c])
                take_parts.append(members[: int(round(fraction * len(members)))])
            take = np.concatenate(take_parts) if take_parts else np.empty(0, np.int64)
        take = np.sort(take.astype(np.int64))
        if fraction > 0 and len(take) == 0:  # a review: 10 classes x 5 samples at 0.1 rounded every class to 0
            warnings.warn(f"shared_fraction={fraction} of {len(idx)} samples gave an empty shared pool (each "
                          f"class's share rounds to 0): data sharing sends nothing", stacklevel=2)
        remaining = np.setdiff1d(idx, take)
        return cls(take, float(fraction), int(seed)), remaining
