"""Augmentation follows the run's seed (albumentations 2 keeps its own generator, which ignores
``seed_everything`` and, unseeded, draws from OS entropy: two runs with one seed used to augment differently)."""
from __future__ import annotations

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.classification import ArrayClassificationDataset
from datamodules.transforms import SliceAugment

IMAGE = np.random.default_rng(0).random((24, 24)).astype(np.float32)
MASK = (IMAGE > 0.5).astype(np.uint8)


def _stream(seed: int, n: int = 12) -> np.ndarray:
    pl.seed_everything(seed, verbose=False)
    aug = SliceAugment()  # a fresh object, as a new run builds it
    return np.stack([aug(IMAGE, MASK)[0] for _ in range(n)])


def test_same_seed_same_augmentations_other_seed_others():
    a, b, c = _stream(0), _stream(0), _stream(1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({x.tobytes() for x in a}) > 3  # it does augment


class _Slices(Dataset):
    def __init__(self) -> None:
        self.aug = SliceAugment()

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.aug(IMAGE, MASK)[0])


def _epoch(seed: int) -> torch.Tensor:
    pl.seed_everything(seed, workers=True, verbose=False)
    loader = DataLoader(_Slices(), batch_size=4, num_workers=2, shuffle=False)
    return torch.cat(list(loader))


def test_workers_reproducible_and_not_repeating_each_other():
    a, b = _epoch(3), _epoch(3)
    assert torch.equal(a, b)
    assert not torch.equal(a[:4], a[4:])  # worker 0's batch differs from worker 1's (same inputs)


def test_classification_albumentations_transform_follows_the_seed():
    images = np.random.default_rng(1).integers(0, 255, (6, 16, 16), dtype=np.uint8)

    def items(seed: int) -> torch.Tensor:
        pl.seed_everything(seed, verbose=False)
        ds = ArrayClassificationDataset(images, np.zeros(6, np.int64), transform=A.Compose([A.Rotate(limit=30, p=1.0)]))
        return torch.stack([ds[i]["image"] for i in range(6)])

    assert torch.equal(items(0), items(0)) and not torch.equal(items(0), items(1))
