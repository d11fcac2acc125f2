"""Federated learning for fedmed: pure (Lightning-free) core plus the round loop.

The pure core - messages, strategies, shared-data allocation (paper 000 §4.1), partitioners and the
per-client disk store - depends only on torch / numpy and is re-exported here. The loop, clients and
executors (which need Lightning) live in their own modules and are imported explicitly.
"""
from .messages import ClientUpdate, DataLeakError, ServerMessage, assert_no_data, is_finite, state_schema
from .partition import (
    FeatureShift, by_group, dirichlet, feature_skew_params, iid, label_mask, mask_unannotated,
    merge_unannotated_to_background, partial_label_sets, partition_report, pathological, plot_partition,
    quantity_skew,
)
from .sharing import SharedPool, allocate_shared, client_rng, select_shared_indices
from .store import ClientStore
from .strategies import (
    STRATEGIES, DataSharing, FedAdagrad, FedAdam, FedAvg, FedBN, FedOpt, FedProx, FedYogi, Strategy,
    bn_state_keys, fedavg, proximal_loss_term, proximal_term, weighted_average,
)

__all__ = [
    "ClientUpdate", "ServerMessage", "DataLeakError", "assert_no_data", "is_finite", "state_schema",
    "FeatureShift", "by_group", "dirichlet", "feature_skew_params", "iid", "label_mask", "mask_unannotated",
    "merge_unannotated_to_background", "partial_label_sets", "partition_report", "pathological",
    "plot_partition", "quantity_skew", "SharedPool", "allocate_shared", "client_rng", "select_shared_indices",
    "ClientStore", "STRATEGIES", "DataSharing", "FedAdagrad", "FedAdam", "FedAvg", "FedBN", "FedOpt",
    "FedProx", "FedYogi", "Strategy", "bn_state_keys", "fedavg", "proximal_loss_term", "proximal_term",
    "weighted_average",
]
