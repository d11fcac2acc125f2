"""A federation's model as it is deployed: its global weights with the entries that never left the sites
(FedBN's batch-norm layers, paper 004) filled in from the client store, either as one site runs it or, as the
server evaluated it for the run's own ``test/*``, with the mean of every client's entries.

Without this a FedBN ``global_best.pt`` segments with batch-norm statistics no client trained (the server
keeps its initial ones: FedBN never averages them)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from omegaconf import DictConfig

from federation.store import ClientStore


def mean_local_state(store: ClientStore, client_ids: list[str]) -> dict[str, torch.Tensor]:
    """The mean over ``client_ids`` of each entry the clients keep to themselves (``{}`` for FedAvg-like
    strategies, which keep none); integer entries (``num_batches_tracked``) are rounded."""
    acc: dict[str, list[torch.Tensor]] = {}
    for cid in client_ids:
        for k, v in (store.load(cid, "local_state", default=None) or {}).items():
            acc.setdefault(k, []).append(v)
    out = {}
    for k, vs in acc.items():
        mean = torch.stack([v.double() for v in vs]).mean(0)
        out[k] = mean.to(vs[0].dtype) if vs[0].is_floating_point() else mean.round().to(vs[0].dtype)
    return out


def deployed_state(run_dir: Path, run_cfg: DictConfig, state: Mapping[str, torch.Tensor],
                   site: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """``(state, what was filled in)``: ``state`` with the local-only entries of client ``site`` (a client id
    of the store, e.g. a hospital with ``partition=by_site``), else their mean over the clients; unchanged
    for a run that is no federation or whose clients keep nothing to themselves."""
    fed = run_cfg.get("federation")
    store_dir = Path(run_dir) / str(fed.get("store_dir", "client_store")) if isinstance(fed, DictConfig) else None
    if store_dir is None or not store_dir.is_dir():
        return dict(state), ""
    store = ClientStore(store_dir)
    clients = store.index()
    chosen = [site] if site in clients else clients
    local = mean_local_state(store, chosen)
    local = {k: v for k, v in local.items() if k in state}
    if not local:
        return dict(state), ""
    what = (f"client {site}'s" if chosen == [site] else f"the mean of {len(chosen)} clients'") + \
        f" {len(local)} local entries ({store_dir})"
    return {**state, **local}, what
