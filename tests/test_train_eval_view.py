"""The training data "as evaluated" (``datamodules.loaders.train_eval_dataset``): what a federated client's
validation split, carved from its training items, is scored on. A walkthrough found 2D slice data scored on
randomly augmented slices, so client and local validation differed between two runs and between transports."""
from __future__ import annotations

import albumentations as A
import torch

from datamodules.loaders import train_eval_dataset
from datamodules.medmnist import MedMNISTDataModule
from datamodules.segmentation import VolumeSegmentationDataModule
from tests.test_cls_data import write_npz
from tests.volumetric_helpers import phantom


def _same(a: dict, b: dict) -> bool:
    return torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_slice_training_items_are_evaluated_without_augmentation(tmp_path):
    root = phantom(tmp_path, n_cases=4, shape=(40, 36, 8))
    dm = VolumeSegmentationDataModule(str(root), image_size=32, augment=True, rotation_limit=30.0,
                                      train_slices="all", val_fraction=0.25, test_fraction=0.25)
    dm.setup("fit")
    view = train_eval_dataset(dm)
    assert view is not dm.train_dataset and len(view) == len(dm.train_dataset)
    torch.manual_seed(0)
    augmented = [dm.train_dataset[i] for i in range(len(view))]
    assert any(not _same(a, view[i]) for i, a in enumerate(augmented))  # augmentation is on for training
    for i in range(len(view)):
        assert _same(view[i], view[i])  # the evaluated item is the same every time
        item, raw = view[i], dm.train_dataset.cases[dm.train_dataset.items[i][0]]
        assert item["case_id"] == raw.case_id  # index-aligned with train_dataset


def test_classification_training_images_are_evaluated_without_the_train_transform(tmp_path):
    write_npz(tmp_path, "breastmnist.npz")
    dm = MedMNISTDataModule(root=str(tmp_path), flag="breastmnist",
                            train_transform=A.Compose([A.HorizontalFlip(p=1.0)]))
    dm.setup("fit")
    view = train_eval_dataset(dm)
    assert view.transform is None and dm.train_dataset.transform is not None
    assert not torch.equal(dm.train_dataset[0]["image"], view[0]["image"])
    assert torch.equal(view[0]["image"], torch.flip(dm.train_dataset[0]["image"], dims=[-1]))
