"""Server-side aggregation strategies as small objects over state dicts (Flower-style).

A strategy never sees data, Lightning or a network: ``aggregate(global_state, updates, round)`` maps
the current global state dict and a list of :class:`~federation.core.messages.ClientUpdate` to the new
global state. Updates cross as deltas from the global state under Flower (``is_delta``) and as weights in
process: read them with :func:`absolute_weights`. Class attributes say what a strategy does, for the
checks that depend on it: ``averages`` (SecAgg+ allows only a sample-weighted mean), ``moves_data``,
``keeps_local``. ``client_keys`` says which state entries are exchanged (the rest stay on the client,
e.g. FedBN's batch-norm entries), ``configure_client`` gives the per-round client config, and
``state_dict``/``load_state_dict`` hold server-side state for checkpoint / resume.

* :class:`FedAvg`   - McMahan et al. 2017, Alg. 1: w <- sum_k n_k/n * w_k.
* :class:`FedProx`  - Li et al. 2020, Eq. (2): client minimises F_k(w) + mu/2 ||w - w_g||^2.
* :class:`FedBN`    - Li et al. 2021 (ICLR), Alg. 1: BN parameters and statistics stay local.
* :class:`FedAdam`, :class:`FedYogi`, :class:`FedAdagrad` - Reddi et al. 2021, Alg. 2.
* :class:`DataSharing` - paper 000 §4.1: FedAvg plus accuracy-driven shared-data allocation.
"""
from __future__ import annotations

from .base import (StateDict, Strategy, absolute_weights, bn_state_keys, strategy_class, weighted_average,
                   weighted_state_mean)
from .datasharing import DataSharing
from .fedavg import FedAvg
from .fedbn import FedBN
from .fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from .fedprox import FedProx, proximal_loss_term, proximal_term

__all__ = [
    "Strategy", "FedAvg", "FedProx", "FedBN", "FedOpt", "FedAdam", "FedYogi", "FedAdagrad",
    "DataSharing", "STRATEGIES", "weighted_average", "weighted_state_mean", "proximal_term",
    "proximal_loss_term", "bn_state_keys", "StateDict", "absolute_weights", "strategy_class",
]

#: a name index (tests keep it one-to-one with configs/federation/strategy/*.yaml); runs build the ``_target_``
STRATEGIES: dict[str, type[Strategy]] = {
    c.name: c for c in (FedAvg, FedProx, FedBN, FedAdam, FedYogi, FedAdagrad, DataSharing)
}
