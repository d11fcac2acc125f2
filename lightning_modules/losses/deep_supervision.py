"""Deep-supervision sum, Eq. (2) of paper 000: L = Σ_i η_i · L(Y, P_i) over every decoder output.

The paper uses η_i ≡ 1 and supervises every output with the same, unblurred ground truth; both are the
defaults here. Nets return their heads at full resolution, main head first (docs/architecture.md).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class DeepSupervisionLoss(nn.Module):
    """Apply ``base`` to each head and sum with weights ``eta`` (default all 1, as in paper 000, Eq. 2).

    ``aux_weight`` (when ``eta`` is None): η_0 = 1 for the main head and η_i = ``aux_weight`` for the side
    heads, one number a hyper-parameter search can tune (hparams_search/lits_dnet_optuna.yaml).
    """

    def __init__(self, base: nn.Module, eta: Sequence[float] | None = None, aux_weight: float | None = None) -> None:
        super().__init__()
        self.base = base
        self.eta = list(eta) if eta is not None else None
        self.aux_weight = None if aux_weight is None else float(aux_weight)

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, **kw) -> torch.Tensor:
        """``kw`` (e.g. partial labels' ``label_mask``) goes to ``base`` with every head."""
        if isinstance(outputs, torch.Tensor):
            return self.base(outputs, target, **kw)
        side = 1.0 if self.aux_weight is None else self.aux_weight
        eta = self.eta or [1.0] + [side] * (len(outputs) - 1)
        if len(eta) != len(outputs):
            raise ValueError(f"loss.eta has {len(eta)} weights but the net returned {len(outputs)} heads")
        return sum(w * self.base(o, target, **kw) for w, o in zip(eta, outputs))
