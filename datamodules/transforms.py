"""2D augmentation for CT slices (albumentations), applied identically to image and mask.

Random rotation (default limit 15 degrees) and horizontal/vertical flips, as in HLFD (paper 001,
``001_b32febb3a09ef2c2.txt`` §3, Implementation Details: "random rotation and flipping were applied").
Deliberately NO Gaussian noise: the same paper reports that "Gaussian noise augmentation is
unsuitable for medical images" (it degrades the HU texture the nets rely on for CT).
``data.augmentation`` (a list of albumentations transforms, each a ``_target_`` config) replaces that default
pipeline; the transforms are seeded as the default's are (:func:`reseed_from_torch`).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from datamodules.errors import DataError


def reseed_from_torch(transform: Any, last: tuple[int, int] | None) -> tuple[int, int]:
    """Seed a transform's own generator (albumentations' ``set_random_seed``, MONAI's ``set_random_state``)
    from ``torch.initial_seed()`` when the process or that seed changed since ``last`` (the key this returns).
    albumentations 2 ignores the global seeds set by ``seed_everything`` and, unseeded, draws from OS entropy
    (two runs with one ``seed`` would augment differently); a MONAI transform seeded once is copied into every
    DataLoader worker with the same state (every worker would draw the same crops and flips). In a seeded
    training loader torch's seed is the item's (:mod:`datamodules.epoch_seeding`); elsewhere, the run's in the
    main process and PyTorch's per-worker seed in a worker, so workers do not repeat each other."""
    key = (os.getpid(), torch.initial_seed())
    if key != last:
        if hasattr(transform, "set_random_seed"):
            seed_albumentations(transform, key[1] % 2**32)
        else:
            transform.set_random_state(seed=key[1] % 2**32)  # MONAI: each child drawn from the parent's generator
    return key


def seed_albumentations(transform: Any, seed: int) -> None:
    """Seed an albumentations transform, each transform inside a compose from its own stream.

    albumentations 2's ``Compose.set_random_seed(s)`` gives every child the same seed ``s``, so each child's
    first draw -- its "apply with probability p" -- is the same number: a horizontal and a vertical flip at
    p=0.5 were applied together or not at all (only identity or a 180° turn, never one mirror; the rotation
    too went with them). Children get independent seeds from ``numpy.random.SeedSequence(seed)`` instead."""
    transform.set_random_seed(seed)
    children = [t for t in getattr(transform, "transforms", ()) if hasattr(t, "set_random_seed")]
    for child, child_seed in zip(children, np.random.SeedSequence(seed).generate_state(len(children))):
        seed_albumentations(child, int(child_seed))


class SliceAugment:
    """Callable ``(image [H, W] float32, mask [H, W] int) -> (image, mask)`` with the same random
    geometry for both; the mask uses nearest interpolation so no new labels appear.

    ``fill`` is the image value for pixels rotated in from outside: use the lower end of the
    intensity range (air after windowing), e.g. 0 for out_range [0, 1] and -1 for [-1, 1].
    The random draws follow the run's seed (:func:`reseed_from_torch`).
    """

    def __init__(self, rotation_limit: float = 15.0, hflip: bool = True, vflip: bool = True,
                 p_rotate: float = 0.5, fill: float = 0.0, transforms: Sequence[Any] | None = None) -> None:
        ops: list[A.BasicTransform] = []
        if transforms is not None:  # data.augmentation: the user's own pipeline replaces the paper's
            ops = [_transform(t, i) for i, t in enumerate(transforms)]
        elif rotation_limit > 0:
            ops.append(A.Rotate(limit=rotation_limit, interpolation=cv2.INTER_LINEAR,
                                border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=0,
                                mask_interpolation=cv2.INTER_NEAREST, p=p_rotate))
        if hflip and transforms is None:
            ops.append(A.HorizontalFlip(p=0.5))
        if vflip and transforms is None:
            ops.append(A.VerticalFlip(p=0.5))
        self.compose = A.Compose(ops)
        self._seeded: tuple[int, int] | None = None

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._seeded = reseed_from_torch(self.compose, self._seeded)
        return self.apply(image, mask)

    def apply(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One draw of the pipeline as seeded (``__call__`` seeds it from the run first)."""
        channels_first = image.ndim == 3  # [C, H, W] multi-channel slice -> albumentations' H, W, C
        img = np.moveaxis(image, 0, -1) if channels_first else image
        out = self.compose(image=np.ascontiguousarray(img, dtype=np.float32),
                           mask=np.ascontiguousarray(mask, dtype=np.uint8))
        img = np.moveaxis(out["image"], -1, 0) if channels_first else out["image"]
        return img, out["mask"]


def _transform(t: Any, i: int) -> Any:
    """Item ``i`` of ``data.augmentation``, built by Hydra from its ``_target_``; anything else is one line."""
    if not isinstance(t, (A.BasicTransform, A.BaseCompose)):
        raise DataError(f"data.augmentation[{i}] is {type(t).__name__}, not an albumentations transform "
                        f"(each item: {{_target_: albumentations.<Transform>, ...}})")
    return t


def build_augmentation(enabled: bool, rotation_limit: float = 15.0, fill: float = 0.0,
                       transforms: Sequence[Any] | None = None) -> SliceAugment | None:
    """The training augmentation, or None when ``enabled`` is False: ``transforms`` (``data.augmentation``, built
    albumentations transforms) if given, else the paper's rotation and flips."""
    return SliceAugment(rotation_limit=rotation_limit, fill=fill, transforms=transforms) if enabled else None
