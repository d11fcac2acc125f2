"""``experiments.ensemble``: saved probabilities of two prediction folders, ensembled later, give what predict's
own ensemble (``ckpt=[a,b]``) gives in one process; folders that do not belong together are one line."""
from __future__ import annotations

import re
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


def test_a_threshold_decides_only_between_two_classes(tmp_path):
    """predict takes a two-class net's labels as P(class 1) > fg_threshold and every other net's by arg-max;
    the ensemble did the first for three classes too (a review: class 2 vanished)."""
    from engine.ensemble import check_ensemble, ensemble_case, plan_ensemble
    from engine.predict import save_probabilities

    rng = np.random.default_rng(0)
    for k, want in ((3, {0, 1, 2}), (2, None)):
        folders = [tmp_path / f"k{k}_{i}" for i in range(2)]
        for folder in folders:
            folder.mkdir()
            p = rng.dirichlet(np.ones(k), size=(6, 5, 4)).transpose(3, 0, 1, 2).astype(np.float32)
            save_probabilities(p, [f"c{j}" for j in range(k)], 0.4, folder / "case.npz")
            nib.save(nib.Nifti1Image(p.argmax(0).astype(np.uint8), np.eye(4)), folder / "case.nii.gz")
        cases = plan_ensemble(folders)
        check_ensemble(cases)
        labels = ensemble_case("case", cases["case"], tmp_path, keep_probabilities=False)
        mean = sum(np.load(f / "case.npz")["probabilities"] for f in folders) / 2
        if k == 3:
            assert set(np.unique(labels)) == want and np.array_equal(labels, mean.argmax(0))
        else:
            assert np.array_equal(labels, (mean[1] > 0.4).astype(np.uint8))


@pytest.mark.parametrize("name, setup, culprit", [
    ("one folder", lambda t: [f"inputs=[{t / 'pa'}]"], "at least two prediction folders"),
    ("no npz", lambda t: [f"inputs=[{t / 'pa'},{t / 'empty'}]"], "holds no <case>.npz"),
    ("other cases", lambda t: [f"inputs=[{t / 'pa'},{t / 'fewer'}]"], "do not hold the same cases (e.g. case1)"),
    ("other classes", lambda t: [f"inputs=[{t / 'pa'},{t / 'renamed'}]"], "of classes"),
    ("output is an input", lambda t: [f"inputs=[{t / 'pa'},{t / 'pb'}]", f"output={t / 'pa'}"], "is one of the inputs"),
    ("a pickle", lambda t: [f"inputs=[{t / 'pa'},{t / 'pickled'}]"], "cannot read saved probabilities"),
    ("a truncated file", lambda t: [f"inputs=[{t / 'pa'},{t / 'truncated'}]"], "BadZipFile"),
    ("another grid", lambda t: [f"inputs=[{t / 'pa'},{t / 'moved'}]"], "lie on other voxel grids"),
    ("one folder twice", lambda t: [f"inputs=[{t / 'pa'},{t / 'pb'},{t / 'pa'}/]"], "is named twice"),
])
def test_folders_that_do_not_belong_together_are_one_line(folders, name, setup, culprit):
    tmp = folders
    (tmp / "empty").mkdir(exist_ok=True)
    for d in ("fewer", "renamed", "pickled", "truncated", "moved"):
        if not (tmp / d).exists():
            shutil.copytree(tmp / "pb", tmp / d)
    for p in (tmp / "fewer").glob("case1.*"):
        p.unlink()
    # each defect in case1, the second case: nothing of case0 may be written before it is found (a review)
    with np.load(tmp / "pb" / "case1.npz") as f:
        np.savez(tmp / "renamed" / "case1.npz", probabilities=f["probabilities"], fg_threshold=f["fg_threshold"],
                 class_names=np.array(["background", "spleen"]))
        np.savez(tmp / "pickled" / "case1.npz", probabilities=f["probabilities"], fg_threshold=f["fg_threshold"],
                 class_names=np.array([{"a": 1}], dtype=object))
    data = (tmp / "pb" / "case1.npz").read_bytes()
    (tmp / "truncated" / "case1.npz").write_bytes(data[:len(data) // 2])
    img = nib.load(tmp / "pb" / "case1.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), img.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])),
             tmp / "moved" / "case1.nii.gz")
    args = setup(tmp)
    if not any(a.startswith("output=") for a in args):
        args.append(f"output={tmp / ('bad_' + name.replace(' ', '_'))}")
    proc = run_in_process("experiments.ensemble", args, tmp)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert culprit in lines[0]
    if name != "output is an input":
        assert not list((tmp / ("bad_" + name.replace(" ", "_"))).glob("*.nii.gz"))


def test_files_no_predict_wrote_are_not_overwritten(folders):
    """A walkthrough: ``output=<a labels folder>`` replaced the ground truth without a word (predict refuses it);
    now it is one line unless overwrite=true, and a folder the ensemble wrote may be written again."""
    tmp = folders
    truth = tmp / "truth"
    truth.mkdir(exist_ok=True)
    for case in ("case0", "case1"):  # ground truth: no predict signature in the header
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), truth / f"{case}.nii.gz")
    before = {p.name: p.read_bytes() for p in truth.iterdir()}
    inputs = f"inputs=[{tmp / 'pa'},{tmp / 'pb'}]"
    proc = run_in_process("experiments.ensemble", [inputs, f"output={truth}"], tmp)
    assert proc.returncode == 2 and "that no predict wrote" in proc.stderr and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in truth.iterdir()} == before
    proc = run_in_process("experiments.ensemble", [inputs, f"output={truth}", "overwrite=true"], tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (truth / "case0.nii.gz").read_bytes() != before["case0.nii.gz"]
    proc = run_in_process("experiments.ensemble", [inputs, f"output={truth}"], tmp)  # its own files now
    assert proc.returncode == 0, proc.stderr[-2000:]


def _two_prediction_folders(tmp_path):
    """Folders a and b as predict writes them with save_probabilities=true: one two-class case each."""
    from engine.predict import save_probabilities

    p = np.random.default_rng(0).dirichlet(np.ones(2), size=(6, 5, 4)).transpose(3, 0, 1, 2).astype(np.float32)
    folders = [tmp_path / "a", tmp_path / "b"]
    for folder in folders:
        folder.mkdir()
        save_probabilities(p, ["background", "liver"], None, folder / "case.npz")
        nib.save(nib.Nifti1Image(p.argmax(0).astype(np.uint8), np.eye(4)), folder / "case.nii.gz")
    return p, folders


def _huge_header(path):
    """A .npz whose probabilities.npy declares (2, 30000, 30000, 30000) float32 and stores 16 bytes."""
    import io
    import zipfile

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (2, 30000, 30000, 30000)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("probabilities.npy", buf.getvalue() + bytes(16))  # the header writes its own magic
        for name, arr in (("class_names", np.array(["background", "liver"])), ("fg_threshold", np.float32(np.nan))):
            member = io.BytesIO()
            np.save(member, arr)
            z.writestr(f"{name}.npy", member.getvalue())


@pytest.mark.parametrize("craft, culprit", [
    (lambda p: np.concatenate([p, p[:1], p[:1], p[:1]]), "hold 5 classes but class_names names 2"),
    (lambda p: np.where(p > 0.5, np.nan, p), "outside [0, 1]"),
    (lambda p: p - 100, "outside [0, 1]"),
    (lambda p: np.full_like(p, 0.9), "do not sum to 1 over the classes (off by up to 0.8"),
    (lambda p: (p * 1000).astype(np.int64), "are not floating point"),
    (lambda p: p.astype("U8"), "are not floating point"),
    ("threshold", "fg_threshold 5.0, outside [0, 1]"),
    ("huge", "declare 216000000000000 bytes but 16 are stored"),
])
def test_crafted_saved_probabilities_are_refused(tmp_path, craft, culprit):
    """An audit's crafted ``<case>.npz`` gave labels 0..4 for two classes, averaged NaN, -100, int and text
    "probabilities" into labels, an all-background output from fg_threshold 5.0 (each exit 0), and a 196 TiB
    allocation from a header declaring a shape its few bytes do not hold (a MemoryError traceback); a
    verification's 0.9 for both classes of every voxel, each value in [0, 1], was averaged (exit 0)."""
    from datamodules.errors import DataError
    from engine.ensemble import check_ensemble, ensemble_case, plan_ensemble

    p, folders = _two_prediction_folders(tmp_path)
    bad = folders[1] / "case.npz"
    if craft == "huge":
        _huge_header(bad)
    elif craft == "threshold":
        np.savez(bad, probabilities=p, class_names=np.array(["background", "liver"]), fg_threshold=np.float32(5.0))
    else:
        np.savez(bad, probabilities=craft(p), class_names=np.array(["background", "liver"]),
                 fg_threshold=np.float32(np.nan))
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=re.escape(culprit)) as err:
        cases = plan_ensemble(folders)
        check_ensemble(cases)
        ensemble_case("case", cases["case"], tmp_path / "out")
    assert str(bad) in str(err.value) and not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("attack, culprit", [
    ("compressed", "is compressed, unlike predict's"),
    ("no classes", "hold 0 classes"),
    ("damaged nifti", "cannot read the prediction"),
    ("linked npz", "holds no <case>.npz"),
    ("fifo", "holds no <case>.npz"),
])
def test_files_predict_did_not_write_are_one_line(tmp_path, attack, culprit):
    """A verification of the audit's fixes: a 9 MB deflated .npz asked 2 GiB (8 GB uncapped), shape [0, ...]
    with no class names and a damaged .nii.gz were tracebacks, a linked .npz counted another folder's file and a
    FIFO hung the ensemble. Only regular files predict could have written are read."""
    import os

    from datamodules.errors import DataError
    from engine.ensemble import check_ensemble, ensemble_case, plan_ensemble

    p, folders = _two_prediction_folders(tmp_path)
    bad = folders[1] / "case.npz"
    if attack == "compressed":
        np.savez_compressed(bad, probabilities=p, class_names=np.array(["background", "liver"]),
                            fg_threshold=np.float32(np.nan))
    elif attack == "no classes":
        for folder in folders:
            np.savez(folder / "case.npz", probabilities=np.zeros((0, 6, 5, 4), np.float32),
                     class_names=np.array([], dtype="<U1"), fg_threshold=np.float32(np.nan))
    elif attack == "damaged nifti":
        (folders[1] / "case.nii.gz").write_bytes(b"not a gzip file")
    elif attack == "linked npz":
        bad.unlink()
        bad.symlink_to(folders[0] / "case.npz")
    else:
        bad.unlink()
        os.mkfifo(bad)
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=culprit):
        cases = plan_ensemble(folders)
        check_ensemble(cases)
        ensemble_case("case", cases["case"], tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_a_rerun_leaves_nothing_stale_and_images_are_not_mixed_into(folders):
    """A walkthrough: a predict re-run into its own folder without ``save_probabilities`` left the earlier
    ``<case>.npz`` (experiments.ensemble then averaged it against the new labels), one without ``labels`` left the
    earlier ``metrics.json``; an ensemble into a raw images folder wrote its labels among the images and marked the
    folder predict's; ``++data.mask_threshold=null`` was added to predict's config and ignored."""
    import json

    tmp = folders
    out = tmp / "rerun"
    shutil.copytree(tmp / "pa", out)
    (out / "metrics.json").write_text(json.dumps({"summary": {}, "per_case": {}, "checkpoints": []}))
    ckpt = str(tmp / "a" / "run" / "checkpoints" / "best.ckpt")  # pa's net (make_run)
    predict(_cfg(ckpt=ckpt, input=str(tmp / "in"), output=str(out), save_probabilities=False))
    assert not list(out.glob("*.npz")) and not (out / "metrics.json").exists()
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["case0.nii.gz", "case1.nii.gz"]
    inputs = f"inputs=[{tmp / 'pa'},{tmp / 'pb'}]"
    proc = run_in_process("experiments.ensemble", [inputs, f"output={tmp / 'in'}"], tmp)
    assert proc.returncode == 2 and "image(s) no predict wrote" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp / "in" / ".fedmed-predict").exists() and not (tmp / "in" / "case0.nii.gz").exists()
    proc = run_in_process("experiments.predict", [f"ckpt={ckpt}", f"input={tmp / 'in'}", f"output={tmp / 'x'}",
                                                  "++data.mask_threshold=null"], tmp)
    assert proc.returncode == 2 and "predict has no setting data" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp / "x").exists()
