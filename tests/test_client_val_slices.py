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


def test_a_case_found_twice_and_a_class_too_small_to_split_are_one_line_naming_them(tmp_path):
    """A review: ``volume-0.nii`` in ``a/`` and ``volume-0.nii.gz`` in ``b/`` gave "duplicate case ids in split
    input: 1 repeated" after every volume was decoded; a class of one image gave scikit-learn's own error."""
    import pytest

    from datamodules.digits import stratified_split
    from datamodules.errors import DataError
    from datamodules.layouts import find_cases

    _lits(tmp_path / "lits" / "a", n=2)
    (tmp_path / "lits" / "b").mkdir()
    (tmp_path / "lits" / "a" / "volume-0.nii").rename(tmp_path / "lits" / "b" / "volume-0.nii")
    (tmp_path / "lits" / "a" / "volume-1.nii").replace(tmp_path / "lits" / "a" / "volume-0.nii")
    with pytest.raises(DataError, match=r"case volume-0 found twice \(.*volume-0.nii and .*volume-0.nii\)"):
        find_cases(tmp_path / "lits", "lits")
    with pytest.raises(DataError, match=r"cannot split 10 items by class at data.val_fraction=0.2"):
        stratified_split(np.array([0] * 9 + [1]), 0.2, 0.2, 0)
