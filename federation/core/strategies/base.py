"""The strategy interface and the pure aggregation functions every strategy builds on."""
from __future__ import annotations

import importlib
import warnings
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..messages import ClientUpdate, ServerMessage, is_finite, state_schema

__all__ = ["Strategy", "StateDict", "STAT_SUFFIXES", "MissingFromUpdates", "weighted_average", "weighted_state_mean",
           "bn_state_keys"]


class MissingFromUpdates(KeyError):
    """The round's updates lack what the strategy aggregates by (an exchanged key, a reported metric): the clients'
    or the config's doing, said in one line by the server; any other error inside a strategy stays a bug's."""

StateDict = dict[str, Tensor]
STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def weighted_average(tensors: Sequence[Tensor], weights: Sequence[float], dtype: torch.dtype | None = None) -> Tensor:
    """sum_k w_k x_k / sum_k w_k, accumulated in float64 and cast to ``dtype`` (the global entry's; by
    default the first tensor's: a client's dtype must not become the global model's).

    Integer tensors (e.g. BN ``num_batches_tracked``) get the weighted mean *rounded* to the nearest
    integer; bool tensors the weighted majority. Zero total weight falls back to the plain mean.
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"aggregation weights must be finite and >= 0, got {w.tolist()[:5]}")
    w = torch.ones_like(w) if float(w.sum()) <= 0 else w
    w = w / w.sum()
    ref = tensors[0]
    dtype = ref.dtype if dtype is None else dtype
    acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
    for wk, t in zip(w.tolist(), tensors):  # in place: one float64 temporary per client tensor
        acc.add_(t.detach().to(device=ref.device, dtype=torch.float64), alpha=wk)
    if dtype == torch.bool:
        return acc >= 0.5
    if not (dtype.is_floating_point or dtype.is_complex):
        return acc.round().to(dtype)
    return acc.to(dtype)


def absolute_weights(global_state: Mapping[str, Tensor], update: ClientUpdate, key: str) -> Tensor:
    """A site's entry ``key`` as weights: updates cross as deltas from the global state under Flower
    (``is_delta``, what SecAgg+ and DP noise) and as weights in process; a strategy reads them through this."""
    value = update.weights[key]
    return global_state[key] + value.to(global_state[key].device) if update.is_delta else value


def weighted_state_mean(
    global_state: Mapping[str, Tensor], updates: Sequence[ClientUpdate], keys: Iterable[str], weighted: bool = True
) -> StateDict:
    """A new state: the updates' mean over ``keys`` (FedAvg's rule, McMahan et al. 2017, Alg. 1), the other
    entries copied from ``global_state``.

    Weights are n_k (``num_samples``) when ``weighted`` else uniform. Delta updates are made
    absolute against ``global_state`` first.
    """
    new = {k: v.clone() for k, v in global_state.items()}
    if not updates:
        return new
    coef = [float(u.num_samples) if weighted else 1.0 for u in updates]
    for key in keys:
        missing = [u.client_id for u in updates if key not in u.weights]
        if missing:
            raise MissingFromUpdates(f"updates from {missing} lack exchanged key {key!r}")
        new[key] = weighted_average([absolute_weights(global_state, u, key) for u in updates], coef, global_state[key].dtype)
    return new


def bn_state_keys(model: nn.Module, prefix: str = "") -> set[str]:
    """State-dict keys of every ``_BatchNorm`` module (BatchNorm1d/2d/3d, SyncBatchNorm) of ``model``:
    weight, bias, running_mean, running_var, num_batches_tracked. ``prefix`` is prepended (e.g.
    ``"net."`` when the federated state is the LightningModule's). Instance/Group/LayerNorm excluded.
    """
    keys: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            head = f"{prefix}{name}." if name else prefix
            keys.update(head + k for k in module.state_dict().keys())
    return keys


class Strategy:
    """Base strategy. ``local_keys`` / ``local_prefixes`` name state entries that never leave a
    client (they are excluded from :meth:`client_keys`, from messages and from aggregation)."""

    name = "base"
    #: ``aggregate`` uses the updates only through their sample-weighted mean (and the sites' metrics),
    #: which is all SecAgg+ (``federation.privacy=secagg``) lets the server see; a median, a trimmed mean
    #: or any rule that looks at one site's weights must leave this False, and is refused under SecAgg+
    averages = False
    #: the strategy sends server-held training samples to the sites (paper 000's data sharing)
    moves_data = False
    #: some entries always stay at the sites (FedBN's batch norm): a site's model is the global weights plus
    #: its own local entries. Also true of any strategy given ``local_keys`` / ``local_prefixes``
    keeps_local = False

    def __init__(self, local_keys: Iterable[str] = (), local_prefixes: Iterable[str] = ()) -> None:
        self._local_keys = frozenset(local_keys)
        self._local_prefixes = tuple(p.rstrip(".") + "." for p in local_prefixes)

    def is_local(self, key: str) -> bool:
        return key in self._local_keys or key.startswith(self._local_prefixes)

    def client_keys(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Keys a client sends and receives (all minus the local ones), in state-dict order."""
        return [k for k in state_dict if not self.is_local(k)]

    def configure_client(self, round: int, client_id: str | None = None) -> dict[str, Any]:
        """Per-round config sent to a client (empty by default)."""
        return {}

    def aggregate(self, global_state: Mapping[str, Tensor], updates: Sequence[ClientUpdate], round: int) -> StateDict:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Server-side state for checkpoint/resume (``torch.save``-able with weights_only)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    # helpers shared by every strategy -------------------------------------------------------
    def server_message(self, global_state: Mapping[str, Tensor], round: int, client_id: str | None = None) -> ServerMessage:
        keys = self.client_keys(global_state)
        return ServerMessage(round, {k: global_state[k] for k in keys}, self.configure_client(round, client_id))

    def client_receive(self, local_state: Mapping[str, Tensor], weights: Mapping[str, Tensor]) -> StateDict:
        """New client state: exchanged entries from ``weights``, local entries (e.g. BN) kept."""
        new = dict(local_state)
        for k, v in weights.items():
            if not self.is_local(k):
                new[k] = v.detach().clone().to(local_state[k].device) if k in local_state else v.detach().clone()
        return new

    def make_update(
        self, client_id: str, local_state: Mapping[str, Tensor], num_samples: int,
        metrics: Mapping[str, float] | None = None, global_state: Mapping[str, Tensor] | None = None,
    ) -> ClientUpdate:
        """Client-side: package the exchanged entries (as deltas when ``global_state`` is given),
        checked against the model's schema so that only model state leaves the client."""
        keys = self.client_keys(local_state)
        if global_state is None:
            weights = {k: local_state[k].detach().cpu().clone() for k in keys}
        else:
            weights = {k: (local_state[k].detach() - global_state[k].to(local_state[k].device)).cpu() for k in keys}
        return ClientUpdate(client_id, weights, int(num_samples), dict(metrics or {}),
                            is_delta=global_state is not None, schema=state_schema(local_state))

    def _usable(self, updates: Sequence[ClientUpdate]) -> list[ClientUpdate]:
        good = [u for u in updates if is_finite(u)]
        if len(good) < len(updates):
            bad = sorted(set(u.client_id for u in updates) - set(u.client_id for u in good))
            warnings.warn(f"dropping non-finite updates from clients {bad}")
        return good

    def _check_local_not_sent(self, updates: Sequence[ClientUpdate]) -> None:
        for u in updates:
            leaked = [k for k in u.weights if self.is_local(k)]
            if leaked:
                raise ValueError(f"client {u.client_id} sent local-only entries {leaked[:3]}...")


def strategy_class(target: str) -> type[Strategy]:
    """The :class:`Strategy` subclass a ``federation.strategy._target_`` names (``ValueError`` otherwise):
    what a config's strategy can do (:attr:`Strategy.averages`, ...) is asked of the class, not its name."""
    module, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"federation.strategy._target_={target!r} names no class ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"federation.strategy._target_={target!r} is not a federation.core.strategies.Strategy")
    return cls

