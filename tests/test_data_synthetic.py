"""Synthetic phantom: real NIfTI files, layout conventions, determinism, idempotence, speed."""
from __future__ import annotations

import json
import threading
import time

import nibabel as nib
import numpy as np
import pytest

from datamodules.errors import DataError
from datamodules.phantom_anatomy import SiteParams, make_phantom
from datamodules.synthetic import LOCK, MANIFEST, _locked, needs_phantom, write_phantom_dataset

SHAPE = (64, 64, 16)


def _arr(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_lits_phantom_files_and_labels(tmp_path):
    root = write_phantom_dataset(tmp_path, "lits", n_cases=3, shape=SHAPE, seed=1,
                                 site=SiteParams(spacing=(0.7, 0.7, 3.0)))
    tumour_cases = 0
    for i in range(3):
        img = nib.load(str(root / f"volume-{i}.nii.gz"))
        lab = _arr(root / f"segmentation-{i}.nii.gz")
        assert img.shape == SHAPE and lab.shape == SHAPE
        assert np.allclose(img.header.get_zooms(), (0.7, 0.7, 3.0))
        assert np.allclose(np.diag(img.affine)[:3], (0.7, 0.7, 3.0))
        hu = np.asarray(img.dataobj, dtype=np.float32)
        assert set(np.unique(lab)) <= {0, 1, 2}
        assert (lab >= 1).mean() > 0.03, "liver must be big"
        assert abs(np.median(hu[lab == 1]) - 60) < 10, "liver ~60 HU"
        assert hu[0, 0, 0] < -900, "air outside the body"
        tumour_cases += int((lab == 2).any())
    assert tumour_cases >= 2
    assert json.loads((root / MANIFEST).read_text())["params"]["layout"] == "lits"
    assert not (root / ".phantom-tmp").exists()


def test_kits_and_msd_layouts(tmp_path):
    kits = write_phantom_dataset(tmp_path / "kits", "kits", n_cases=2, shape=SHAPE)
    lab = _arr(kits / "case_00001" / "segmentation.nii.gz")
    assert (kits / "case_00001" / "imaging.nii.gz").is_file()
    assert set(np.unique(lab)) <= {0, 1, 2} and (lab == 1).any()
    organs = ("liver", "spleen", "pancreas", "kidney")
    msd = write_phantom_dataset(tmp_path / "msd", "msd", n_cases=2, shape=SHAPE, organs=organs)
    ds = json.loads((msd / "dataset.json").read_text())
    assert ds["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "pancreas", "4": "kidney"}
    lab = _arr(msd / "labelsTr" / "phantom_000.nii.gz")
    assert set(np.unique(lab)) == {0, 1, 2, 3, 4}
    assert (msd / "imagesTr" / "phantom_001.nii.gz").is_file()


def test_deterministic_and_site_params():
    a, ma = make_phantom(SHAPE, np.random.default_rng(3))
    b, mb = make_phantom(SHAPE, np.random.default_rng(3))
    c, mc = make_phantom(SHAPE, np.random.default_rng(4))
    assert np.array_equal(a, b) and np.array_equal(ma["liver"], mb["liver"])
    assert not np.array_equal(ma["liver"], mc["liver"])
    quiet = SiteParams(noise_std=0.0)
    shifted = SiteParams(noise_std=0.0, intensity_offset=50.0, intensity_scale=1.1)
    x, m = make_phantom(SHAPE, np.random.default_rng(3), quiet)
    y, _ = make_phantom(SHAPE, np.random.default_rng(3), shifted)
    assert np.allclose(x[m["liver"] & ~m["liver_tumor"]], 60.0)
    assert np.allclose(y, x * 1.1 + 50.0, atol=1e-3)


def test_idempotent_and_regenerates_on_new_params(tmp_path):
    write_phantom_dataset(tmp_path, "lits", n_cases=2, shape=SHAPE)
    f = tmp_path / "volume-0.nii.gz"
    mtime = f.stat().st_mtime_ns
    write_phantom_dataset(tmp_path, "lits", n_cases=2, shape=SHAPE)
    assert f.stat().st_mtime_ns == mtime
    write_phantom_dataset(tmp_path, "lits", n_cases=1, shape=SHAPE, seed=5)
    assert not (tmp_path / "volume-1.nii.gz").exists()
    assert json.loads((tmp_path / MANIFEST).read_text())["params"]["seed"] == 5


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError, match="only supported for layout 'msd'"):
        write_phantom_dataset(tmp_path, "lits", organs=("liver", "spleen"))
    with pytest.raises(DataError, match="heart"):
        write_phantom_dataset(tmp_path, "msd", organs=("liver", "heart"))


def test_fast(tmp_path):
    t = time.perf_counter()
    write_phantom_dataset(tmp_path, "lits", n_cases=8, shape=(96, 96, 24))
    assert time.perf_counter() - t < 5.0


def test_needs_phantom_waits_for_a_generator_still_moving_cases_in(tmp_path):
    """Two runs of a sweep share data.root: the second must not read the first's half-moved cases
    as someone's own data set (seen in CI: 'train split is empty: 2 case(s)')."""
    (tmp_path / LOCK).touch()
    answer = []
    with _locked(tmp_path):  # the first run, moving cases in: some are there, the manifest not yet
        waiter = threading.Thread(target=lambda: answer.append(needs_phantom(tmp_path, lambda: True)))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive() and not answer  # waits instead of deciding on a partial folder
        (tmp_path / MANIFEST).write_text("{}")
    waiter.join(5)
    assert answer == [True]  # decided after the first run finished: the folder is a phantom


def test_needs_phantom_leaves_a_users_own_cases_alone(tmp_path):
    assert needs_phantom(tmp_path, lambda: False) is True
    assert needs_phantom(tmp_path, lambda: True) is False
    assert not (tmp_path / LOCK).exists()  # a real data folder gets no lock file
