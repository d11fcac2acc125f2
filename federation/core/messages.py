"""Typed messages exchanged between the federated server and its clients.

Only model state (parameters / buffers), a sample count and scalar metrics cross the client
boundary (Wang et al. 2021, paper 003 §2: "the model shared among the server and clients is only
weight parameters, protecting the privacy for local data"). The classes below make that checkable:
a :class:`ClientUpdate` built with a ``schema`` (the model's state-dict key -> shape map) refuses any
tensor that is not a model state entry of equal shape, and metrics must be finite-or-not Python floats,
never tensors or arrays. :func:`assert_no_data` runs the same check on an existing update.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch
from torch import Tensor

__all__ = [
    "ClientUpdate",
    "ServerMessage",
    "DataLeakError",
    "state_schema",
    "assert_no_data",
    "is_finite",
    "update_problem",
    "MAX_SAMPLES",
]

#: the largest sample count a client may report: every count up to it is exact as a float, and thousands of
#: them sum to a finite FedAvg weight (a site claiming 1.7e308 made two sites' weights overflow to a zero model)
MAX_SAMPLES = 2 ** 53

Schema = Mapping[str, tuple[int, ...]]


class DataLeakError(ValueError):
    """Raised when a message carries something that is not model state or a scalar metric."""


def state_schema(state_dict: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape map of a model state dict; the only tensors allowed to leave a client."""
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def _check_weights(weights: Mapping[str, Any], schema: Schema | None) -> None:
    for key, value in weights.items():
        if not isinstance(key, str):
            raise DataLeakError(f"weight key {key!r} is not a string")
        if not isinstance(value, Tensor):
            raise DataLeakError(f"weight {key!r} is a {type(value).__name__}, not a tensor")
        if schema is not None:
            if key not in schema:
                raise DataLeakError(f"tensor {key!r} is not a model state entry")
            if tuple(value.shape) != tuple(schema[key]):
                raise DataLeakError(
                    f"tensor {key!r} has shape {tuple(value.shape)}, model state has {tuple(schema[key])}"
                )


def _check_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise DataLeakError(f"metric key {key!r} is not a string")
        # bool is an int subclass; tensors / arrays / lists are rejected (they could carry data).
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataLeakError(f"metric {key!r} is a {type(value).__name__}, not a Python float")
        out[key] = float(value)
    return out


@dataclass(frozen=True, eq=False)
class ClientUpdate:
    """What a client uploads after local training (McMahan et al. 2017, Alg. 1 ``ClientUpdate``).

    Args:
        client_id: stable client name.
        weights: state-dict entries that leave the client: absolute values, or deltas
            ``w_local - w_global`` when ``is_delta`` is true. Stored read-only (a mapping proxy).
        num_samples: local training-set size n_k, the FedAvg weight.
        metrics: scalar metrics (e.g. ``{"accuracy": 0.9}``; the data-sharing strategy reads one).
        is_delta: whether ``weights`` are deltas against the global state that was sent.
        schema: optional key -> shape map of the model state (see :func:`state_schema`); when
            given, every tensor must be a model state entry of equal shape, which is how a test
            proves that no data tensor crosses. Not shown in repr; equality is identity (tensors).
    """

    client_id: str
    weights: Mapping[str, Tensor]
    num_samples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    is_delta: bool = False
    schema: Schema | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id:
            raise TypeError(f"client_id must be a non-empty str, got {self.client_id!r}")
        if isinstance(self.num_samples, bool) or not isinstance(self.num_samples, int):
            raise TypeError(f"num_samples must be an int, got {type(self.num_samples).__name__}")
        if not 0 <= self.num_samples <= MAX_SAMPLES:
            shown = str(self.num_samples) if len(str(self.num_samples)) < 20 else f"a {len(str(self.num_samples))}-digit int"
            raise ValueError(f"num_samples must be in [0, 2**53], got {shown}")
        _check_weights(self.weights, self.schema)
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "metrics", MappingProxyType(_check_metrics(self.metrics)))

    def __reduce__(self):  # mapping proxies do not pickle; rebuild (and re-validate) instead
        return (type(self), (self.client_id, dict(self.weights), self.num_samples, dict(self.metrics),
                             self.is_delta, None if self.schema is None else dict(self.schema)))


@dataclass(frozen=True, eq=False)
class ServerMessage:
    """What the server broadcasts at the start of a round: the global weights a client loads
    (only the keys the strategy exchanges, see ``Strategy.client_keys``), a per-round config
    (``Strategy.configure_client``: e.g. FedProx ``mu``, shared-data indices) and ``init_local``: under
    ``init_weights=`` with a strategy that keeps layers local (FedBN's batch norm), the file's entries of those
    layers, which a client without stored local state starts them from (:mod:`federation.init_local`); empty
    otherwise. Never part of the weights a reply is checked against."""

    round: int
    weights: Mapping[str, Tensor]
    config: Mapping[str, Any] = field(default_factory=dict)
    init_local: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"round must be a non-negative int, got {self.round!r}")
        _check_weights(self.weights, None)
        _check_weights(self.init_local, None)
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "config", MappingProxyType(dict(self.config)))
        object.__setattr__(self, "init_local", MappingProxyType(dict(self.init_local)))

    def __reduce__(self):
        return (type(self), (self.round, dict(self.weights), dict(self.config), dict(self.init_local)))


def assert_no_data(update: ClientUpdate, reference: Mapping[str, Tensor] | Schema) -> None:
    """Raise :class:`DataLeakError` unless every tensor of ``update`` is a state entry of the
    reference model with the same shape, and every metric is a Python float.

    ``reference`` is a state dict or a schema from :func:`state_schema`. A batch of images or masks
    can only pass if it happens to have the key *and* shape of a model entry, which a test rules out.
    """
    schema = {k: tuple(v.shape) if isinstance(v, Tensor) else tuple(v) for k, v in reference.items()}
    _check_weights(update.weights, schema)
    _check_metrics(update.metrics)


def is_finite(update: ClientUpdate) -> bool:
    """True when all floating tensors and all metrics of ``update`` are finite (no NaN / inf).

    The server should drop (and log) non-finite updates rather than poison the global model.
    """
    for value in update.weights.values():
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            return False
    return all(math.isfinite(v) for v in update.metrics.values())


def _kind(t: Tensor) -> str:
    return "bool" if t.dtype == torch.bool else "float" if (t.is_floating_point() or t.is_complex()) else "int"


def update_problem(update: ClientUpdate, sent: Mapping[str, Tensor]) -> str | None:
    """Why ``update`` cannot be aggregated with the others (``None`` when it can), judged against the
    weights ``sent`` to its client: the same keys, shapes and kind (float, integer, bool) of entries, finite
    values, and BatchNorm counters (``num_batches_tracked``) that are not negative.

    An executor drops such a client from the round with this reason, as it drops one that raised: a single
    hostile or broken site's extra, missing or reshaped entry stopped every site's federation before.
    """
    got, want = set(update.weights), set(sent)
    if got != want:
        extra, missing = sorted(got - want), sorted(want - got)
        return ("its update's entries are not those sent" + (f"; extra: {extra[:3]}" if extra else "")
                + (f"; missing: {missing[:3]}" if missing else ""))
    for key, ref in sent.items():
        value = update.weights[key]
        if tuple(value.shape) != tuple(ref.shape):
            return f"entry {key!r} has shape {tuple(value.shape)}, {tuple(ref.shape)} was sent"
        if _kind(value) != _kind(ref):
            return f"entry {key!r} is {value.dtype}, {ref.dtype} was sent"
        if key.endswith("num_batches_tracked"):
            count = value + ref if update.is_delta else value
            if bool((count < 0).any()):
                return f"entry {key!r} (a BatchNorm counter) is negative"
    return None if is_finite(update) else "returned non-finite weights or metrics"
