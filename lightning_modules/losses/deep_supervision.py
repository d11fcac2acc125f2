"""Deep-supervision sum, Eq. (2) of paper 000: L = Σ_i η_i · L(Y, P_i) over every decoder output.

The paper uses η_i ≡ 1 and supervises every output with the same, unblurred ground truth; both are the
defaults here. Nets return their heads at full resolution, main head first (docs/architecture.md).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DeepSupervisionLoss(nn.Module):
    """Apply ``base`` to each head and sum with weights ``eta`` (default all 1, as in paper 000)."""

    def __init__(self, base: nn.Module, eta: Sequence[float] | None = None) -> None:
        super().__init__()
        self.base = base
        self.eta = list(eta) if eta is not None else None

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, target)
        eta = self.eta or [1.0] * len(outputs)
        if len(eta) != len(outputs):
            raise ValueError(f"loss.eta has {len(eta)} weights but the net returned {len(outputs)} heads")
        return sum(w * self.base(o, target) for w, o in zip(eta, outputs))
