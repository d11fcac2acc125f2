"""scikit-learn's handwritten digits as the embedded classification dataset (no download).

``sklearn.datasets.load_digits`` ships 1,797 grey 8x8 images of the digits 0-9 (pixel values 0-16) inside
scikit-learn. It is the default classification data of the framework and the MNIST stand-in of the
federated experiments: small enough that a :class:`~lightning_modules.nets.classifiers.SmallCNN` reaches
>= 90 % test accuracy in seconds on a CPU. Pixels are scaled to ``[0, 1]``; the train/val/test split is
stratified by class and fixed by ``seed``.
"""
from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from datamodules.classification import ArrayClassificationDataset, ClassificationDataModule
from datamodules.errors import DataError
from lightning_modules.tasks import normalize_task


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Indices ``dict(train=, val=, test=)``, each split keeping the class proportions of ``labels``."""
    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise DataError(f"data.{key} must be in (0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(f"data.val_fraction + data.test_fraction must be < 1, got {val_fraction + test_fraction}")
    idx = np.arange(len(labels))
    try:
        rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
        train, val = train_test_split(rest, test_size=val_fraction / (1.0 - test_fraction),
                                      stratify=labels[rest], random_state=seed)
    except ValueError as err:  # a review: scikit-learn's own message named neither the data nor the fraction
        counts = dict(zip(*np.unique(labels, return_counts=True)))
        raise DataError(f"cannot split {len(labels)} items by class at data.val_fraction={val_fraction}, "
                        f"data.test_fraction={test_fraction} (items per class: "
                        f"{ {int(k) if str(k).isdigit() else str(k): int(v) for k, v in counts.items()} }): "
                        f"{str(err).splitlines()[0]}") from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


class DigitsDataModule(ClassificationDataModule):
    """The 8x8 digits, 10 classes, optionally upsampled to ``size`` (bilinear); ``task`` is multi-class.

    ``size=8`` (the default) trains fastest; 16 or 28 give MNIST-like inputs for nets with more pooling.
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0, size: int = 8, num_workers: int = 0, task: str = "multi-class") -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if normalize_task(task) != "multi-class":
            raise DataError(f"data.task={task} but the digits are a multi-class task")
        self.val_fraction, self.test_fraction, self.size = float(val_fraction), float(test_fraction), int(size)
        self.task, self.in_channels, self.num_classes = "multi-class", 1, 10
        self.class_names = [str(i) for i in range(10)]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        digits = load_digits()
        images = digits.images.astype(np.float32)  # (1797, 8, 8), values 0..16
        labels = digits.target.astype(np.int64)
        parts = stratified_split(labels, self.val_fraction, self.test_fraction, self.seed)
        made = {name: ArrayClassificationDataset(images[idx], labels[idx], size=self.size, scale=16.0,
                                                 interpolation="bilinear")
                for name, idx in parts.items()}
        self.train_dataset, self.val_dataset, self.test_dataset = made["train"], made["val"], made["test"]
