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


def _patch_draws(num_workers: int) -> list[torch.Tensor]:
    from datamodules.patches3d import PatchDataset, flatten_collate
    from datamodules.slices import SliceCase

    rng = np.random.default_rng(0)
    image, label = rng.random((12, 16, 16)).astype(np.float32), (rng.random((12, 16, 16)) > 0.7).astype(np.int64)
    case = SliceCase("c0", image, label, list(range(12)), list(range(12)))
    ds = PatchDataset([case] * 4, lambda x: x, (8, 8, 8), samples=2, pos=1.0, neg=1.0, fill=0.0, flip=True)
    pl.seed_everything(0, workers=True, verbose=False)
    ds.set_random_state(0)  # as PatchVolumeDataModule.setup(): one seed, copied into every worker
    loader = DataLoader(ds, batch_size=1, num_workers=num_workers, collate_fn=flatten_collate)
    return [b["image"] for b in loader]


def test_3d_patch_workers_do_not_repeat_each_other():
    """One volume four times, two workers: each worker used to draw the crops and flips of the other (MONAI's
    generator, seeded once in the main process, was copied into both); now each re-seeds from its torch seed."""
    draws = _patch_draws(2)
    assert not torch.equal(draws[0], draws[1])  # worker 0's first item against worker 1's
    assert all(torch.equal(a, b) for a, b in zip(draws, _patch_draws(2)))  # and still reproducible


def test_flips_and_rotation_are_drawn_independently_of_each_other():
    """albumentations 2 seeds every transform of a compose with the compose's seed, so each one's first draw
    (apply or not) was the same number: the horizontal and the vertical flip came together or not at all, and
    the rotation with them (half the slices unchanged, half turned 180° and rotated; never one mirror). A net
    trained so was no better on a mirrored slice than on an unseen one, and mirror TTA lowered a liver U-Net's
    Dice from 0.793 to 0.525. Each transform now draws from its own stream: all four flip pairs occur, and
    whether the rotation applies is independent of them."""
    img = np.zeros((9, 9), np.float32)
    img[:, :3] += 1.0   # left band: a horizontal flip moves it right
    img[:2, :] += 2.0   # top band: a vertical flip moves it down; a rotation interpolates values between 0..3
    aug = SliceAugment(rotation_limit=30, p_rotate=0.5)
    counts: dict[tuple[bool, bool, bool], int] = {}
    for seed in range(400):
        torch.manual_seed(seed)
        out, _ = aug(img, (img > 0).astype(np.uint8))
        key = (bool(out[:, :3].mean() > out[:, 6:].mean()), bool(out[:2].mean() > out[7:].mean()),
               bool(not np.isin(out, [0.0, 1.0, 2.0, 3.0]).all()))
        counts[key] = counts.get(key, 0) + 1
    assert len(counts) == 8, counts  # every combination of hflip, vflip and rotation
    assert min(counts.values()) >= 25, counts  # ~50 each by chance (binomial sd ~6.6)
