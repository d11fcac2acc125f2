"""Who takes part: the partition of the training set into clients, its report, and each round's sample.

The partitioners themselves are pure functions in :mod:`federation.partition`; this module calls the
configured one, writes ``partition.md`` / ``partition.json`` / ``partition.png`` (the per-client class
histogram the issue asks for) and draws each round's clients from a generator seeded by (seed, round),
so a resumed run samples the same clients as an uninterrupted one.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from engine import artifacts
from federation.errors import FederationError
from federation.partition import partition_report, plot_partition

__all__ = ["call_partitioner", "sample_clients", "round_half_up", "write_partition_report"]


def call_partitioner(pcfg: Any, labels: np.ndarray | None, groups: np.ndarray | None, remaining: np.ndarray,
                     num_clients: int | None, seed: int) -> tuple[list[str], list[np.ndarray]]:
    """Call ``federation.partition`` (a ``_target_`` config) with what its signature asks for: ``groups``
    (by-site), ``labels`` (label skew), ``seed``, ``num_clients``. Returns (client ids, index arrays).
    """
    plain = OmegaConf.to_container(pcfg, resolve=True) if isinstance(pcfg, DictConfig) else dict(pcfg)
    fn = get_method(plain.pop("_target_"))
    params = inspect.signature(fn).parameters
    if "groups" in params:
        if groups is None:
            raise FederationError("federation.partition by_site needs a multi-site datamodule (data with "
                                  "per-sample groups, e.g. datamodules.multisite.MultiSiteDataModule)")
        parts = fn(groups=groups, indices=remaining, **plain)
        ids = [str(g) for g in np.unique(groups[remaining])]
        if num_clients not in (None, len(ids)):
            raise FederationError(f"federation.num_clients={num_clients} but the data has {len(ids)} sites {ids}")
        return ids, parts
    if num_clients is None:
        raise FederationError("federation.num_clients must be set for this partitioner")
    kw = dict(plain)
    if "seed" in params:
        kw.setdefault("seed", seed)
    kw["num_clients"] = int(num_clients)
    if "labels" in params:
        if labels is None:
            raise FederationError("this partitioner needs labels")
        parts = fn(labels=labels, indices=remaining, **kw)
    else:
        parts = fn(remaining, **kw)
    return [str(i) for i in range(len(parts))], parts


def sample_clients(client_ids: list[str], per_round: int | float | None, seed: int, round: int) -> list[str]:
    """The round's clients: ``per_round`` (an int count, or a float fraction in (0, 1]) drawn without
    replacement by a generator seeded by (seed, round); returned in ``client_ids`` order."""
    n = len(client_ids)
    if per_round is None:
        k = n
    elif isinstance(per_round, float) and per_round <= 1.0:
        k = max(1, int(round_half_up(per_round * n)))
    else:
        k = int(per_round)
    k = max(1, min(n, k))
    chosen = set(np.random.default_rng([int(seed), 7919, int(round)]).choice(n, size=k, replace=False).tolist())
    return [c for i, c in enumerate(client_ids) if i in chosen]


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def write_partition_report(out: Path, labels: np.ndarray | None, parts: list[np.ndarray], client_ids: list[str],
                           pool: Any, target: str, class_names: Sequence[str] | None = None) -> Path | None:
    """``partition.md`` (table), ``partition.json`` (stats) and ``partition.png`` (histogram) in ``out``;
    returns the PNG path (``None`` when the data has no per-sample labels)."""
    if labels is None:
        return None
    names = list(class_names or [])
    if names and labels.max() >= len(names):
        names = []
    report, stats = partition_report(labels, parts, names or None)
    n_shared = 0 if pool is None else len(pool)
    shared = f"\nShared pool (server): {n_shared} samples, disjoint from all clients.\n" if n_shared else ""
    header = (f"# Partition: {target.split('.')[-1]}, {len(parts)} clients, "
              f"mean EMD {stats['mean_emd']:.3f}\n{shared}\n")
    artifacts.atomic_write_text(out / "partition.md", header + report)
    artifacts.write_json(out / "partition.json", {"clients": client_ids, **stats, "shared": n_shared})
    png = plot_partition(labels, parts, out / "partition.png", names or None,
                         title=f"Class histogram per client ({len(parts)} clients)")
    if len(parts) <= 12:
        artifacts.console.print(report)
    return Path(png)
