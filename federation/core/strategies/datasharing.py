"""Paper 000 §4.1: FedAvg plus the accuracy-driven allocation of the server's shared data."""
from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

from torch import Tensor

from ..messages import ClientUpdate, is_finite
from ..sharing import SharedPool, SharingMode, allocate_shared, client_rng, select_shared_indices
from .base import MissingFromUpdates, StateDict
from .fedavg import FedAvg

__all__ = ["DataSharing"]

class DataSharing(FedAvg):
    """Paper 000 §4.1: FedAvg aggregation (step 6) plus shared-data allocation (step 7).

    After each aggregation the allocation ``m_i`` is computed with
    :func:`~federation.core.sharing.allocate_shared` over the accuracies (``metrics[metric]``) uploaded
    *in that round* (step 6: "the average accuracy ... uploaded by each client"), so acc_avg and acc_min
    come from one global model; accuracies from earlier rounds, measured against older and weaker
    global models, are not mixed in (with client sampling they would starve every client first sampled
    later). With ``reallocate_every_round=False`` a client's allocation is frozen the first time it is
    computed (the paper's literal loop, steps 9-11; the default, as in ``federation/strategy/datashare.yaml``);
    with ``True`` each round's reporters get a fresh one and the others keep theirs. ``configure_client`` returns
    ``num_shared`` and, when a :class:`SharedPool` is given, ``shared_indices``: a per-client
    permutation prefix of the pool (seeded by ``seed`` and client id, so a client's subset only
    grows or shrinks as ``m`` changes). Before any accuracy is known, clients get 0. Which clients train each round
    is the federation's ``clients_per_round`` draw (every client by default, as the paper's loop keeps one
    selection from step 3 on; with fewer, a fresh draw each round, a choice the paper does not make).
    """

    moves_data = True
    name = "datasharing"

    def __init__(self, pool: SharedPool | None = None, n_shared: int | None = None, mode: SharingMode = "part",
                 metric: str = "accuracy", seed: int = 0, reallocate_every_round: bool = False,
                 allow_data_transfer: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.allow_data_transfer = bool(allow_data_transfer)  # a deployment moves pool samples only if true
        if pool is None and n_shared is None:
            raise ValueError("DataSharing needs a SharedPool or n_shared")
        self.pool, self.mode, self.metric, self.seed = pool, mode, metric, int(seed)
        self.n_shared = len(pool) if n_shared is None else int(n_shared)
        self.reallocate_every_round = reallocate_every_round
        self.accuracies: dict[str, float] = {}
        self.allocation: dict[str, int] = {}
        allocate_shared({}, self.n_shared, mode)  # validates mode / n

    def aggregate(self, global_state: Mapping[str, Tensor], updates: Sequence[ClientUpdate], round: int) -> StateDict:
        new = super().aggregate(global_state, updates, round)
        reported: dict[str, float] = {}
        finite = [u for u in updates if is_finite(u)]
        silent = [u.client_id for u in finite if not 0.0 <= u.metrics.get(self.metric, -1.0) <= 1.0]
        if self.mode == "part" and silent and len(silent) == len(finite):  # a wrong metric name, not a small client
            raise MissingFromUpdates(f"no client reported the {self.metric!r} metric as a score in [0, 1] (clients {silent}); "
                           f"set federation.strategy.metric to an accuracy they report (under DP a site withholds its "
                           f"metrics unless it releases them: federation.executor.dp.release_metrics, or a node's "
                           f"own dp-release-metrics)")
        if self.mode == "part" and silent:  # e.g. a client too small for a validation split
            warnings.warn(f"clients {silent} reported no {self.metric!r} in [0, 1]: left out of this round's "
                          f"allocation (they keep the shared data they had)", stacklevel=2)
        for u in finite:
            if self.mode != "part" or u.client_id not in silent:
                reported[u.client_id] = float(u.metrics.get(self.metric, float("nan")))
        # only accuracies are kept: under none/all a client without one still takes part (its allocation needs
        # no accuracy), and a NaN kept here made resume refuse the run's own server.pt (a review)
        self.accuracies.update({c: a for c, a in reported.items() if 0.0 <= a <= 1.0})
        fresh = allocate_shared(reported, self.n_shared, self.mode)
        for cid, m in fresh.items():
            if self.reallocate_every_round or cid not in self.allocation:
                self.allocation[cid] = m
        return new

    def configure_client(self, round: int, client_id: str | None = None) -> dict[str, Any]:
        m = self.allocation.get(client_id, 0) if client_id is not None else 0
        cfg: dict[str, Any] = {"num_shared": m, "sharing_mode": self.mode}
        if self.pool is not None and client_id is not None:
            cfg["shared_indices"] = select_shared_indices(self.pool.indices, m, client_rng(self.seed, client_id))
        return cfg

    def state_dict(self) -> dict[str, Any]:
        return {"accuracies": dict(self.accuracies), "allocation": dict(self.allocation)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.accuracies = {k: float(v) for k, v in state.get("accuracies", {}).items()}
        self.allocation = {k: int(v) for k, v in state.get("allocation", {}).items()}
