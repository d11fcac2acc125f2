"""A SuperNode's own share of the data, derived on the node: no indices cross the wire.

``derive``: the local rehearsal of one partitioned dataset. Every node holds the same dataset and
recomputes the server's partition from the same seed and config (the same calls, in the same order, as
:class:`federation.loop.Server`), then keeps its own part; ``tests/test_flower.py`` checks that the two
agree. ``all``: a real site: its whole local training set is its data (its validation split carved
from it with the same seeded rule).
"""
from __future__ import annotations


import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from datamodules.subset import carve_val, sample_cases, sample_groups, sample_labels
from federation.runner import ClientIndices, client_seed
from federation.errors import FederationError
from federation.plan import call_partitioner
from federation.core.sharing import SharedPool

__all__ = ["derive_indices", "site_indices"]


def derive_indices(cfg: DictConfig, base: pl.LightningDataModule) -> dict[str, ClientIndices]:
    """Every client's indices, as the server's partition makes them (``federation.loop.Server``)."""
    fed, seed = cfg.federation, int(cfg.seed)
    train = base.train_dataset
    labels, groups, cases = sample_labels(train), sample_groups(train), sample_cases(train)
    remaining = np.arange(len(train), dtype=np.int64)
    frac = float(OmegaConf.select(cfg, "federation.shared_fraction", default=0.0) or 0.0)
    if frac > 0:
        _, remaining = SharedPool.carve(remaining, frac, seed, labels=labels)
    ids, parts = call_partitioner(fed.partition, labels, groups, remaining, fed.get("num_clients"), seed)
    test_groups = getattr(base.test_dataset, "groups", None)
    partial = fed.get("partial_labels") or {}
    out: dict[str, ClientIndices] = {}
    for cid, part in zip(ids, parts):
        tr, va = carve_val(part, float(fed.get("client_val_fraction", 0.2)), client_seed(seed, -1, cid, "val"), cases)
        te = None
        if test_groups is not None and cid in set(np.asarray(test_groups).tolist()):
            te = np.flatnonzero(np.asarray(test_groups) == cid)
        ann = partial.get(cid)
        out[cid] = ClientIndices(tr, va, te, None if ann is None else [int(a) for a in ann])
    return out


def site_indices(cfg: DictConfig, base: pl.LightningDataModule, client_id: str, mode: str) -> ClientIndices:
    """This node's indices: ``derive`` (rehearsal) or ``all`` (a real site's own folder)."""
    if mode == "derive":
        every = derive_indices(cfg, base)
        if client_id not in every:
            raise FederationError(f"node config site={client_id!r} is not one of the partition's clients "
                                  f"{sorted(every)[:8]}")
        return every[client_id]
    if mode != "all":
        raise FederationError(f"node config partition={mode!r}: expected 'derive' or 'all'")
    n = len(base.train_dataset)
    frac = float(OmegaConf.select(cfg, "federation.client_val_fraction", default=0.2))
    tr, va = carve_val(np.arange(n, dtype=np.int64), frac, client_seed(int(cfg.seed), -1, client_id, "val"),
                       sample_cases(base.train_dataset))
    return ClientIndices(tr, va, None, None)


