"""FedProx (Li et al. 2020, Eq. 2): FedAvg on the server, a proximal term in each client's loss."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from .fedavg import FedAvg

__all__ = ["FedProx", "proximal_term", "proximal_loss_term"]

class FedProx(FedAvg):
    """FedProx (Li et al. 2020): server aggregation is FedAvg; the client adds
    :func:`proximal_term` (Eq. 2) with ``mu`` taken from :meth:`configure_client`."""

    name = "fedprox"

    def __init__(self, mu: float = 0.01, **kw: Any) -> None:
        super().__init__(**kw)
        if not math.isfinite(float(mu)) or mu < 0:  # a review: mu=nan ran as plain FedAvg (nan > 0 is False)
            raise ValueError(f"mu must be a finite number >= 0, got {mu}")
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
