"""A centralised run resumed from ``last.ckpt`` ends with the weights of the same run left uninterrupted, and the
worker count changes no draw (:mod:`datamodules.epoch_seeding`, :mod:`callbacks.epoch_seeding`). Before, the
resumed fit's first epoch drew epoch 0's order and augmentations again (digits, 4 epochs resumed after 1: test
accuracy 0.989 against 0.969)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler

from datamodules.epoch_seeding import EpochSampler, EpochSeededDataset, derive_seed
from experiments.run import dispatch
from tests.cli import last_weights, run_subprocess
from tests.hydra_helpers import compose_run

# D-Net on 2D phantom slices: shuffled, augmented (rotation + flips), Adam
LITS = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "data.batch_size=8", "data.synthetic.n_cases=6",
        "data.synthetic.shape=[48,48,10]", "logger=csv", "callbacks=default", "~callbacks.rich_progress_bar",
        "~callbacks.throughput", "test=false"]
# a classifier with dropout: draws in the model too
DIGITS = ["+exp=digits_cnn", "model.width=8", "model.dropout=0.3", "logger=csv", "callbacks=default",
          "~callbacks.rich_progress_bar", "~callbacks.throughput", "test=false"]


def _run(tmp: Path, overrides: list[str]) -> dict[str, torch.Tensor]:
    dispatch(compose_run(overrides, tmp))
    return last_weights(tmp / "run")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class StopAfter(pl.Callback):
    """Stops the fit after epoch ``epoch`` (its checkpoints written), as a preempted job stops."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


def _resumed_equals_uninterrupted(tmp_path: Path, base: list[str]) -> None:
    """The same command (``max_epochs`` too: the cosine schedule's length is ``trainer.max_epochs``), stopped
    after epoch 0 and resumed, against it left alone."""
    whole = _run(tmp_path / "whole", [*base, "trainer.max_epochs=3"])
    stop = f"+callbacks.stop_after={{_target_: {__name__}.StopAfter, epoch: 0}}"
    first = _run(tmp_path / "parts", [*base, "trainer.max_epochs=3", stop])
    assert not _same(first, whole)
    resumed = _run(tmp_path / "parts", [*base, "trainer.max_epochs=3", "resume=true"])
    assert _same(resumed, whole)


def test_resumed_segmentation_run_ends_as_the_uninterrupted_one(tmp_path):
    _resumed_equals_uninterrupted(tmp_path, LITS)


def test_resumed_classifier_with_dropout_ends_as_the_uninterrupted_one(tmp_path):
    _resumed_equals_uninterrupted(tmp_path, DIGITS)


# the federation's three phantom liver sites (data=multisite_lits) trained centrally: a multi-site datamodule
MULTISITE = ["+exp=lits_dnet", "data=multisite_lits", "model.width=4", "data.batch_size=8", "logger=csv",
             "callbacks=default", "~callbacks.rich_progress_bar", "~callbacks.throughput", "test=false",
             *(f"data.sites.{s}.{k}" for s in ("hospital_a", "hospital_b", "hospital_c")
               for k in ("image_size=32", "synthetic.shape=[32,32,6]"))]


def test_resumed_multisite_run_ends_as_the_uninterrupted_one(tmp_path):
    """A review: ``MultiSiteDataModule`` had no ``seed``, so a centralised multi-site run shuffled from torch's
    global stream and its resumed first epoch drew epoch 0's order again (federated clients were seeded)."""
    _resumed_equals_uninterrupted(tmp_path, MULTISITE)


def test_worker_count_changes_no_draw(tmp_path):
    """Two workers read the items (in other processes, persistent across epochs) as the main process does."""
    alone = _run(tmp_path / "w0", [*LITS, "trainer.max_epochs=2", "data.num_workers=0"])
    two = _run(tmp_path / "w2", [*LITS, "trainer.max_epochs=2", "data.num_workers=2"])
    assert _same(alone, two)


class _Draws(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(()) + float(np.random.rand())


def test_items_draw_from_seed_epoch_and_index_only():
    ds = EpochSeededDataset(_Draws(), seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[(2, 3)]
    assert torch.equal(torch.get_rng_state(), before)  # the main process's stream is left where it was
    torch.rand(5)
    assert torch.equal(ds[(2, 3)], a)  # whatever was drawn in between
    assert not torch.equal(ds[(2, 4)], a) and not torch.equal(ds[(3, 3)], a)
    assert not torch.equal(EpochSeededDataset(_Draws(), seed=8)[(2, 3)], a)
    ds.epoch = 2
    assert torch.equal(ds[3], a)  # a plain index reads at the dataset's epoch (Lightning's overfit_batches)


def test_the_wrapper_reads_as_the_dataset_it_wraps():
    import pickle

    inner = _Draws()
    inner.cases = ["a", "b"]
    ds = EpochSeededDataset(inner, seed=1)
    assert ds.cases == ["a", "b"] and len(ds) == 10  # a callback's loader.dataset.cases
    assert pickle.loads(pickle.dumps(ds)).cases == ["a", "b"]  # as it reaches a spawned worker
    with pytest.raises(AttributeError):
        ds.missing


def test_order_depends_on_seed_and_epoch_and_shards_like_distributed_sampler():
    ds = list(range(11))
    s = EpochSampler(ds, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert {k[0] for k in e0} == {0} and {k[0] for k in e1} == {1}
    assert sorted(i for _, i in e0) == ds and [i for _, i in e0] != [i for _, i in e1]
    assert list(EpochSampler(ds, seed=3, epoch=1)) == e1  # a resumed fit's first epoch
    shards = []
    for rank in range(3):  # as under DDP: equal shards, padded by repeating the head of the order
        s = EpochSampler(ds, seed=3, epoch=1)
        s.num_replicas, s.rank = 3, rank
        s.num_samples = len(DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True))
        s.total_size = s.num_samples * 3
        shards.append([i for _, i in s])
    assert {len(x) for x in shards} == {4} and set(sum(shards, [])) == set(ds)
    gen = torch.Generator().manual_seed(derive_seed(0, 3, 1))
    order = torch.randperm(11, generator=gen).tolist()
    assert shards[0] == (order + order[:1])[0::3]


def test_a_loader_over_keys_batches_as_before():
    loader = DataLoader(EpochSeededDataset(list(range(6)), seed=0), batch_size=4,
                        sampler=EpochSampler(list(range(6)), seed=0))
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 2] and sorted(torch.cat(batches).tolist()) == list(range(6))


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32",
       "trainer.sync_batchnorm=false", "data.batch_size=4", "data.synthetic.shape=[32,32,8]"]


@pytest.mark.slow
def test_resumed_ddp_run_ends_as_the_uninterrupted_one(tmp_path):
    """Two CPU ranks (gloo) through the real command line, as on a GPU node (Lightning starts rank 1 as a copy
    of the command): stopped after epoch 0 and resumed, the run ends with the uninterrupted run's weights. Found
    by running it: the resume used to crash on rank 1, which cleared the CSV log that only rank 0 keeps."""
    args = [*LITS, *DDP, "trainer.max_epochs=3"]
    stop = "+callbacks.stop_after={_target_: tests.test_exact_resume.StopAfter, epoch: 0}"  # a new process's name
    for run_dir, extra in (("whole", []), ("parts", [stop]), ("parts", ["resume=true"])):
        done = run_subprocess("experiments.run", [*args, *extra, f"hydra.run.dir={tmp_path / run_dir}"], tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        if extra == [stop]:
            assert not _same(last_weights(tmp_path / "parts"), last_weights(tmp_path / "whole"))
            (tmp_path / "parts" / "metrics.json").unlink()  # a preempted job writes none (a finished run is kept)
    assert _same(last_weights(tmp_path / "parts"), last_weights(tmp_path / "whole"))
    with open(tmp_path / "parts" / "csv" / "metrics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["val/dice"]]
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]  # epoch 0's row kept once, none logged twice


def _ddp_worker(rank: int, out: str) -> None:
    torch.save(torch.tensor([i for _, i in EpochSampler(list(range(9)), seed=5, epoch=2)]), f"{out}.{rank}")


def test_under_ddp_each_rank_reads_its_own_shard(tmp_path):
    """Two gloo ranks: the sampler takes the world size and rank from the process group (Lightning keeps a
    DistributedSampler as it is), so the ranks split the epoch's order instead of each reading all of it."""
    from tests.gloo_ranks import spawn_two

    spawn_two(_ddp_worker, str(tmp_path / "keys"))
    r0, r1 = (torch.load(tmp_path / f"keys.{r}", weights_only=True).tolist() for r in (0, 1))
    assert len(r0) == len(r1) == 5 and set(r0) | set(r1) == set(range(9))
    order = [i for _, i in EpochSampler(list(range(9)), seed=5, epoch=2)]
    assert r0 == (order + order[:1])[0::2] and r1 == (order + order[:1])[1::2]


def test_fit_seconds_count_the_stopped_process_too(tmp_path):
    """A walkthrough: a run resumed after 2 of 3 epochs reported its last process's fit time only. The training
    time so far travels in every checkpoint (callbacks.fit_time.FitTime) and the resumed run adds its own."""
    import json

    from callbacks.fit_time import FitTime

    stop = f"+callbacks.stop_after={{_target_: {__name__}.StopAfter, epoch: 0}}"
    _run(tmp_path, [*DIGITS, "trainer.max_epochs=2", stop])
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    before = next(v["seconds"] for k, v in saved.items() if "FitTime" in k)
    assert before > 0
    _run(tmp_path, [*DIGITS, "trainer.max_epochs=2", "resume=true"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["fit_seconds"] > before
    # a review: a run that tests reloads best.ckpt's callback state after training, which doubled fit_seconds
    tested = tmp_path / "tested"
    _run(tested, [*[o for o in DIGITS if o != "test=false"], "trainer.max_epochs=2"])
    saved = torch.load(tested / "run" / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    at_last = next(v["seconds"] for k, v in saved.items() if "FitTime" in k)
    took = json.loads((tested / "run" / "metrics.json").read_text())["fit_seconds"]
    assert at_last <= took < at_last * 1.25 + 0.2, (at_last, took)
    # a review: resuming a run whose training had ended (a job requeued in its test) wrote fit_seconds ~0 and no
    # perf/*; nothing trains again, so the checkpoint's time and the earlier perf/* figures stand
    measured = tmp_path / "measured"
    done = [o for o in DIGITS if o != "~callbacks.throughput"] + ["trainer.max_epochs=1"]
    _run(measured, done)
    first = json.loads((measured / "run" / "metrics.json").read_text())
    assert first["fit_seconds"] > 0 and any(k.startswith("perf/") for k in first)
    _run(measured, [*done, "resume=true"])
    again = json.loads((measured / "run" / "metrics.json").read_text())
    assert again["fit_seconds"] >= first["fit_seconds"] * 0.9, (first["fit_seconds"], again["fit_seconds"])
    assert {k: v for k, v in again.items() if k.startswith("perf/")} == \
        {k: v for k, v in first.items() if k.startswith("perf/")}
    timer = FitTime()
    timer.load_state_dict({"seconds": "x"})                          # a crafted checkpoint's value: not taken
    assert timer.before == 0.0 and timer.seconds() == 0.0


def test_an_optimiser_state_of_another_size_is_one_line(tmp_path):
    """A review: a checkpoint whose optimiser covered other parameters (one from before the side heads of a net
    without deep supervision were frozen) was torch's "parameter group that doesn't match the size" traceback
    when Lightning restored it; one line now, naming both counts, before anything trains."""
    from lightning_modules.errors import CheckpointError

    ds_off = ["model=dnet", "model.width=4", "++model.deep_supervision=false"]
    stop = f"+callbacks.stop_after={{_target_: {__name__}.StopAfter, epoch: 0}}"
    _run(tmp_path, [*LITS, *ds_off, "trainer.max_epochs=2", stop])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    group = ckpt["optimizer_states"][0]["param_groups"][0]
    group["params"] = group["params"] + [max(group["params"]) + 1]  # as if one more parameter had been optimised
    torch.save(ckpt, last)
    with pytest.raises(CheckpointError, match=r"its optimiser state holds (\d+) parameters, this module trains (?!\1)"):
        _run(tmp_path, [*LITS, *ds_off, "trainer.max_epochs=2", "resume=true"])
