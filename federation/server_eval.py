"""How the federated server scores a round's global model, as plain functions of the
:class:`~federation.server.Server`, whose methods of the same names call them: whether its view of the global
model can be scored at all (:func:`global_view_untrained`: not without the sites' batch norm), every client's
validation split, the server's validation set and the pooled test set (:func:`evaluate_round`), and whether the
round's server validation ``monitor`` is the best so far (:func:`update_best`).
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Mapping

import numpy as np

from callbacks.metric_goal import goal
from federation.errors import FederationError

if TYPE_CHECKING:
    from federation.server import Server

__all__ = ["global_view_untrained", "evaluate_round", "update_best"]

log = logging.getLogger("federation.server")  # the server's logger, as before this left federation/server.py


def global_view_untrained(server: Server) -> bool:
    """Whether the server's view of the global model would carry local-only entries (FedBN's batch norm) that
    no client stored here: in a real deployment each site keeps them in its own node ``store=``, so the
    server's store stays empty and its view would be BN as initialised (mean 0, var 1). Server validation,
    test and the best round are then skipped, said once (a review: they were scored with untrained BN)."""
    if not any(server.strategy.is_local(k) for k in server.global_state) or server._stored_mean():
        return False
    if not server._untrained_said:
        server._untrained_said = True
        log.warning("%s keeps batch norm at the sites and the server's store %s holds none (each site keeps its "
                    "own node store=), so the global model has no trained batch norm: server validation, test/* "
                    "and global_best.pt are skipped, not scored with untrained BN. Score each site with its own: "
                    "client/<site>/local_val/* each round (under DP only where the sites release their metrics), "
                    "and predict ckpt=global_final.pt client=<site> after "
                    "copying that site's <store>/<site>.pt into %s", server.strategy.name, server.store.root,
                    server.store.root)
    return True


def evaluate_round(server: Server, sampled: list[str]) -> dict[str, float]:
    row: dict[str, float] = {}
    if server.global_view_untrained():  # no client's BN here: nothing to score the global model with
        return row
    mode = str(server.fed.get("eval_clients", "all"))
    eval_ids = server.client_ids if mode == "all" else (sampled if mode == "sampled" else [])
    per_client: dict[str, dict[str, float]] = {}
    for cid in eval_ids:
        loader = server.client_loader(cid, "val")
        if loader is not None:
            per_client[cid] = m = server.evaluate(server.module_for(server.global_state, cid), loader, "val")
            row.update({f"client/{cid}/{k}": v for k, v in m.items()})
    if per_client:
        for k in sorted(set.intersection(*(set(m) for m in per_client.values()))):
            vals = [m[k] for m in per_client.values() if math.isfinite(m[k])]
            if vals:
                row[f"fed/round/client_val/{k.split('/', 1)[1]}"] = float(np.mean(vals))
    module = server.module_for(server.global_state)
    if server.base.val_dataset is not None and len(server.base.val_dataset):
        m = server.evaluate(module, server.loader(server.base.val_dataset), "val")
        row.update({f"fed/round/server_val/{k.split('/', 1)[1]}": v for k, v in m.items()})
    if server.fed.get("eval_test_every_round", True):
        m = server.evaluate(module, server.loader(server.base.test_dataset), "test")
        row.update({f"fed/round/{k}": v for k, v in m.items()})
    return row


def update_best(server: Server, rnd: int, row: Mapping[str, float]) -> bool:
    """Whether the server validation ``monitor`` improved in round ``rnd`` (``server.best`` then names it).
    Its weights are written by :meth:`Server.save_best` once the round's ``server.pt`` is: a review found
    ``global_best.pt`` from a round that never completed after a stop between the two writes."""
    key = f"fed/round/server_val/{server.monitor.split('/', 1)[-1]}"
    value = row.get(key)
    scored = sorted(k.rsplit("/", 1)[-1] for k in row if k.startswith("fed/round/server_val/"))
    if value is None and scored:  # a review: module.monitor=val/hd95 kept no best round and said nothing
        raise FederationError(f"module.monitor={server.monitor} is not a validation metric the server computes "
                              f"(it has val/{', val/'.join(scored)}): no round could be chosen as the best; "
                              f"set module.monitor to one of them")
    if value is None or not math.isfinite(value):
        return False
    if server.best["value"] is None or (value > server.best["value"] if goal(server.monitor) == "max"
                                        else value < server.best["value"]):
        server.best = {"round": rnd + 1, "value": float(value), "key": key}
        return True
    return False
