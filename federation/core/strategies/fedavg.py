"""FedAvg (McMahan et al. 2017, Alg. 1): the sample-weighted mean of the exchanged entries."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor

from ..messages import ClientUpdate
from .base import StateDict, Strategy, weighted_state_mean

__all__ = ["FedAvg"]

class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017, Alg. 1): sample-weighted mean of the exchanged entries.

    Integer buffers (BN ``num_batches_tracked``) get the weighted mean rounded back to int.
    """

    name = "fedavg"
    averages = True

    def __init__(self, weighted: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.weighted = weighted

    def aggregate(self, global_state: Mapping[str, Tensor], updates: Sequence[ClientUpdate], round: int) -> StateDict:
        self._check_local_not_sent(updates)
        return weighted_state_mean(global_state, self._usable(updates), self.client_keys(global_state), self.weighted)
