"""Layouts (where files are) and patient-level splits."""
from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import write_nifti

from datamodules.errors import DataError
from datamodules.layouts import find_cases, layout_classes
from datamodules.splits import patient_split
from datamodules.synthetic import write_phantom_dataset

SHAPE = (32, 32, 6)


def test_lits_kits_msd_cases(tmp_path):
    lits = find_cases(write_phantom_dataset(tmp_path / "l", "lits", 3, SHAPE), "lits")
    assert [c.case_id for c in lits] == ["volume-0", "volume-1", "volume-2"]
    assert lits[1].label.name == "segmentation-1.nii.gz"
    kits = find_cases(write_phantom_dataset(tmp_path / "k", "kits", 2, SHAPE), "kits")
    assert [c.case_id for c in kits] == ["case_00000", "case_00001"]
    msd_root = write_phantom_dataset(tmp_path / "m", "msd", 2, SHAPE)
    (msd_root / "imagesTr" / "._phantom_000.nii.gz").write_bytes(b"macos junk")
    msd = find_cases(msd_root, "msd")
    assert [c.case_id for c in msd] == ["phantom_000", "phantom_001"]
    assert layout_classes(msd_root, "msd") == {0: "background", 1: "liver", 2: "liver_tumor"}
    # a walkthrough: label values with a gap failed mid-training, naming no dataset.json
    import json

    import pytest

    from datamodules.errors import DataError

    ds = json.loads((msd_root / "dataset.json").read_text())
    ds["labels"] = {"0": "background", "1": "liver", "3": "liver_tumor"}
    (msd_root / "dataset.json").write_text(json.dumps(ds))
    with pytest.raises(DataError, match=r"dataset\.json \"labels\" has values \[0, 1, 3\]; they must run 0\.\.2"):
        layout_classes(msd_root, "msd")


def test_lits_unlabelled_volume_and_plain_nii(tmp_path):
    write_nifti(tmp_path / "batch" / "volume-10.nii", np.zeros(SHAPE, np.int16))
    write_nifti(tmp_path / "batch" / "segmentation-10.nii", np.zeros(SHAPE, np.uint8))
    write_nifti(tmp_path / "test" / "volume-2.nii", np.zeros(SHAPE, np.int16))
    cases = find_cases(tmp_path, "lits")
    assert [(c.case_id, c.label is not None) for c in cases] == [("volume-2", False), ("volume-10", True)]


def test_covid_stack_cases(tmp_path):
    write_nifti(tmp_path / "tr_im.nii.gz", np.zeros((8, 8, 5), np.int16))
    write_nifti(tmp_path / "tr_mask.nii.gz", np.zeros((8, 8, 5), np.uint8))
    single = find_cases(tmp_path, "covid_stack")
    assert len(single) == 5 and single[3].slices == (3,) and single[3].case_id == "slice-003"
    grouped = find_cases(tmp_path, "covid_stack", stack_group_size=2)
    assert [c.slices for c in grouped] == [(0, 1), (2, 3), (4,)]


def test_missing_root_and_no_cases(tmp_path):
    with pytest.raises(DataError, match=r"data.root .*nope does not exist"):
        find_cases(tmp_path / "nope", "lits")
    with pytest.raises(DataError, match=r"no kits cases found .*case_XXXXX/imaging"):
        find_cases(tmp_path, "kits")
    with pytest.raises(DataError, match="data.layout"):
        find_cases(tmp_path, "brats")


def test_a_dangling_link_is_named_not_skipped(tmp_path):
    """A walkthrough: ``ln -sf`` to a missing source gave "no nnunet cases found ... expected
    imagesTr/<case>_0000.nii.gz" with files of exactly those names there."""
    root = write_phantom_dataset(tmp_path / "m", "msd", 1, SHAPE)
    (root / "imagesTr" / "pt0_0000.nii.gz").symlink_to(tmp_path / "gone" / "volume-0.nii.gz")
    (root / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}}')
    with pytest.raises(DataError, match=r"imagesTr/pt0_0000\.nii\.gz is a link to a missing file .*gone/volume-0"):
        find_cases(root, "nnunet")
    (root / "imagesTr" / "pt0_0000.nii.gz").unlink()
    (root / "imagesTr" / "phantom_000.nii.gz").rename(root / "imagesTr" / "pt0_0000.nii.gz")
    (root / "labelsTr" / "pt0.nii.gz").symlink_to(tmp_path / "gone" / "segmentation-0.nii.gz")
    with pytest.raises(DataError, match=r"labelsTr/pt0\.nii\.gz is a link to a missing file"):
        find_cases(root, "nnunet")  # was silently an unlabelled case
    kits = write_phantom_dataset(tmp_path / "k", "kits", 2, SHAPE)
    (kits / "case_00001" / "imaging.nii.gz").unlink()
    (kits / "case_00001" / "imaging.nii.gz").symlink_to(tmp_path / "gone" / "imaging.nii.gz")
    with pytest.raises(DataError, match=r"case_00001/imaging\.nii\.gz is a link to a missing file"):
        find_cases(kits, "kits")  # was silently one case fewer (a review)
    (kits / "case_00001" / "imaging.nii.gz").unlink()
    (kits / "case_00009").symlink_to(tmp_path / "gone" / "case_00009")
    with pytest.raises(DataError, match=r"case_00009 is a link to a missing folder"):
        find_cases(kits, "kits")  # a walkthrough: trained on one case fewer, rc 0


def test_lits_cases_in_linked_folders_are_found(tmp_path, caplog):
    """A walkthrough: ``rglob`` does not follow folder links (Python < 3.13), so LiTS batches linked into the
    root were left out without a word; a link to a missing folder is a warning naming it."""
    import logging

    first, second = (write_phantom_dataset(tmp_path / n, "lits", 1, SHAPE) for n in ("b1", "b2"))
    (second / "volume-0.nii.gz").rename(second / "volume-1.nii.gz")
    (second / "segmentation-0.nii.gz").rename(second / "segmentation-1.nii.gz")
    root = tmp_path / "root"
    root.mkdir()
    (root / "batch1").symlink_to(first)
    (root / "batch2").symlink_to(second)
    (root / "loop").symlink_to(root)  # a link back up the tree is walked once
    sibling = write_phantom_dataset(tmp_path / "sibling", "lits", 1, SHAPE)
    (sibling / "volume-0.nii.gz").rename(sibling / "volume-5.nii.gz")
    (root / "up").symlink_to(tmp_path)  # a folder above the root (its sibling datasets) is not walked
    (root / ".cache").mkdir()  # nor a hidden one (the slice cache)
    (root / ".cache" / "volume-7.nii.gz").write_bytes(b"")
    (root / "batch3").symlink_to(tmp_path / "gone")
    with caplog.at_level(logging.WARNING, logger="datamodules.layouts"):
        cases = find_cases(root, "lits")
    assert [(c.case_id, c.label is not None) for c in cases] == [("volume-0", True), ("volume-1", True)]
    assert any("batch3 is a link to a missing file or folder" in r.getMessage() for r in caplog.records)


def test_patient_split_properties():
    ids = [f"case{i}" for i in range(10)]
    s = patient_split(ids, 0.2, 0.2, seed=0)
    assert s == patient_split(list(reversed(ids)), 0.2, 0.2, seed=0), "independent of input order"
    assert s != patient_split(ids, 0.2, 0.2, seed=1)
    assert sorted(s["train"] + s["val"] + s["test"]) == sorted(ids)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (6, 2, 2)
    three = patient_split(ids[:3], 0.1, 0.1, seed=0)
    assert all(len(v) == 1 for v in three.values())
    assert patient_split(ids, 0.2, 0.0, seed=0)["test"] == []


def test_patient_split_too_few_cases():
    with pytest.raises(DataError, match="train split is empty"):
        patient_split(["a", "b"], 0.2, 0.2, seed=0)
    with pytest.raises(DataError, match="val_fraction"):
        patient_split(["a", "b", "c"], 1.5, 0.2, seed=0)


def test_a_split_file_names_the_cases_it_leaves_out(tmp_path, caplog):
    """A review: cases found in the data but in no list of ``data.split_file`` were dropped without a word."""
    import json
    import logging

    from datamodules.splits import read_split_file

    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["c"]}))
    with caplog.at_level(logging.WARNING, logger="datamodules.splits"):
        assert read_split_file(str(path), ["a", "b", "c"]) == {"train": ["a", "b"], "val": ["c"], "test": []}
        assert not caplog.records
        read_split_file(str(path), ["a", "b", "c", "d", "e"])
    (record,) = caplog.records
    assert "lists 3 of the 5 cases found; 2 in no list are left out (e.g. d, e)" in record.getMessage()


def test_class_names_follow_dataset_json_and_a_crossed_name_is_refused(tmp_path):
    """A walkthrough: ``data=lits``'s ``class_names: [background, liver]`` named a spleen ``dataset.json``'s class
    liver and ``target=tumor``'s tumour liver, and ``[background, liver_tumor, liver]`` swapped two classes' Dice,
    all without a word. ``class_names=null`` (now ``data=lits``'s and ``data=kits``'s default) takes the data's
    names; a declared name the data gives another class is one line; a name the data does not use is a rename."""
    from datamodules.segmentation import VolumeSegmentationDataModule

    root = write_phantom_dataset(tmp_path / "m", "msd", 2, SHAPE)

    def names(target, declared=None):
        return VolumeSegmentationDataModule(str(root), layout="msd", target=target, class_names=declared).class_names

    assert names("organ") == ["background", "liver"]
    assert names("tumor") == ["background", "liver_tumor"]
    assert names("multiclass") == ["background", "liver", "liver_tumor"]
    assert names("multiclass", ["background", "Liver", "lesion"]) == ["background", "Liver", "lesion"]
    with pytest.raises(DataError, match=r"names class 1 'liver_tumor', which .*dataset\.json \(data\.target="
                                        r"'multiclass'\) names class 2 \(the data gives"):
        names("multiclass", ["background", "liver_tumor", "liver"])
    lits = str(write_phantom_dataset(tmp_path / "l", "lits", 2, SHAPE))
    with pytest.raises(DataError, match=r"names class 1 'liver', which the lits layout \(data\.target='tumor'\) "
                                        r"names a label this target does not select \(the data gives \['background', "
                                        r"'tumor'\]\)"):
        VolumeSegmentationDataModule(lits, layout="lits", target="tumor", class_names=["background", "liver"]).class_names


def test_a_missing_dataset_json_is_said_to_be_missing(tmp_path):
    """A walkthrough pointed ``data.root`` at nnU-Net's ``nnUNet_raw`` (the parent folder) and was told its
    ``dataset.json`` "is not valid JSON (DataError: ... does not exist)"."""
    with pytest.raises(DataError) as err:
        layout_classes(tmp_path, "nnunet")
    assert str(err.value).endswith(f"{tmp_path / 'dataset.json'} does not exist") and "JSON" not in str(err.value)
