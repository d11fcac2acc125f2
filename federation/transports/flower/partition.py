"""A SuperNode's own share of the data, derived on the node: no indices cross the wire.

``derive``: the local rehearsal of one partitioned dataset. Every node holds the same dataset and
recomputes the server's partition from the same seed and config (the same function,
:func:`federation.plan.split_clients`), then keeps its own part; ``tests/test_flower.py`` checks that the two
agree. ``all``: a real site: its whole local training set is its data (its validation split carved
from it with the same seeded rule).
"""
from __future__ import annotations


import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from datamodules.subset import carve_val, sample_cases
from federation.core.sampling import client_seed
from federation.errors import FederationError
from federation.plan import annotated_classes, split_clients
from federation.runner import ClientIndices

__all__ = ["derive_indices", "site_indices"]


def derive_indices(cfg: DictConfig, base: pl.LightningDataModule) -> dict[str, ClientIndices]:
    """Every client's indices, by the server's own :func:`federation.plan.split_clients`."""
    return split_clients(cfg.federation, base.train_dataset, base.test_dataset, int(cfg.seed),
                         getattr(base, "num_classes", None)).indices


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
    annotated = annotated_classes(cfg.federation, None, getattr(base, "num_classes", None)).get(client_id)
    return ClientIndices(tr, va, None, annotated)  # the site's own annotation, as the config gives it


