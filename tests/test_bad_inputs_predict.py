"""Bad input to ``python -m experiments.predict``: exit 2, one line naming the culprit, no traceback,
nothing written (issue 10's predict items)."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.cli import run_in_process, run_subprocess
from tests.volumetric_helpers import make_run


@pytest.fixture(scope="module")
def files(module_tmp):
    tmp = module_tmp("badpredict")
    ckpt = make_run(tmp)
    vol = tmp / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 3), np.float32), np.eye(4)), vol)
    (tmp / "empty_dir").mkdir()
    nan = np.zeros((16, 16, 3), np.float32)
    nan[2:4, 2:4, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, np.eye(4)), tmp / "nan_vol.nii.gz")
    outside = np.zeros((16, 16, 3), np.uint8)
    outside[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(outside, np.eye(4)), tmp / "lab_outside.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 2), np.uint8), np.eye(4)), tmp / "lab_small.nii.gz")
    region = np.zeros((16, 16, 3), np.uint8)
    region[2:9, 4:7, 1:] = 1  # asymmetric: a flip that went unread would move it
    nib.save(nib.Nifti1Image(region, np.eye(4)), tmp / "lab_region.nii.gz")
    nib.save(nib.Nifti1Image(region, np.diag([2.0, 2.0, 2.0, 1.0])), tmp / "lab_2mm.nii.gz")
    for name in ("twochan/a_0000", "twochan/a_0001", "numbered/scan_0001", "numbered/scan_0002"):
        (tmp / name).parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(np.zeros((16, 16, 3), np.float32), np.eye(4)), tmp / f"{name}.nii.gz")
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = 15.0  # the same voxels in world space, stored x-flipped
    nib.save(nib.Nifti1Image(np.ascontiguousarray(region[::-1]), flip), tmp / "lab_region_flipped.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 3, 1), np.float32), np.eye(4)), tmp / "vol4d.nii.gz")
    (tmp / "notes.txt").write_text("not a volume")
    (tmp / "image.png").write_bytes(b"\x89PNG\r\n")
    (tmp / "scan.tif").write_bytes(b"II*\x00")
    cls = torch.load(ckpt, weights_only=True)
    cls["hyper_parameters"] = {"task": "multi-class", "num_classes": 2, "net": cls["hyper_parameters"]["net"]}
    torch.save(cls, tmp / "classifier.ckpt")
    other = torch.load(ckpt, weights_only=True)
    other["hyper_parameters"]["net"] = {**other["hyper_parameters"]["net"], "width": 8}
    (tmp / "other" / "checkpoints").mkdir(parents=True)
    torch.save(other, tmp / "other" / "checkpoints" / "wider.ckpt")
    (tmp / "other" / "config.yaml").write_text((ckpt.parent.parent / "config.yaml").read_text())
    (tmp / "a_file").write_text("a file where a folder is needed")
    folder_run = tmp / "folder_run"  # a run trained on 2D image files (data=liver_slices): no NIfTI pipeline
    (folder_run / "checkpoints").mkdir(parents=True)
    (folder_run / "checkpoints" / "best.ckpt").write_bytes(ckpt.read_bytes())
    run_cfg = OmegaConf.load(ckpt.parent.parent / "config.yaml")
    run_cfg.data = {"_target_": "datamodules.folder2d.FolderSegmentationDataModule", "root": str(tmp),
                    "image_dir": "empty_dir", "mask_dir": "empty_dir", "class_names": ["background", "liver"]}
    (folder_run / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg))
    crafted = {  # found by an audit: each was a traceback (TypeError, AttributeError, ParserError, ...)
        "bogus_arg": (lambda c: c["hyper_parameters"]["net"].update(bogus=1), None),
        "bad_stats": (lambda c: c.update(VolumeSegmentationDataModule={"ct_stats": 5}), None),
        "data_int": (None, "data: 5\n"),
        # a trust review: each was a traceback (TypeError, AttributeError, ValueError), NaN weights an exit 0
        "hp_list": (lambda c: c.update(hyper_parameters=[1, 2]), None),
        "net_width": (lambda c: c["hyper_parameters"]["net"].update(width="abc"), None),
        "sd_list": (lambda c: c.update(state_dict=[1]), None),
        "hp_overlap": (lambda c: c["hyper_parameters"].update(overlap="abc"), None),
        "hp_threshold": (lambda c: c["hyper_parameters"].update(fg_threshold="abc"), None),
        "hp_classes": (lambda c: c["hyper_parameters"].update(num_classes="abc"), None),
        "nan_weights": (lambda c: [v.fill_(float("nan")) for k, v in c["state_dict"].items()
                                   if k.startswith("net.") and v.is_floating_point()], None),
        "bad_yaml": (None, "data: [unclosed\n"),
        "data_size": (None, OmegaConf.to_yaml({**OmegaConf.to_container(run_cfg0 := OmegaConf.load(
            ckpt.parent.parent / "config.yaml")), "data": {**OmegaConf.to_container(run_cfg0.data), "image_size": "abc"}})),
        "data_kwarg": (None, OmegaConf.to_yaml({**OmegaConf.to_container(run_cfg0 := OmegaConf.load(
            ckpt.parent.parent / "config.yaml")), "data": {**OmegaConf.to_container(run_cfg0.data), "bogus_key": 1}})),
    }
    for name, (edit_ckpt, config) in crafted.items():
        c = torch.load(ckpt, weights_only=True)
        if edit_ckpt is not None:
            edit_ckpt(c)
        (tmp / name / "checkpoints").mkdir(parents=True)
        torch.save(c, tmp / name / "checkpoints" / "best.ckpt")
        (tmp / name / "config.yaml").write_text(config or (ckpt.parent.parent / "config.yaml").read_text())
    return tmp, ckpt


def crafted(name: str, culprit: str) -> tuple:
    return (f"crafted {name}", [f"ckpt={{t}}/{name}/checkpoints/best.ckpt", "input={t}/vol.nii.gz",
                                f"output={{t}}/{name}.nii.gz"], culprit, f"{name}.nii.gz")


CASES = [  # (name, args with {t}=tmp dir and {c}=good checkpoint, text the one line must contain, output)
    ("classification ckpt", ["ckpt={t}/classifier.ckpt", "input={t}/vol.nii.gz", "output={t}/o1.nii.gz"],
     "classifier.ckpt", "o1.nii.gz"),
    ("missing input", ["ckpt={c}", "input={t}/nope.nii.gz", "output={t}/o2.nii.gz"], "nope.nii.gz", "o2.nii.gz"),
    ("image input, volume checkpoint", ["ckpt={c}", "input={t}/image.png", "output={t}/o3.nii.gz"], "image.png",
     "o3.nii.gz"),
    ("folder without NIfTI", ["ckpt={c}", "input={t}/empty_dir", "output={t}/o4"], "empty_dir", "o4"),
    ("another architecture", ["ckpt={t}/other/checkpoints/wider.ckpt", "input={t}/vol.nii.gz",
                              "output={t}/o5.nii.gz"], "wider.ckpt", "o5.nii.gz"),
    ("unwritable output", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/a_file/seg.nii.gz"], "a_file", None),
    ("folder into a file name", ["ckpt={c}", "input={t}", "output={t}/o7.nii.gz"], "o7.nii.gz", "o7.nii.gz"),
    ("missing checkpoint", ["ckpt={t}/none.ckpt", "input={t}/vol.nii.gz", "output={t}/o8.nii.gz"],
     "none.ckpt", "o8.nii.gz"),
    ("checkpoint trained on 2D image files", ["ckpt={t}/folder_run/checkpoints/best.ckpt", "input={t}/vol.nii.gz",
                                              "output={t}/o9.nii.gz"], "2D image files", "o9.nii.gz"),
    ("unreadable image", ["ckpt={t}/folder_run/checkpoints/best.ckpt", "input={t}/image.png",
                          "output={t}/o10.png"], "image.png", "o10.png"),
    ("image into a NIfTI name", ["ckpt={t}/folder_run/checkpoints/best.ckpt", "input={t}/image.png",
                                "output={t}/o11.nii.gz"], "o11.nii.gz", "o11.nii.gz"),
    crafted("bogus_arg", "unexpected keyword argument 'bogus'"), crafted("bad_stats", "ct_stats=5"),
    crafted("data_int", "no data config"), crafted("bad_yaml", "does not parse"),
    crafted("data_kwarg", "bogus_key"),
    crafted("data_size", "the run's config.yaml data"),
    crafted("hp_list", "'hyper_parameters' is a list, not a mapping"),
    crafted("net_width", "its net config does not build"),
    crafted("sd_list", "'state_dict' is a list, not a mapping"),
    crafted("hp_overlap", "hyper_parameters.overlap='abc' is not a number in [0, 1)"),
    crafted("hp_threshold", "hyper_parameters.fg_threshold='abc' is not a number in [0, 1]"),
    crafted("hp_classes", "hyper_parameters.num_classes='abc' is not an int >= 1"),
    crafted("nan_weights", "holds non-finite (NaN or inf) weights"),
    # found by an audit: predict segmented NaN voxels (training refused them), and a bad label stopped the run
    # after the case's segmentation was written
    ("NaN voxels", ["ckpt={c}", "input={t}/nan_vol.nii.gz", "output={t}/o14.nii.gz"], "nan_vol.nii.gz", "o14.nii.gz"),
    ("label outside the classes", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o15.nii.gz",
                                   "labels={t}/lab_outside.nii.gz"], "lab_outside.nii.gz", "o15.nii.gz"),
    ("label of another shape", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o16.nii.gz",
                                "labels={t}/lab_small.nii.gz"], "lab_small.nii.gz", "o16.nii.gz"),
    # found by a walkthrough: a label's own affine was ignored (a label with another spacing was scored, its
    # HD95 in the label's mm)
    ("label off the input's grid", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o26.nii.gz",
                                    "labels={t}/lab_2mm.nii.gz"], "is not on the voxel grid of image", "o26.nii.gz"),
    # found by a walkthrough: a case's channel count was not checked against the net (a conv traceback)
    ("two channels for a one-channel net", ["ckpt={c}", "input={t}/twochan", "output={t}/o27"],
     "takes 1 input channel(s) per case but case a has 2 file(s)", "o27"),
    ("batch_size zero", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o28.nii.gz", "batch_size=0"],
     "batch_size=0 must be a whole number >= 1", "o28.nii.gz"),
    ("batch_size negative", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o29.nii.gz", "batch_size=-3"],
     "batch_size=-3 must be", "o29.nii.gz"),
    ("nsd tolerance negative", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o30.nii.gz", "nsd_tolerance_mm=-1"],
     "nsd_tolerance_mm=-1 must be a number of millimetres >= 0", "o30.nii.gz"),
    ("tta axis twice", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o31.nii.gz", "tta=[0,0]"],
     "list of distinct spatial axes", "o31.nii.gz"),
    ("tta not a flag or axes", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o12.nii.gz", "tta=maybe"],
     "tta='maybe'", "o12.nii.gz"),
    ("tta axis beyond the net", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o13.nii.gz", "tta=[0,2]"],
     "0..1", "o13.nii.gz"),
    # found by a walkthrough: a negative size was taken, and a size per axis too few was a traceback
    # found by a walkthrough: an empty folder was said to hold "no NIfTI" to a checkpoint trained on 2D images
    ("empty folder, 2D image checkpoint", ["ckpt={t}/folder_run/checkpoints/best.ckpt", "input={t}/empty_dir",
                                           "output={t}/o22"], "nor 2D image (.png/.jpg/.npy) (it is empty)", "o22"),
    ("roi_size negative", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o17.nii.gz", "roi_size=[-8,8]"],
     "roi_size=[-8, 8] must be 2 positive whole sizes", "o17.nii.gz"),
    ("roi_size of another length", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o18.nii.gz", "roi_size=[16]"],
     "roi_size=[16] must be 2", "o18.nii.gz"),
    # found by a walkthrough: a GPU asked for on a machine without one, and a misspelt blend mode (MONAI said
    # "out of memory"), were tracebacks
    ("cuda without a GPU", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o19.nii.gz", "device=cuda:7"],
     "device='cuda:7' but this machine has", "o19.nii.gz"),
    ("not a device", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o20.nii.gz", "device=gpu"],
     "device='gpu' is not a device", "o20.nii.gz"),
    ("blend mode misspelt", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o21.nii.gz", "mode=gausian"],
     "mode='gausian' must be gaussian or constant", "o21.nii.gz"),
    ("save_probabilities not a flag", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o23.nii.gz",
                                       "save_probabilities=yes"], "save_probabilities='yes' must be true or false",
     "o23.nii.gz"),
    ("overwrite not a flag", ["ckpt={c}", "input={t}/vol.nii.gz", "output={t}/o25.nii.gz", "overwrite=yes"],
     "overwrite='yes' must be true or false", "o25.nii.gz"),
    # found by a walkthrough: a TIFF given to a checkpoint trained on PNGs was "not a NIfTI file"
    ("a TIFF, 2D image checkpoint", ["ckpt={t}/folder_run/checkpoints/best.ckpt", "input={t}/scan.tif",
                                     "output={t}/o32.png"], "scan.tif is neither a NIfTI volume", "o32.png"),
    ("probabilities of 2D image files", ["ckpt={t}/folder_run/checkpoints/best.ckpt", "input={t}/image.png",
                                         "output={t}/o24.png", "save_probabilities=true"],
     "save_probabilities=true writes volumes' class probabilities", "o24.png"),
]


#: run as a real ``python -m`` process; the rest run the same ``__main__`` in this process (tests/cli.py)
AS_PROCESS = {"missing input"}


@pytest.mark.parametrize("name, args, culprit, output", CASES, ids=[c[0] for c in CASES])
def test_predict_bad_input(files, name, args, culprit, output):
    tmp, ckpt = files
    argv = [a.format(t=tmp, c=ckpt) for a in args]
    run_cli = run_subprocess if name in AS_PROCESS else run_in_process
    device = [] if any(a.startswith("device=") for a in argv) else ["device=cpu"]
    proc = run_cli("experiments.predict", [*argv, *device], tmp)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert culprit in lines[0] and lines[0].startswith("error: ")
    if output:
        assert not (tmp / output).exists()
    assert not list(tmp.rglob("*.tmp")), "no half-written temp file left"


def test_a_4d_input_with_one_time_point_gets_its_own_shape_back(files):
    """Found by an audit: an (H, W, D, 1) input got an (H, W, D) segmentation; its saved probabilities too (a
    review)."""
    tmp, ckpt = files
    proc = run_in_process("experiments.predict", [f"ckpt={ckpt}", f"input={tmp / 'vol4d.nii.gz'}",
                                                  f"output={tmp / 'seg4d.nii.gz'}", "device=cpu",
                                                  "save_probabilities=true"], tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = nib.load(tmp / "seg4d.nii.gz")
    assert out.shape == (16, 16, 3, 1) and np.allclose(out.affine, np.eye(4))
    with np.load(tmp / "seg4d.npz", allow_pickle=False) as f:
        assert f["probabilities"].shape == (2, 16, 16, 3, 1)


def test_a_folder_of_files_predict_did_not_write_is_not_overwritten(files):
    """Found by a walkthrough: ``output=labelsTs/`` replaced the ground truth there without a word. A folder
    holding files predict would overwrite is refused unless predict wrote them (its marker) or overwrite=true;
    and a bad ``labels=`` no longer leaves an empty output folder behind."""
    import shutil

    tmp, ckpt = files
    inp, truth = tmp / "ow_in", tmp / "ow_labels"
    inp.mkdir()
    truth.mkdir()
    shutil.copy(tmp / "vol.nii.gz", inp / "case1_0000.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((16, 16, 3), np.uint8), np.eye(4)), truth / "case1.nii.gz")
    before = (truth / "case1.nii.gz").read_bytes()
    args = [f"ckpt={ckpt}", f"input={inp}", "device=cpu"]
    proc = run_in_process("experiments.predict", [*args, f"output={truth}"], tmp)
    assert proc.returncode == 2 and "already holds 1 file(s) this predict would overwrite (e.g. case1.nii.gz)" in proc.stderr
    assert (truth / "case1.nii.gz").read_bytes() == before
    out = tmp / "ow_out"
    for _ in range(2):  # predict's own folder: a rerun overwrites its own predictions
        assert run_in_process("experiments.predict", [*args, f"output={out}"], tmp).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == [".fedmed-predict", "case1.nii.gz"]
    assert run_in_process("experiments.predict", [*args, f"output={truth}", "overwrite=true"], tmp).returncode == 0
    assert (truth / "case1.nii.gz").read_bytes() != before
    small = tmp / "ow_small_labels"
    small.mkdir()
    shutil.copy(tmp / "lab_small.nii.gz", small / "case1.nii.gz")    # a label of another shape
    proc = run_in_process("experiments.predict", [*args, f"output={tmp / 'ow_never'}", f"labels={small}"], tmp)
    assert proc.returncode == 2 and "case1.nii.gz" in proc.stderr and not (tmp / "ow_never").exists()
    values = tmp / "ow_value_labels"                                   # a label value outside the classes: found
    values.mkdir()                                                     # per case, after the folder was made
    shutil.copy(tmp / "lab_outside.nii.gz", values / "case1.nii.gz")
    proc = run_in_process("experiments.predict", [*args, f"output={tmp / 'ow_never2'}", f"labels={values}"], tmp)
    assert proc.returncode == 2 and not (tmp / "ow_never2").exists(), proc.stderr
    # a single output file predict did not write (a copy of the ground truth) is refused too; its own is not
    gt = tmp / "ow_gt.nii.gz"
    shutil.copy(truth / "case1.nii.gz", gt)  # overwritten above by predict: its signature makes it predict's
    nib.save(nib.Nifti1Image(np.ones((16, 16, 3), np.uint8), np.eye(4)), gt)
    single = [f"ckpt={ckpt}", f"input={inp / 'case1_0000.nii.gz'}", "device=cpu", f"output={gt}"]
    proc = run_in_process("experiments.predict", single, tmp)
    assert proc.returncode == 2 and "already exists and no predict wrote it" in proc.stderr
    assert run_in_process("experiments.predict", [*single, "overwrite=true"], tmp).returncode == 0
    assert run_in_process("experiments.predict", single, tmp).returncode == 0  # now predict's own: a rerun


def test_a_label_stored_flipped_is_scored_by_its_own_affine(files):
    """A walkthrough: the label's affine was ignored, so a label stored x-flipped (its affine saying so) was
    scored against the mirrored prediction. Both stored forms of one label now reach the scores as the same
    target, with the input's spacing; and predict runs with either."""
    from types import SimpleNamespace

    from engine.predict import load_case_label
    from engine.predict_cases import PredictCase

    tmp, ckpt = files
    dm = SimpleNamespace(label_fn=lambda: (lambda y: y), params=SimpleNamespace(labels=(0, 1)))
    got = {name: load_case_label(PredictCase(name, [tmp / "vol.nii.gz"], tmp / "unused.nii.gz", tmp / f"{name}.nii.gz"), dm)
           for name in ("lab_region", "lab_region_flipped")}
    np.testing.assert_array_equal(got["lab_region"][0], got["lab_region_flipped"][0])
    assert got["lab_region"][1] == got["lab_region_flipped"][1] == (1.0, 1.0, 1.0)
    out = tmp / "flipped_seg.nii.gz"
    proc = run_in_process("experiments.predict", [f"ckpt={ckpt}", f"input={tmp / 'vol.nii.gz'}", f"output={out}",
                                                  f"labels={tmp / 'lab_region_flipped.nii.gz'}", "device=cpu"], tmp)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-2000:]


def test_numbered_scans_are_cases_not_channels(files):
    """A walkthrough: ``scan_0001`` and ``scan_0002`` (two patients) were stacked as the channels of one case
    ``scan``; nnU-Net's channels run _0000.._C-1, so these are two cases."""
    from engine.predict_cases import plan_cases

    tmp, ckpt = files
    assert [c.case_id for c in plan_cases(tmp / "numbered", tmp / "num_out")] == ["scan_0001", "scan_0002"]
    assert [(c.case_id, len(c.images)) for c in plan_cases(tmp / "twochan", tmp / "two_out")] == [("a", 2)]
    proc = run_in_process("experiments.predict", [f"ckpt={ckpt}", f"input={tmp / 'numbered'}",
                                                  f"output={tmp / 'num_out'}", "device=cpu"], tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp / "num_out").glob("*.nii.gz")) == ["scan_0001.nii.gz", "scan_0002.nii.gz"]


def test_cases_are_named_and_labelled_by_case_and_one_name_is_one_volume(files):
    """Found by a review: a folder with ``a.nii`` and ``a.nii.gz`` segmented one of them and said nothing; a single
    KiTS ``case_*/imaging.nii.gz`` wrote ``output/imaging.nii.gz`` (the next case overwrote it) and a single
    nnU-Net ``<case>_0000`` file found no ``<case>`` label; LiTS's own folder given as labels= scored the CT."""
    import shutil

    from datamodules.errors import DataError
    from engine.predict_cases import plan_cases

    tmp, ckpt = files
    two = tmp / "twonames"
    two.mkdir()
    shutil.copy(tmp / "vol.nii.gz", two / "a.nii.gz")
    nib.save(nib.load(tmp / "vol.nii.gz"), two / "a.nii")
    proc = run_in_process("experiments.predict", [f"ckpt={ckpt}", f"input={two}", "device=cpu",
                                                  f"output={tmp / 'two_out'}"], tmp)
    assert proc.returncode == 2 and "holds several volumes of one case: a.nii, a.nii.gz" in proc.stderr, proc.stderr
    out = tmp / "named_out"
    out.mkdir()
    for case in ("case_00001", "case_00002"):  # KiTS: named by the case, not "imaging"
        (tmp / "kits" / case).mkdir(parents=True)
        shutil.copy(tmp / "vol.nii.gz", tmp / "kits" / case / "imaging.nii.gz")
        shutil.copy(tmp / "lab_region.nii.gz", tmp / "kits" / case / "segmentation.nii.gz")
        (plan,) = plan_cases(tmp / "kits" / case / "imaging.nii.gz", out, tmp / "kits" / case)
        assert plan.output == out / f"{case}.nii.gz" and plan.label.name == "segmentation.nii.gz"
    (tmp / "nnunet" / "labelsTs").mkdir(parents=True)
    shutil.copy(tmp / "vol.nii.gz", tmp / "nnunet" / "liver_001_0000.nii.gz")
    shutil.copy(tmp / "lab_region.nii.gz", tmp / "nnunet" / "labelsTs" / "liver_001.nii.gz")
    (plan,) = plan_cases(tmp / "nnunet" / "liver_001_0000.nii.gz", out, tmp / "nnunet" / "labelsTs")
    assert (plan.case_id, plan.output.name, plan.label.name) == ("liver_001", "liver_001.nii.gz", "liver_001.nii.gz")
    (tmp / "lits").mkdir()
    shutil.copy(tmp / "vol.nii.gz", tmp / "lits" / "volume-0.nii.gz")
    with pytest.raises(DataError, match="no label for case volume-0"):  # not the CT itself
        plan_cases(tmp / "lits" / "volume-0.nii.gz", out, tmp / "lits")
    shutil.copy(tmp / "lab_region.nii.gz", tmp / "lits" / "segmentation-0.nii.gz")
    assert plan_cases(tmp / "lits" / "volume-0.nii.gz", out, tmp / "lits")[0].label.name == "segmentation-0.nii.gz"


def test_trained_settings_of_numpy_and_plain_kinds_pass(tmp_path):
    """The review of the settings check: a numpy int count or size is a whole number too."""
    from engine.predict_models import check_trained_settings

    check_trained_settings({"num_classes": np.int64(2), "roi_size": (np.int32(8), 8), "overlap": 0,
                            "fg_threshold": None, "class_names": ("background", "liver")}, tmp_path / "c.ckpt")


def test_files_a_folder_predict_leaves_out_are_named(tmp_path, caplog):
    """A walkthrough: a TIFF among a folder's PNGs was skipped without a word."""
    import logging

    from engine.predict_images import plan_images

    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(b"\x89PNG\r\n")
    (src / "b.tif").write_bytes(b"II*\x00")
    with caplog.at_level(logging.WARNING, logger="experiments.predict"):
        cases = plan_images(src, tmp_path / "out", None, "", "")
    assert [c.case_id for c in cases] == ["a"]
    assert "1 file(s) not .png/.jpg/.jpeg/.npy are not predicted: b.tif" in caplog.text
