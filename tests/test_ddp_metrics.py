"""Per-case metrics under DDP: two CPU processes (gloo) each see part of every case; compute() on each
rank must give the confusion matrices of the whole data set, with case names seen only on the other rank."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist

from lightning_modules.metrics import PerCaseConfusion, confusion_matrix, quiet_if_idle, updated_anywhere
from tests.gloo_ranks import spawn_two


def _data():
    g = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (6, 8, 8), generator=g)
    target = torch.randint(0, 3, (6, 8, 8), generator=g)
    cases = ["a", "a", "b", "b", "c", "only_rank1"]
    return pred, target, cases


def _worker(rank: int, out: str, idle_rank: int | None = None) -> None:
    pred, target, cases = _data()
    mine = [i for i in range(6) if (i % 2 == rank and i != 5) or (i == 5 and rank == 1)]
    if idle_rank is not None:  # one rank sees every sample, the other none
        mine = [] if rank == idle_rank else list(range(6))
    metric = PerCaseConfusion(3)
    if mine:
        metric.update(pred[mine], target[mine], [cases[i] for i in mine])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_if_idle(metric):  # as the epoch ends call it: an idle rank does not warn
            result = metric.compute()
    assert not [w for w in caught if "before the ``update``" in str(w.message)], (rank, caught)
    torch.save({k: torch.as_tensor(v) for k, v in result.items()}, f"{out}.{rank}")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("idle_rank", [None, 0, 1], ids=["split", "rank0_idle", "rank1_idle"])
def test_per_case_confusion_syncs_across_two_ranks(tmp_path, idle_rank):
    """Also when one rank got no batch at all (an eval_slices=foreground shard without foreground): its empty
    states used to reach the all-gather as torchmetrics' 1-D float placeholder beside the others' [N, C, C]
    long matrices, and the idle rank died of SIGABRT in compute()."""
    spawn_two(_worker, str(tmp_path / "r"), idle_rank)
    pred, target, cases = _data()
    expected = {}
    for i, c in enumerate(cases):
        expected[c] = expected.get(c, 0) + confusion_matrix(pred[i:i + 1], target[i:i + 1], 3).sum(0)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"r.{rank}", weights_only=True)
        assert sorted(got) == sorted(expected)  # names from the other rank included
        for c in expected:
            assert torch.equal(got[c].long(), expected[c].long().cpu()), (rank, c)


def _updated_worker(rank: int, out: str) -> None:
    pred, target, cases = _data()
    none, one_rank = PerCaseConfusion(3), PerCaseConfusion(3)
    if rank == 1:  # rank 0 got no batch, rank 1 one: both must decide to compute()
        one_rank.update(pred[:1], target[:1], cases[:1])
    flags = (updated_anywhere(none), updated_anywhere(one_rank))
    torch.save({"flags": torch.tensor(flags)}, f"{out}.{rank}")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_updated_anywhere_is_the_same_decision_on_every_rank(tmp_path):
    """An epoch-end skips compute() for a metric no batch reached, on all ranks together or on none."""
    spawn_two(_updated_worker, str(tmp_path / "r"))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"r.{rank}", weights_only=True)
        assert got["flags"].tolist() == [False, True], rank


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(i)


def _sampler_worker(rank: int, out: str) -> None:
    from torch.utils.data import DistributedSampler

    from datamodules.loaders import SplitLoadersMixin

    dm = SplitLoadersMixin()
    dm.batch_size, dm.num_workers, dm.val_dataset, dm.test_dataset = 2, 0, _Items(5), _Items(1)
    val = dm.val_dataloader()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test = dm.test_dataloader()
    seen = torch.cat(list(val)).tolist()
    kept = isinstance(val.sampler, DistributedSampler)  # Lightning replaces any other sampler under DDP
    torch.save({"seen": torch.tensor(seen), "kept": torch.tensor(kept),
                "test_plain": torch.tensor(not isinstance(test.sampler, DistributedSampler)),
                "warned": torch.tensor(any("scored twice" in str(w.message) for w in caught))}, f"{out}.{rank}")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_validation_and_test_items_are_each_scored_on_one_rank(tmp_path):
    """Found by a review: Lightning's DistributedSampler pads every rank to the same length by repeating items,
    so DDP's synced val/test metrics counted some twice (BreastMNIST's 156 test images on 8 ranks scored 160).
    5 items on 2 ranks are now 3 + 2, none twice; 1 item on 2 ranks keeps Lightning's padding, with a warning."""
    spawn_two(_sampler_worker, str(tmp_path / "s"))
    got = [torch.load(tmp_path / f"s.{rank}", weights_only=True) for rank in (0, 1)]
    assert sorted(got[0]["seen"].tolist() + got[1]["seen"].tolist()) == [0, 1, 2, 3, 4]
    assert [len(g["seen"]) for g in got] == [3, 2]
    assert all(bool(g["kept"]) and bool(g["test_plain"]) and bool(g["warned"]) for g in got)


def _volume_worker(rank: int, out: str) -> None:
    from lightning_modules.segmentation import SegmentationModule
    from tests.test_surface_metrics import _Threshold3d, _volume_batch

    module = SegmentationModule(_Threshold3d(), {"_target_": "lightning_modules.losses.hybrid.HybridCEDiceLoss"},
                                num_classes=2, class_names=["background", "organ"])
    module.log = lambda *a, **k: None
    module.test_step(_volume_batch(f"case{rank}", shift=rank), 0)  # each rank holds one whole case
    module.on_test_epoch_end()
    torch.save({c: torch.tensor([s.get("hd95", -1.0), s.get("dice", -1.0)])
                for c, s in module.test_per_case.items()}, f"{out}.{rank}")


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_3d_hd95_of_every_ranks_cases_under_ddp(tmp_path):
    """A review: test HD95 / NSD were dropped under DDP for 3D runs too, though a 3D item is a whole case on one
    rank; each rank now scores its cases and the scores are gathered, so both ranks hold both cases' HD95."""
    spawn_two(_volume_worker, str(tmp_path / "v"))
    for rank in (0, 1):
        got = torch.load(tmp_path / f"v.{rank}", weights_only=True)
        assert sorted(got) == ["case0", "case1"], rank
        assert got["case0"][0] == 0.0 and got["case1"][0] == pytest.approx(3.0), (rank, got)
