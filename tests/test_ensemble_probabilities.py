"""``experiments.ensemble``: saved probabilities of two prediction folders, ensembled later, give what predict's
own ensemble (``ckpt=[a,b]``) gives in one process; folders that do not belong together are one line."""
from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments.predict import predict
from tests.cli import run_in_process
from tests.volumetric_helpers import make_run, phantom, reoriented


def _cfg(**kw):
    base = dict(labels=None, run_config=None, batch_size=8, roi_size=None, overlap=0.5, mode="gaussian",
                tta=False, nsd_tolerance_mm=1.0, device="cpu", save_probabilities=True)
    return OmegaConf.create({**base, **kw})


@pytest.fixture(scope="module")
def folders(module_tmp):
    tmp = module_tmp("ens")
    a, b = make_run(tmp, seed=0, name="a"), make_run(tmp, seed=1, name="b")
    root = phantom(tmp, n_cases=2)
    inp = tmp / "in"
    inp.mkdir()
    for i in range(2):  # one RAS, one LPS case
        src = root / f"volume-{i}.nii.gz"
        reoriented(src, "LPS", inp / f"case{i}_0000.nii.gz") if i else shutil.copy(src, inp / f"case{i}_0000.nii.gz")
    for name, ckpt in (("pa", str(a)), ("pb", str(b)), ("pab", [str(a), str(b)])):
        predict(_cfg(ckpt=ckpt, input=str(inp), output=str(tmp / name)))
    return tmp


def test_ensembling_saved_probabilities_equals_predicts_own_ensemble(folders):
    tmp = folders
    proc = run_in_process("experiments.ensemble", [f"inputs=[{tmp / 'pa'},{tmp / 'pb'}]", f"output={tmp / 'ens'}",
                                                   "save_probabilities=true"], tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for case in ("case0", "case1"):
        got, want = nib.load(tmp / "ens" / f"{case}.nii.gz"), nib.load(tmp / "pab" / f"{case}.nii.gz")
        assert got.shape == want.shape and np.allclose(got.affine, want.affine)
        a, b = (np.asarray(nib.load(tmp / p / f"{case}.nii.gz").dataobj) for p in ("pa", "pb"))
        assert not np.array_equal(a, b)  # two different nets: the ensemble has something to decide
        assert (np.asarray(got.dataobj) == np.asarray(want.dataobj)).mean() > 0.999  # float rounding at ties only
        with np.load(tmp / "ens" / f"{case}.npz", allow_pickle=False) as f, \
                np.load(tmp / "pab" / f"{case}.npz", allow_pickle=False) as g:
            np.testing.assert_allclose(f["probabilities"], g["probabilities"], atol=1e-5)


@pytest.mark.parametrize("name, setup, culprit", [
    ("one folder", lambda t: [f"inputs=[{t / 'pa'}]"], "at least two prediction folders"),
    ("no npz", lambda t: [f"inputs=[{t / 'pa'},{t / 'empty'}]"], "holds no <case>.npz"),
    ("other cases", lambda t: [f"inputs=[{t / 'pa'},{t / 'fewer'}]"], "do not hold the same cases (e.g. case1)"),
    ("other classes", lambda t: [f"inputs=[{t / 'pa'},{t / 'renamed'}]"], "of classes"),
    ("output is an input", lambda t: [f"inputs=[{t / 'pa'},{t / 'pb'}]", f"output={t / 'pa'}"], "is one of the inputs"),
    ("a pickle", lambda t: [f"inputs=[{t / 'pa'},{t / 'pickled'}]"], "cannot read saved probabilities"),
])
def test_folders_that_do_not_belong_together_are_one_line(folders, name, setup, culprit):
    tmp = folders
    (tmp / "empty").mkdir(exist_ok=True)
    for d in ("fewer", "renamed", "pickled"):
        if not (tmp / d).exists():
            shutil.copytree(tmp / "pb", tmp / d)
    for p in (tmp / "fewer").glob("case1.*"):
        p.unlink()
    with np.load(tmp / "pb" / "case0.npz") as f:
        np.savez(tmp / "renamed" / "case0.npz", probabilities=f["probabilities"], fg_threshold=f["fg_threshold"],
                 class_names=np.array(["background", "spleen"]))
        np.savez(tmp / "pickled" / "case0.npz", probabilities=f["probabilities"], fg_threshold=f["fg_threshold"],
                 class_names=np.array([{"a": 1}], dtype=object))
    args = setup(tmp)
    if not any(a.startswith("output=") for a in args):
        args.append(f"output={tmp / ('bad_' + name.replace(' ', '_'))}")
    proc = run_in_process("experiments.ensemble", args, tmp)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert culprit in lines[0]
    if name != "output is an input":
        assert not list((tmp / ("bad_" + name.replace(" ", "_"))).glob("*.nii.gz"))
