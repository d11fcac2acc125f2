"""The train/val/test loaders every datamodule shares: seeded shuffling, persistent workers, pinned memory.

A datamodule also says how *its* items are batched, so that whoever builds a loader over its datasets (a
federated client's :class:`~datamodules.subset.SubsetDataModule`, the server's evaluation, the evaluation
matrix) batches them as the datamodule itself would: :meth:`SplitLoadersMixin.collate_fn` (2D slices of
mixed sizes: padded per batch; 3D patches: the patches of several volumes flattened into one batch),
:attr:`SplitLoadersMixin.eval_batch_size` (whole 3D volumes: one per batch) and
:meth:`SplitLoadersMixin.train_eval_dataset` (the training cases as they are *evaluated*: whole volumes when
training draws random patches of them, aligned item for item with ``train_dataset``).
"""
from __future__ import annotations

import os
import signal
import warnings
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.epoch_seeding import EpochSampler, EpochSeededDataset

__all__ = ["SplitLoadersMixin", "eval_loader", "eval_sampler", "train_eval_dataset", "worker_init"]

#: the signals a scheduler sends a job to have it save and requeue (submitit's USR2, Lightning's SLURM USR1)
REQUEUE_SIGNALS = ("SIGUSR1", "SIGUSR2")


def worker_init(worker_id: int) -> None:
    """Every loader worker: leave the scheduler's requeue signals to the main process, then Lightning's worker
    seeding (which Lightning adds itself only to a loader without ``worker_init_fn``).

    SLURM signals every process of a task, and a forked worker inherits submitit's (or Lightning's) handler:
    at a preemption each worker checkpointed and requeued the job too, racing the main process for
    submitit's checkpoint file ("A temporary saved file already exists"), and the job ended instead of
    continuing (found with ``data.num_workers=2``, ``tests/test_slurm_requeue.py``)."""
    extra = os.environ.get("SUBMITIT_PREEMPT_SIGNAL")
    for name in {*REQUEUE_SIGNALS, *([f"SIG{extra}"] if extra else [])}:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning_fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


class SplitLoadersMixin:
    """``train/val/test_dataloader`` over ``self.{train,val,test}_dataset`` with ``batch_size``,
    ``num_workers`` and (optional) ``seed`` attributes. With a seed, a shuffled loader's order and its items'
    augmentation are functions of (seed, epoch, item) (:mod:`datamodules.epoch_seeding`), so runs repeat, a
    resumed fit draws what the uninterrupted one would have, and the worker count changes nothing."""

    #: batch size of validation/test loaders; None = ``batch_size`` (whole-volume 3D data: 1)
    eval_batch_size: int | None = None

    def collate_fn(self, train: bool) -> Callable[[list], Any] | None:
        """How items of this datamodule's training (``train=True``) or evaluation datasets are batched
        (None: PyTorch's default collate)."""
        return None

    def train_eval_dataset(self) -> Dataset | None:
        """The training cases as evaluated, index-aligned with ``train_dataset`` (validation splits carved
        from training data read it); the training dataset itself unless a subclass says otherwise."""
        return self.train_dataset

    def make_loader(self, dataset: Dataset | None, train: bool, shuffle: bool | None = None,
                    num_workers: int | None = None, sampler: Sampler | None = None) -> DataLoader:
        """A loader over ``dataset`` batched as this datamodule batches its training / evaluation items
        (``sampler``: an unshuffled loader's, e.g. :func:`eval_sampler`'s)."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for a loader")
        shuffle = train if shuffle is None else shuffle
        seed = getattr(self, "seed", None)
        workers = self.num_workers if num_workers is None else int(num_workers)
        size = self.batch_size if train or self.eval_batch_size is None else self.eval_batch_size
        kw: dict[str, Any] = dict(batch_size=size, num_workers=workers, persistent_workers=workers > 0,
                                  collate_fn=self.collate_fn(train), pin_memory=torch.cuda.is_available(),
                                  worker_init_fn=worker_init if workers > 0 else None)
        if shuffle and seed is not None:  # order and augmentation from (seed, epoch, item): exact resume
            epoch = self._fit_epoch()
            dataset = EpochSeededDataset(dataset, int(seed), epoch)
            # a generator of its own: the loader's per-iterator base-seed draw leaves the global streams alone
            return DataLoader(dataset, sampler=EpochSampler(dataset, int(seed), epoch),
                              generator=torch.Generator().manual_seed(int(seed)), **kw)
        if sampler is not None and not shuffle:
            return DataLoader(dataset, sampler=sampler, **kw)
        return DataLoader(dataset, shuffle=shuffle, **kw)

    def _fit_epoch(self) -> int:
        """The epoch the attached trainer's fit is about to run (a resumed fit's, before Lightning's own
        ``set_epoch``, which comes after the first batch is drawn); 0 outside a fit."""
        loop = getattr(getattr(self, "trainer", None), "fit_loop", None)
        return int(loop.epoch_progress.current.processed) if loop is not None else 0

    def train_dataloader(self) -> DataLoader:
        return self.make_loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.make_loader(self.val_dataset, train=False, sampler=eval_sampler(self.val_dataset))

    def test_dataloader(self) -> DataLoader:
        return self.make_loader(self.test_dataset, train=False, sampler=eval_sampler(self.test_dataset))


def eval_sampler(dataset: Dataset | None) -> Sampler | None:
    """Under DDP, each validation/test item on exactly one rank (Lightning's ``UnrepeatedDistributedSampler``,
    which Lightning then leaves in place); ``None`` (Lightning's own sampler) outside DDP.

    Lightning's default ``DistributedSampler`` pads every rank to the same length by repeating items, so the
    synced metrics counted some images twice (a review: BreastMNIST's 156 test images on 8 ranks scored 160).
    Ranks may differ by one batch: safe in evaluation, where DDP syncs buffers on the first forward only and
    every metric here reduces at the epoch's end. With fewer items than ranks a rank would run no batch at all
    (the epoch-end sync would wait for it): Lightning's padding stays, with a warning."""
    if dataset is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world = torch.distributed.get_world_size()
    if world < 2:
        return None
    if len(dataset) < world:
        warnings.warn(f"{len(dataset)} evaluation items on {world} ranks: some are scored twice (every rank "
                      f"needs one)", stacklevel=2)
        return None
    from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=torch.distributed.get_rank(), shuffle=False)


def eval_loader(dm: Any, dataset: Dataset) -> DataLoader:
    """An in-process evaluation loader (no workers, no shuffle) over ``dataset``, batched as ``dm``
    batches evaluation items; a datamodule without :class:`SplitLoadersMixin` gets the default collate."""
    if isinstance(dm, SplitLoadersMixin):
        return dm.make_loader(dataset, train=False, shuffle=False, num_workers=0)
    return DataLoader(dataset, batch_size=int(getattr(dm, "batch_size", 32)), shuffle=False)


def train_eval_dataset(dm: Any) -> Dataset:
    """``dm.train_eval_dataset()`` where the datamodule defines it, else its ``train_dataset``."""
    fn = getattr(dm, "train_eval_dataset", None)
    view = fn() if callable(fn) else None
    return dm.train_dataset if view is None else view
