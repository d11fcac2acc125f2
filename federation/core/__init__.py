"""The federation core: what a server and its clients agree on, with no Hydra, Lightning, Ray or Flower import.

* :mod:`.messages`   ``ServerMessage`` down, ``ClientUpdate`` up (weights, a sample count, scalar metrics)
  and the no-data check every transport runs on what arrived.
* :mod:`.strategies` aggregation over state dicts: FedAvg, FedProx, FedBN, FedAdam/FedYogi/FedAdagrad and
  paper 000's data sharing.
* :mod:`.sharing`    paper 000 §4.1: the server's shared pool and its accuracy-driven allocation.
* :mod:`.partition`  non-IID partitioners (IID, Dirichlet, pathological, quantity, by site), feature shift;
  :mod:`.partition_report` the partition report (a table and its statistics); :mod:`.partial_labels` per-site
  annotation.
* :mod:`.sampling`   each round's clients and every client's seed, from (seed, round, client) only.

Transports (in-process, Ray, Flower) move these objects; they never interpret weights.
"""
from .messages import ClientUpdate, DataLeakError, ServerMessage, assert_no_data, is_finite, state_schema
from .partial_labels import PartialLabels, check_partial_spec
from .partition import (
    PARTITIONERS, FeatureShift, by_group, dirichlet, feature_skew_params, iid, label_mask, mask_unannotated,
    partial_label_sets, partition_report, pathological, quantity_skew,
)
from .sampling import client_seed, sample_clients
from .sharing import SharedPool, allocate_shared, client_rng, select_shared_indices
from .strategies import (
    STRATEGIES, DataSharing, FedAdagrad, FedAdam, FedAvg, FedBN, FedOpt, FedProx, FedYogi, Strategy,
    bn_state_keys, proximal_loss_term, proximal_term, weighted_average, weighted_state_mean,
)

__all__ = [
    "ClientUpdate", "ServerMessage", "DataLeakError", "assert_no_data", "is_finite", "state_schema",
    "PartialLabels", "check_partial_spec", "PARTITIONERS", "FeatureShift", "by_group", "dirichlet", "feature_skew_params", "iid",
    "label_mask", "mask_unannotated", "partial_label_sets",
    "partition_report", "pathological", "quantity_skew", "client_seed", "sample_clients",
    "SharedPool", "allocate_shared", "client_rng", "select_shared_indices", "STRATEGIES", "DataSharing",
    "FedAdagrad", "FedAdam", "FedAvg", "FedBN", "FedOpt", "FedProx", "FedYogi", "Strategy", "bn_state_keys",
    "proximal_loss_term", "proximal_term", "weighted_average", "weighted_state_mean",
]
