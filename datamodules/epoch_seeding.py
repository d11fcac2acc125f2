"""Training draws as functions of (seed, epoch, item): a resumed run repeats an uninterrupted one.

PyTorch's seeded loader draws each epoch's order from one generator that runs on through the epochs, and each
worker augments from its own stream (base seed + worker id, per fit with persistent workers), so what epoch *e*
draws depends on what every epoch before it drew, in this process. A run resumed from a checkpoint starts those
streams again: its first epoch used to draw epoch 0's order and augmentations (docs/experiments.md, "Resume"). Here:

* :class:`EpochSampler` draws epoch *e*'s order from ``(seed, e)`` alone and yields ``(e, index)`` keys, so the
  epoch travels with every index into persistent workers. It is a ``DistributedSampler`` (one replica outside
  DDP), so Lightning keeps it under DDP instead of swapping in its own, and it shards and pads as that does.
* :class:`EpochSeededDataset` seeds torch's CPU generator, NumPy's and Python's global generators from
  ``(seed, e, index)`` before it reads item ``index`` (keeping the main process's streams as they were when no
  worker reads), so an item's augmentation does not depend on which worker reads it, how many there are, or
  whether the run was resumed. Augmentations that keep their own generator re-seed from ``torch.initial_seed()``
  when it changes (:func:`datamodules.transforms.reseed_from_torch`), so they follow too.

What the *model* draws (dropout, a VAE's sampling) is re-seeded per epoch by
:class:`callbacks.epoch_seeding.EpochSeeding`, which every trainer gets (:func:`engine.builders.build_trainer`).
Written here because neither PyTorch nor Lightning offers it (Lightning's own ``set_epoch`` reaches a
``DistributedSampler`` only after the first epoch of a fit has drawn its first batch).
"""
from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

__all__ = ["EpochSampler", "EpochSeededDataset", "derive_seed", "seed_generators"]

ORDER, ITEM, MODEL = 0, 1, 2  # domain tags: the order, an item and the model's draws never share a seed


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from non-negative integer ``keys`` (NumPy's ``SeedSequence``: well mixed, stable)."""
    words = np.random.SeedSequence([int(k) % 2**63 for k in keys]).generate_state(2, np.uint32)
    return (int(words[0]) << 31 | int(words[1]) >> 1) % 2**63


def seed_generators(seed: int, cuda: bool = False) -> None:
    """Seed Python's, NumPy's and torch's CPU (and, with ``cuda``, every CUDA device's) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if cuda:
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


class EpochSeededDataset(Dataset):
    """``dataset`` read by ``(epoch, index)`` keys (plain indices read at :attr:`epoch`); each item is read with
    the global generators seeded from ``(seed, epoch, index)``."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, int(seed), int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        """The wrapped dataset's attributes (``loader.dataset.cases`` in a user's callback reads as before)."""
        if name.startswith("__") or name == "dataset":  # unpickling in a worker: no ``dataset`` yet
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _read(self, key: int | tuple[int, int]) -> Any:
        epoch, index = (int(key[0]), int(key[1])) if isinstance(key, tuple) else (self.epoch, int(key))
        seed_generators(derive_seed(ITEM, self.seed, epoch, index))
        return self.dataset[index]

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list) -> list[Any]:
        """A batch's items (the loader's fetcher asks for them at once): the main process's streams are saved
        and restored once a batch, not once an item (a profile: 0.12 ms an item against a 0.014 ms read)."""
        if torch.utils.data.get_worker_info() is not None:  # a worker's streams are its own
            return [self._read(k) for k in keys]
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            return [self._read(k) for k in keys]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


class EpochSampler(DistributedSampler):
    """Shuffled ``(epoch, index)`` keys, the order drawn from ``(seed, epoch)``; this process's shard of them
    under ``torch.distributed`` (padded to equal shards, as ``DistributedSampler``), all of them otherwise.
    ``epoch``: the epoch of the first iteration (a resumed fit's), then whatever ``set_epoch`` says."""

    def __init__(self, dataset: Dataset, seed: int, epoch: int = 0) -> None:
        ddp = dist.is_available() and dist.is_initialized()
        super().__init__(dataset, num_replicas=dist.get_world_size() if ddp else 1,
                         rank=dist.get_rank() if ddp else 0, shuffle=True, seed=int(seed))
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        gen = torch.Generator().manual_seed(derive_seed(ORDER, self.seed, self.epoch))
        order = torch.randperm(len(self.dataset), generator=gen).tolist()  # type: ignore[arg-type]
        if self.total_size > len(order):  # equal shards: repeat the head of the order, as DistributedSampler
            order += (order * (self.total_size // max(len(order), 1) + 1))[: self.total_size - len(order)]
        epoch = self.epoch
        return iter([(epoch, i) for i in order[self.rank:self.total_size:self.num_replicas]])
