"""FedBN (Li et al. 2021, Alg. 1): batch-norm parameters and statistics never leave a client."""
from __future__ import annotations

from typing import Any, Iterable

from torch import nn

from .base import bn_state_keys
from .fedavg import FedAvg

__all__ = ["FedBN", "NoBatchNorm"]


class NoBatchNorm(ValueError):
    """FedBN given a net without BatchNorm layers and no ``bn_keys``/``bn_prefixes``: raised apart from the other
    values' errors so that :func:`federation.runner.build_strategy`, which knows the model's config, names it."""


class FedBN(FedAvg):
    """FedBN (Li et al. 2021, Alg. 1): FedAvg over everything except batch-norm entries, which are
    neither sent nor aggregated. BN keys come from ``model`` (``_BatchNorm`` modules, see
    :func:`bn_state_keys`), explicit ``bn_keys`` and/or ``bn_prefixes`` (module names).

    Choice: Alg. 1 averages the shared layers uniformly (1/K), over clients of equal size in its
    experiments, where that equals FedAvg's n_k weighting. Sites of unequal size (paper 004's) are
    weighted by n_k here (``weighted=True``, the config's default), so FedBN differs from FedAvg only in
    what stays local, and SecAgg+ (a sample-weighted mean) can run it; ``weighted=false`` is Alg. 1."""

    name = "fedbn"
    keeps_local = True

    def __init__(self, model: nn.Module | None = None, bn_keys: Iterable[str] = (),
                 bn_prefixes: Iterable[str] = (), prefix: str = "", **kw: Any) -> None:
        keys = set(bn_keys) | (bn_state_keys(model, prefix) if model is not None else set())
        prefixes = tuple(bn_prefixes)
        if not keys and not prefixes:
            raise NoBatchNorm("FedBN needs a model with BatchNorm layers, bn_keys or bn_prefixes")
        super().__init__(local_keys=keys | set(kw.pop("local_keys", ())),
                         local_prefixes=prefixes + tuple(kw.pop("local_prefixes", ())), **kw)
