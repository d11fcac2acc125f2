"""Adaptive server optimisers (Reddi et al. 2021, Alg. 2): FedAdam, FedYogi, FedAdagrad."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..messages import ClientUpdate
from .base import STAT_SUFFIXES, StateDict, weighted_state_mean
from .fedavg import FedAvg

__all__ = ["FedOpt", "FedAdam", "FedYogi", "FedAdagrad"]

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
    uses_beta2 = True  # FedAdagrad's v_t takes no beta2: its value is not checked there

    def __init__(self, eta: float = 1e-2, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, **kw: Any) -> None:
        super().__init__(**kw)
        self.eta, self.beta1, self.beta2, self.tau = float(eta), float(beta1), float(beta2), float(tau)
        if not (0 < self.eta < math.inf and 0 < self.tau < math.inf):  # a negative eta walks the model away
            raise ValueError(f"eta and tau must be finite and > 0, got eta={eta}, tau={tau}")
        if not 0 <= self.beta1 < 1 or self.uses_beta2 and not 0 <= self.beta2 < 1:
            raise ValueError(f"beta1 and beta2 must lie in [0, 1), got beta1={beta1}, beta2={beta2}")
        self.m: dict[str, Tensor] = {}
        self.v: dict[str, Tensor] = {}

    def _second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        raise NotImplementedError

    def _adaptive(self, key: str, value: Tensor) -> bool:
        return value.is_floating_point() and not key.endswith(STAT_SUFFIXES)

    def aggregate(self, global_state: Mapping[str, Tensor], updates: Sequence[ClientUpdate], round: int) -> StateDict:
        self._check_local_not_sent(updates)
        usable = self._usable(updates)
        avg = weighted_state_mean(global_state, usable, self.client_keys(global_state), self.weighted)
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
    uses_beta2 = False

    def _second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return v + d2
