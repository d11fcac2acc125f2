"""Shared pieces of the image-classification datamodules (MedMNIST, digits).

One dict-returning dataset over in-memory numpy arrays (:class:`ArrayClassificationDataset`), the label
checks every classification source goes through (:func:`check_labels`) and a LightningDataModule base
that owns the loaders (:class:`ClassificationDataModule`). Batches follow ``docs/architecture.md``:
``dict(image=float32[B,C,H,W], label=int64[B])``, or ``label=float32[B,L]`` for multi-label tasks.

Task names are MedMNIST's four task types (paper 002, Table 1; ``medmnist/info.py``): ``multi-class``,
``binary``, ``multi-label`` and ``ordinal-regression``; MedMNIST's own spellings (``binary-class``,
``multi-label, binary-class``) are accepted as aliases (:mod:`lightning_modules.tasks`).
"""
from __future__ import annotations

import copy

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.errors import DataError
from datamodules.loaders import SplitLoadersMixin
from datamodules.transforms import reseed_from_torch
from lightning_modules.tasks import normalize_task


def check_labels(labels: np.ndarray, task: str, num_classes: int, where: str) -> np.ndarray:
    """Validate labels for ``task`` and return them as ``int64[N]`` (or ``float32[N, L]`` for multi-label).

    Single-label tasks accept ``(N,)`` or MedMNIST's ``(N, 1)`` integer labels in ``[0, num_classes)``;
    multi-label tasks need ``(N, num_classes)`` with values in {0, 1}. Raises :class:`DataError` with one
    line naming ``where`` (file and split) and the problem.
    """
    task = normalize_task(task)
    labels = np.asarray(labels)
    if labels.dtype.kind == "f" and not np.isfinite(labels).all():
        raise DataError(f"{where}: labels contain NaN or infinite values")
    if task == "multi-label":
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise DataError(f"{where}: labels have shape {labels.shape}; task multi-label with "
                            f"{num_classes} labels expects (N, {num_classes})")
        if not np.isin(labels, (0, 1)).all():
            raise DataError(f"{where}: multi-label labels must be 0 or 1, found {np.unique(labels)[:8].tolist()}")
        return labels.astype(np.float32)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: labels have shape {labels.shape}; task {task} expects (N,) or (N, 1)")
    if labels.size and (labels.dtype.kind == "f" and not np.all(labels == np.round(labels))):
        raise DataError(f"{where}: task {task} needs integer class labels, found fractional values")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes - 1}] "
                        f"for task {task} with {num_classes} classes")
    return labels.astype(np.int64)


class ArrayClassificationDataset(Dataset):
    """Map-style dataset over ``images`` ``(N, H, W)`` or ``(N, H, W, C)`` and checked ``labels``.

    Item ``i`` is ``dict(image=float32[C, S, S], label=...)``: pixels divided by ``scale``, optionally
    grey→RGB (``as_rgb``), augmented by ``transform``, resized to ``size`` (``interpolation`` of
    :func:`torch.nn.functional.interpolate`; MedMNIST resizes 28→224 with nearest neighbour) and then
    normalised ``(x - mean) / std``. ``transform`` is an albumentations transform (applied to the HWC
    float image) or any callable on the CHW tensor (e.g. a torchvision v2 transform). ``targets`` is the
    label array, as the federated partitioners expect.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, size: int | None = None,
                 scale: float = 255.0, mean: float = 0.0, std: float = 1.0, as_rgb: bool = False,
                 transform: Callable[..., Any] | None = None, interpolation: str = "nearest") -> None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.targets = np.asarray(labels)
        self.size, self.scale, self.mean, self.std = size, float(scale), float(mean), float(std)
        self.as_rgb, self.transform, self.interpolation = as_rgb, transform, interpolation
        self._albu = isinstance(transform, (A.BaseCompose, A.BasicTransform))
        self._seeded: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def as_handed(self, index: int) -> np.ndarray:
        """Image ``index`` as the transform gets it: HWC float, scaled to [0, 1], grey repeated to RGB (as_rgb)."""
        img = np.asarray(self.images[index], dtype=np.float32) / self.scale
        if img.ndim == 2:
            img = img[:, :, None]
        if self.as_rgb and img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        return img

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img = self.as_handed(index)
        if self._albu:
            self._seeded = reseed_from_torch(self.transform, self._seeded)
            img = self.transform(image=img)["image"]
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        if self.transform is not None and not self._albu:
            x = self.transform(x)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x[None], size=(self.size, self.size), mode=self.interpolation)[0]
        x = (x - self.mean) / self.std
        y = self.targets[index]
        label = torch.as_tensor(y, dtype=torch.float32 if np.ndim(y) else torch.int64)
        return {"image": x.float(), "label": label}


class ClassificationDataModule(SplitLoadersMixin, pl.LightningDataModule):
    """Loader plumbing shared by the classification datamodules.

    Subclasses set ``task``, ``in_channels``, ``num_classes``, ``class_names`` and, in ``setup()``,
    ``train_dataset``/``val_dataset``/``test_dataset`` (see ``docs/architecture.md``, *DataModules*).
    The training loader shuffles with a generator seeded by ``seed``, so runs are reproducible.
    """

    task: str
    in_channels: int
    num_classes: int
    class_names: list[str]

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 augmentation: Sequence[Any] | None = None) -> None:
        super().__init__()
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.augmentation = None if augmentation is None else list(augmentation)
        self.train_dataset: ArrayClassificationDataset | None = None
        self.val_dataset: ArrayClassificationDataset | None = None
        self.test_dataset: ArrayClassificationDataset | None = None

    def train_augmentation(self, given: Any = None) -> Any:
        """The training images' transform: ``given`` (a subclass's own, e.g. MedMNIST's ``train_transform``), else
        ``data.augmentation`` (built albumentations transforms, checked by
        :mod:`datamodules.augmentation_checks`) as one compose, else None."""
        if given is not None and self.augmentation is not None:
            raise DataError("data.train_transform and data.augmentation both set: give one")
        return given if given is not None or self.augmentation is None else A.Compose(self.augmentation)

    def probe_augmentation(self) -> None:
        """``data.augmentation`` drawn on the first training image (:func:`probe_image_transform`)."""
        from datamodules.augmentation_checks import probe_image_transform

        train = self.train_dataset
        if self.augmentation is not None and train is not None and len(train) and train._albu:
            probe_image_transform(train.transform, train.as_handed(0))

    def train_eval_dataset(self) -> Dataset | None:
        """The training images as evaluated (no ``transform``), index-aligned with ``train_dataset``: a federated
        client's validation split is carved from them (a walkthrough found slice data scored augmented)."""
        train = self.train_dataset
        if train is None or getattr(train, "transform", None) is None:
            return train
        plain = copy.copy(train)
        plain.transform, plain._albu = None, False
        return plain


def default_class_names(num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """``names`` as a list, or ``["0", "1", ...]`` when none are known."""
    return [str(n) for n in names] if names else [str(i) for i in range(num_classes)]
