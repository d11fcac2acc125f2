"""A federated client's validation split, carved from its training items by whole cases, scores every slice of
those cases (a review: the training items keep only ``train_slices`` of the empty slices, so a client's
validation case had 9 of its 20 slices and false positives on the dropped ones never counted)."""
from __future__ import annotations

import nibabel as nib
import numpy as np

from datamodules.segmentation import VolumeSegmentationDataModule
from datamodules.subset import SubsetDataModule, carve_val, sample_cases, val_carved_from_train


def _lits(root, n=6, depth=20):
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        img = np.random.default_rng(k).normal(0, 50, (16, 16, depth)).astype(np.float32)
        lab = np.zeros((16, 16, depth), np.uint8)
        lab[4:8, 4:8, 8:12] = 1  # 4 foreground slices of 20
        nib.save(nib.Nifti1Image(img, np.eye(4)), root / f"volume-{k}.nii")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / f"segmentation-{k}.nii")


def test_a_clients_validation_cases_are_scored_on_every_slice(tmp_path):
    _lits(tmp_path / "lits")
    dm = VolumeSegmentationDataModule(str(tmp_path / "lits"), layout="lits", cache_dir=str(tmp_path / "cache"),
                                      val_fraction=0.17, test_fraction=0.17, augment=False)
    dm.setup()
    cases = sample_cases(dm.train_dataset)
    train, val = carve_val(np.arange(len(dm.train_dataset)), 0.3, 0, cases)
    assert len(val) < 20 * len(set(cases[val]))  # the training items hold only some empty slices
    client = SubsetDataModule(dm, train, val, seed=0)
    got = [client.val_dataset[i]["case_id"] for i in range(len(client.val_dataset))]
    assert sorted(set(got)) == sorted(set(cases[val])) and len(got) == 20 * len(set(cases[val]))
    assert len(set(got) & set(cases[train])) == 0
    # a client whose one volume gives both its training and its validation slices keeps the carved items
    one = np.flatnonzero(cases == cases[0])
    same = val_carved_from_train(dm, one[:3], one[3:])
    assert len(same) == 3
