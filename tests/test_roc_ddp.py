"""The test AUC under DDP (two gloo processes on 127.0.0.1): every rank gets the AUC of all ranks' pixels. A
review: ``auroc`` read the positive/negative counts from this rank's own state after ``compute()`` had put it
back, so a rank that held no foreground pixel got NaN where the other got 0.81, and the ranks then logged
different ``test/*`` keys (a hang on NCCL)."""
from __future__ import annotations

import json

import torch

from tests.gloo_ranks import spawn_two


def _rank(rank: int, out: str) -> None:
    from lightning_modules.roc import BinnedMulticlassROC

    metric = BinnedMulticlassROC(2, thresholds=10)
    p1 = torch.rand(100, generator=torch.Generator().manual_seed(rank))
    target = torch.zeros(100, dtype=torch.long) if rank == 0 else (p1 > 0.5).long()  # rank 0: background only
    metric.update(torch.stack([1 - p1, p1], 1), target)
    with open(f"{out}.{rank}", "w") as fh:
        json.dump([float(v) for v in metric.auroc()], fh)


def test_every_rank_gets_the_auc_of_every_ranks_pixels(tmp_path):
    out = str(tmp_path / "auc")
    spawn_two(_rank, out)
    ranks = [json.loads(open(f"{out}.{r}").read()) for r in range(2)]
    assert ranks[0] == ranks[1] and all(v == v for v in ranks[0]), ranks  # equal and finite (no NaN)
