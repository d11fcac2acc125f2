"""Server-side aggregation strategies as small objects over state dicts (Flower-style).

A strategy never sees data, Lightning or a network: ``aggregate(global_state, updates, round)`` maps
the current global state dict and a list of :class:`~federation.messages.ClientUpdate` to the new
global state. ``client_keys`` says which state entries are exchanged (the rest stay on the client,
e.g. FedBN's batch-norm entries), ``configure_client`` gives the per-round client config, and
``state_dict``/``load_state_dict`` hold server-side state for checkpoint / resume.

* :class:`FedAvg`   - McMahan et al. 2017, Alg. 1: w <- sum_k n_k/n * w_k.
* :class:`FedProx`  - Li et al. 2020, Eq. (2): client minimises F_k(w) + mu/2 ||w - w_g||^2.
* :class:`FedBN`    - Li et al. 2021 (ICLR), Alg. 1: BN parameters and statistics stay local.
* :class:`FedAdam`, :class:`FedYogi`, :class:`FedAdagrad` - Reddi et al. 2021, Alg. 2.
* :class:`DataSharing` - paper 000 §4.1: FedAvg plus accuracy-driven shared-data allocation.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .messages import ClientUpdate, ServerMessage, is_finite, state_schema
from .sharing import SharedPool, SharingMode, allocate_shared, client_rng, select_shared_indices

__all__ = [
    "Strategy", "FedAvg", "FedProx", "FedBN", "FedOpt", "FedAdam", "FedYogi", "FedAdagrad",
    "DataSharing", "STRATEGIES", "weighted_average", "fedavg", "proximal_term",
    "proximal_loss_term", "bn_state_keys",
]

StateDict = dict[str, Tensor]
_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def weighted_average(tensors: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    """sum_k w_k x_k / sum_k w_k, accumulated in float64 and cast back to the input dtype.

    Integer tensors (e.g. BN ``num_batches_tracked``) get the weighted mean *rounded* to the nearest
    integer; bool tensors the weighted majority. Zero total weight falls back to the plain mean.
    """
    w = torch.as_tensor(weights, dtype=torch.float64)
    w = torch.ones_like(w) if float(w.sum()) <= 0 else w
    w = w / w.sum()
    ref = tensors[0]
    acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
    for wk, t in zip(w.tolist(), tensors):
        acc += wk * t.detach().to(device=ref.device, dtype=torch.float64)
    if ref.dtype == torch.bool:
        return acc >= 0.5
    if not (ref.is_floating_point() or ref.is_complex()):
        return acc.round().to(ref.dtype)
    return acc.to(ref.dtype)


def _absolute(global_state: Mapping[str, Tensor], update: ClientUpdate, key: str) -> Tensor:
    value = update.weights[key]
    return global_state[key] + value.to(global_state[key].device) if update.is_delta else value


def fedavg(
    global_state: Mapping[str, Tensor], updates: Sequence[ClientUpdate], keys: Iterable[str], weighted: bool = True
) -> StateDict:
    """Pure FedAvg (McMahan et al. 2017, Alg. 1) over ``keys``; other entries copied from global.

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
            raise KeyError(f"updates from {missing} lack exchanged key {key!r}")
        new[key] = weighted_average([_absolute(global_state, u, key) for u in updates], coef)
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


class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017, Alg. 1): sample-weighted mean of the exchanged entries.

    Integer buffers (BN ``num_batches_tracked``) get the weighted mean rounded back to int.
    """

    name = "fedavg"

    def __init__(self, weighted: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.weighted = weighted

    def aggregate(self, global_state: Mapping[str, Tensor], updates: Sequence[ClientUpdate], round: int) -> StateDict:
        self._check_local_not_sent(updates)
        return fedavg(global_state, self._usable(updates), self.client_keys(global_state), self.weighted)


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): server aggregation is FedAvg; the client adds
    :func:`proximal_term` (Eq. 2) with ``mu`` taken from :meth:`configure_client`."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01, **kw: Any) -> None:
        super().__init__(**kw)
        if mu < 0:
            raise ValueError(f"mu must be >= 0, got {mu}")
        self.mu = float(mu)

    def configure_client(self, round: int, client_id: str | None = None) -> dict[str, Any]:
        return {"proximal_mu": self.mu}


def proximal_term(
    params: Mapping[str, Tensor] | nn.Module | Iterable[tuple[str, Tensor]],
    global_params: Mapping[str, Tensor], mu: float,
) -> Tensor:
    """FedProx proximal term (Li et al. 2020, Eq. 2): ``mu/2 * sum_k ||w_k - w_g,k||^2``.

    Sums over floating entries of ``params`` whose name is in ``global_params`` (so local-only
    entries such as FedBN's are skipped). ``global_params`` is treated as a constant.
    Gradient w.r.t. w is ``mu * (w - w_g)``.
    """
    items = params.named_parameters() if isinstance(params, nn.Module) else (
        params.items() if isinstance(params, Mapping) else params)
    total: Tensor | None = None
    for name, w in items:
        if name in global_params and w.is_floating_point():
            sq = (w - global_params[name].detach().to(w.device, w.dtype)).pow(2).sum()
            total = sq if total is None else total + sq
    if total is None:
        return torch.zeros(())
    return 0.5 * float(mu) * total


def proximal_loss_term(global_params: Mapping[str, Tensor], mu: float, attr: str | None = "net") -> Callable[[nn.Module], Tensor]:
    """``fn(module) -> tensor`` for ``BaseModule.add_loss_term``; uses ``getattr(module, attr)``'s
    named parameters (keys must match ``global_params``). Global tensors are cached per device."""
    cache: dict[torch.device, dict[str, Tensor]] = {}

    def fn(module: nn.Module) -> Tensor:
        target = getattr(module, attr) if attr else module
        named = dict(target.named_parameters())
        device = next(iter(named.values())).device if named else torch.device("cpu")
        if device not in cache:
            cache[device] = {k: v.detach().to(device) for k, v in global_params.items()}
        return proximal_term(named, cache[device], mu)

    return fn


class FedBN(FedAvg):
    """FedBN (Li et al. 2021, Alg. 1): FedAvg over everything except batch-norm entries, which are
    neither sent nor aggregated. BN keys come from ``model`` (``_BatchNorm`` modules, see
    :func:`bn_state_keys`), explicit ``bn_keys`` and/or ``bn_prefixes`` (module names)."""

    name = "fedbn"

    def __init__(self, model: nn.Module | None = None, bn_keys: Iterable[str] = (),
                 bn_prefixes: Iterable[str] = (), prefix: str = "", **kw: Any) -> None:
        keys = set(bn_keys) | (bn_state_keys(model, prefix) if model is not None else set())
        prefixes = tuple(bn_prefixes)
        if not keys and not prefixes:
            raise ValueError("FedBN needs a model with BatchNorm layers, bn_keys or bn_prefixes")
        super().__init__(local_keys=keys | set(kw.pop("local_keys", ())),
                         local_prefixes=prefixes + tuple(kw.pop("local_prefixes", ())), **kw)


class FedOpt(FedAvg):
    """Adaptive server optimisation (Reddi et al. 2021, Alg. 2) over the pseudo-gradient
    ``Delta_t = avg_k(w_k) - w_t`` (sample-weighted; equal to the paper's plain mean for equal n_k):

        m_t = b1 m_{t-1} + (1 - b1) Delta_t;   v_t = (subclass rule);
        w_{t+1} = w_t + eta * m_t / (sqrt(v_t) + tau)

    m starts at 0 and v at tau^2 (Alg. 2: "v_{-1} >= tau^2"); no bias correction, as in the paper.
    Non-float entries and BN statistics (running_mean/var, num_batches_tracked) are not optimised
    parameters: they are FedAvg-averaged.
    """

    name = "fedopt"

    def __init__(self, eta: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, **kw: Any) -> None:
        super().__init__(**kw)
        self.eta, self.beta1, self.beta2, self.tau = float(eta), float(beta1), float(beta2), float(tau)
        self.m: dict[str, Tensor] = {}
        self.v: dict[str, Tensor] = {}

    def _second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        raise NotImplementedError

    def _adaptive(self, key: str, value: Tensor) -> bool:
        return value.is_floating_point() and not key.endswith(_STAT_SUFFIXES)

    def aggregate(self, global_state: Mapping[str, Tensor], updates: Sequence[ClientUpdate], round: int) -> StateDict:
        self._check_local_not_sent(updates)
        usable = self._usable(updates)
        avg = fedavg(global_state, usable, self.client_keys(global_state), self.weighted)
        if not usable:
            return avg
        for key in self.client_keys(global_state):
            w = global_state[key]
            if not self._adaptive(key, w):
                continue
            delta = avg[key].double() - w.double()
            m = self.m.get(key, torch.zeros_like(delta)).to(delta)
            v = self.v.get(key, torch.full_like(delta, self.tau ** 2)).to(delta)
            m = self.beta1 * m + (1 - self.beta1) * delta
            v = self._second_moment(v, delta * delta)
            avg[key] = (w.double() + self.eta * m / (v.sqrt() + self.tau)).to(w.dtype)
            self.m[key], self.v[key] = m.to(w.dtype), v.to(w.dtype)
        return avg

    def state_dict(self) -> dict[str, Any]:
        return {"m": {k: v.clone() for k, v in self.m.items()}, "v": {k: v.clone() for k, v in self.v.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m = {k: v.clone() for k, v in state.get("m", {}).items()}
        self.v = {k: v.clone() for k, v in state.get("v", {}).items()}


class FedAdam(FedOpt):
    """FedAdam: ``v_t = b2 v_{t-1} + (1 - b2) Delta_t^2`` (Reddi et al. 2021, Alg. 2)."""

    name = "fedadam"

    def _second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return self.beta2 * v + (1 - self.beta2) * d2


class FedYogi(FedOpt):
    """FedYogi: ``v_t = v_{t-1} - (1 - b2) Delta_t^2 sign(v_{t-1} - Delta_t^2)`` (Reddi et al. 2021, Alg. 2)."""

    name = "fedyogi"

    def _second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)


class FedAdagrad(FedOpt):
    """FedAdagrad: ``v_t = v_{t-1} + Delta_t^2`` (Reddi et al. 2021, Alg. 2)."""

    name = "fedadagrad"

    def _second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return v + d2


class DataSharing(FedAvg):
    """Paper 000 §4.1: FedAvg aggregation (step 6) plus shared-data allocation (step 7).

    After each aggregation the latest accuracy of every client (``metrics[metric]``) is recorded and
    the allocation ``m_i`` is recomputed with :func:`~federation.sharing.allocate_shared` over all
    clients seen so far. With ``reallocate_every_round=False`` a client's allocation is frozen the
    first time it is computed (the paper's literal loop, steps 9-11). ``configure_client`` returns
    ``num_shared`` and, when a :class:`SharedPool` is given, ``shared_indices``: a per-client
    permutation prefix of the pool (seeded by ``seed`` and client id, so a client's subset only
    grows or shrinks as ``m`` changes). Before any accuracy is known, clients get 0.
    """

    name = "datasharing"

    def __init__(self, pool: SharedPool | None = None, n_shared: int | None = None, mode: SharingMode = "part",
                 metric: str = "accuracy", seed: int = 0, reallocate_every_round: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
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
        for u in updates:
            if not is_finite(u):
                continue
            if self.metric not in u.metrics and self.mode == "part":
                raise KeyError(f"client {u.client_id} reported no {self.metric!r} metric")
            self.accuracies[u.client_id] = float(u.metrics.get(self.metric, float("nan")))
        fresh = allocate_shared(self.accuracies, self.n_shared, self.mode)
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


STRATEGIES: dict[str, type[Strategy]] = {
    c.name: c for c in (FedAvg, FedProx, FedBN, FedAdam, FedYogi, FedAdagrad, DataSharing)
}
