"""Orientation and spacing round trips, folder / ensemble / TTA predict, HD95 and NSD (issue 12)."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from datamodules.spatial import from_grid, to_grid
from experiments.predict import predict
from tests.volumetric_helpers import make_run, phantom, reoriented, to_ras


def _cfg(**kw):
    base = dict(labels=None, run_config=None, batch_size=8, roi_size=None, overlap=0.5, mode="gaussian",
                tta=False, nsd_tolerance_mm=1.0, device="cpu")
    return OmegaConf.create({**base, **kw})


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


@pytest.fixture(scope="module")
def setup(module_tmp):
    tmp = module_tmp("vol")
    return tmp, make_run(tmp), phantom(tmp)


def test_orientations_give_the_same_prediction(setup):
    """RAS, LPS, RSA and PSR copies of one volume: the same segmentation once mapped back (>= 0.99 Dice)."""
    tmp, ckpt, root = setup
    src = root / "volume-0.nii.gz"
    inp = tmp / "orient_in"
    inp.mkdir()
    for codes in ("RAS", "LPS", "RSA", "PSR"):
        reoriented(src, codes, inp / f"{codes}.nii.gz")
    predict(_cfg(ckpt=str(ckpt), input=str(inp), output=str(tmp / "orient_out")))
    ref = None
    for codes in ("RAS", "LPS", "RSA", "PSR"):
        img_in, seg = nib.load(inp / f"{codes}.nii.gz"), nib.load(tmp / "orient_out" / f"{codes}.nii.gz")
        assert seg.shape == img_in.shape and np.allclose(seg.affine, img_in.affine)
        assert nib.aff2axcodes(seg.affine) == tuple(codes)
        ras = to_ras(seg)
        ref = ras if ref is None else ref
        assert ras.any() and _dice(ras, ref) >= 0.99, codes


def test_orientation_matters_without_reorientation(setup):
    """The same check fails when volumes are not reoriented (data.orientation=null): the test can fail."""
    tmp, ckpt, root = setup
    cfg = OmegaConf.load(ckpt.parent.parent / "config.yaml")
    cfg.data.orientation = None
    run_cfg = tmp / "noorient.yaml"
    run_cfg.write_text(OmegaConf.to_yaml(cfg))
    inp = tmp / "noorient_in"
    inp.mkdir()
    for codes in ("RAS", "PSR"):
        reoriented(root / "volume-0.nii.gz", codes, inp / f"{codes}.nii.gz")
    predict(_cfg(ckpt=str(ckpt), input=str(inp), output=str(tmp / "noorient_out"), run_config=str(run_cfg)))
    a, b = (to_ras(nib.load(tmp / "noorient_out" / f"{c}.nii.gz")) for c in ("RAS", "PSR"))
    assert _dice(a, b) < 0.99


def test_spacing_round_trip_labels_and_predict(setup):
    tmp, ckpt, root = setup
    lab = nib.load(root / "segmentation-0.nii.gz")
    y = np.asarray(lab.dataobj).astype(np.float32)
    g, meta = to_grid(y, lab.affine, "RAS", spacing=[1.0, 1.0, 1.0], is_label=True)
    assert np.allclose(meta.spacing, 1.0, atol=0.1) and g.shape != y.shape and set(np.unique(g)) <= set(np.unique(y))
    back = from_grid(g, meta, is_label=True)
    assert back.shape == y.shape and _dice(back, y) >= 0.9  # 0.8 -> 1 mm in-plane loses detail
    fine, meta = to_grid(y, lab.affine, "RAS", spacing=[0.4, 0.4, 1.25], is_label=True)
    assert fine.shape == (80, 72, 16) and np.array_equal(from_grid(fine, meta, is_label=True), y)
    cfg = OmegaConf.load(ckpt.parent.parent / "config.yaml")
    cfg.data.spacing = [1.0, 1.0, 1.0]
    run_cfg = tmp / "spacing.yaml"
    run_cfg.write_text(OmegaConf.to_yaml(cfg))
    src = reoriented(root / "volume-0.nii.gz", "LPS", tmp / "lps.nii.gz")
    predict(_cfg(ckpt=str(ckpt), input=str(src), output=str(tmp / "sp.nii.gz"), run_config=str(run_cfg)))
    seg = nib.load(tmp / "sp.nii.gz")
    assert seg.shape == nib.load(src).shape and np.allclose(seg.affine, nib.load(src).affine)


def test_folder_predict_with_labels_ensemble_and_tta(setup):
    tmp, ckpt, root = setup
    other = make_run(tmp, seed=1, name="run2")
    imgs, labs, out = tmp / "imgs", tmp / "labs", tmp / "folder_out"
    for d in (imgs, labs):
        d.mkdir()
    for name in ("caseA", "caseB"):  # nnU-Net naming: <case>_0000.nii.gz images, <case>.nii.gz labels
        shutil.copy(root / "volume-0.nii.gz", imgs / f"{name}_0000.nii.gz")
        shutil.copy(root / "segmentation-0.nii.gz", labs / f"{name}.nii.gz")
    summary = predict(_cfg(ckpt=[str(ckpt), str(other)], input=str(imgs), output=str(out), labels=str(labs),
                           tta=True))
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["caseA.nii.gz", "caseB.nii.gz"]
    for p in out.glob("*.nii.gz"):
        assert nib.load(p).shape == nib.load(root / "volume-0.nii.gz").shape
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"dice", "hd95", "nsd"} <= set(metrics["summary"]) and set(metrics["per_case"]) == {"caseA", "caseB"}
    assert summary["num_cases"] == 2 and 0 <= summary["nsd"] <= 1


@pytest.mark.parametrize("error", ["allocator", "cudnn"])
def test_out_of_memory_on_the_device_segments_the_case_again_on_the_cpu(setup, monkeypatch, capsys, error):
    """Where the class probabilities do not fit on predict's device (the allocator's error, or cuDNN failing to
    allocate its workspace, a plain RuntimeError), the case is segmented again with them on the CPU (nnU-Net's
    fallback), with a warning, and the same labels come out."""
    import sys

    import torch

    from lightning_modules.inference import VolumePredictor

    tmp, ckpt, root = setup
    src = root / "volume-0.nii.gz"
    predict(_cfg(ckpt=str(ckpt), input=str(src), output=str(tmp / "oom_ref.nii.gz")))
    probabilities, tries = VolumePredictor.probabilities, []

    def short_of_memory(self, x, on_device=False):
        tries.append(on_device)
        # the retry runs outside the except block: its traceback would keep the failed try's tensors alive
        assert on_device or sys.exc_info() == (None, None, None)
        if on_device:
            raise (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.50 GiB") if error == "allocator"
                   else RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
        return probabilities(self, x, on_device)

    monkeypatch.setattr(VolumePredictor, "probabilities", short_of_memory)
    predict(_cfg(ckpt=str(ckpt), input=str(src), output=str(tmp / "oom.nii.gz")))
    assert tries == [True, False]
    assert "volume-0: out of memory on cpu; the case again with its class probabilities on the CPU" in capsys.readouterr().out
    ref, out = (np.asarray(nib.load(tmp / n).dataobj) for n in ("oom_ref.nii.gz", "oom.nii.gz"))
    assert ref.any() and np.array_equal(out, ref)


def test_only_running_out_of_memory_is_retried_on_the_cpu():
    """Other RuntimeErrors (a shape bug, a CUDA launch failure) are not taken for a lack of memory: retrying
    them would hide the bug behind a slower second run."""
    import torch

    from engine.predict import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be ..."))
    assert is_out_of_memory(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert not is_out_of_memory(RuntimeError("Given groups=1, weight of size [8, 1, 3, 3], expected input ..."))
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not is_out_of_memory(ValueError("CUDNN_STATUS_ALLOC_FAILED"))


def test_save_probabilities_writes_what_the_labels_were_taken_from(setup):
    """save_probabilities=true (nnU-Net's --save_probabilities) writes <case>.npz beside each prediction: float32
    class probabilities on the input's own grid (an LPS file here, resampled to 1 mm and back), plain arrays that
    np.load reads without pickle, whose arg-max is the written segmentation; a binary net with fg_threshold
    (a review found its .npz silent about it) stores the threshold its labels were taken with."""
    tmp, ckpt, root = setup
    cfg = OmegaConf.load(ckpt.parent.parent / "config.yaml")
    cfg.data.spacing = [1.0, 1.0, 1.0]
    run_cfg = tmp / "prob_spacing.yaml"
    run_cfg.write_text(OmegaConf.to_yaml(cfg))
    src = reoriented(root / "volume-0.nii.gz", "LPS", tmp / "prob_lps.nii.gz")
    predict(_cfg(ckpt=str(ckpt), input=str(src), output=str(tmp / "prob_seg.nii.gz"), run_config=str(run_cfg),
                 save_probabilities=True))
    seg = np.asarray(nib.load(tmp / "prob_seg.nii.gz").dataobj)
    with np.load(tmp / "prob_seg.npz", allow_pickle=False) as f:
        prob, names, thr = f["probabilities"], list(f["class_names"]), float(f["fg_threshold"])
    assert prob.dtype == np.float32 and prob.shape == (len(names), *nib.load(src).shape) and len(names) >= 2
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-4)
    assert seg.any() and np.isnan(thr) and np.array_equal(prob.argmax(0), seg)
    binary = torch.load(ckpt, weights_only=True)  # data.target=organ: background / liver
    assert binary["hyper_parameters"]["num_classes"] == 2
    binary["hyper_parameters"]["fg_threshold"] = 0.3
    (tmp / "thr" / "checkpoints").mkdir(parents=True)
    torch.save(binary, tmp / "thr" / "checkpoints" / "best.ckpt")
    predict(_cfg(ckpt=str(tmp / "thr" / "checkpoints" / "best.ckpt"), input=str(src),
                 output=str(tmp / "thr_seg.nii.gz"), run_config=str(run_cfg), save_probabilities=True))
    with np.load(tmp / "thr_seg.npz", allow_pickle=False) as f:
        assert float(f["fg_threshold"]) == pytest.approx(0.3)
        assert np.array_equal(f["probabilities"][1] > 0.3, np.asarray(nib.load(tmp / "thr_seg.nii.gz").dataobj) > 0)
    inp, out = tmp / "prob_in", tmp / "prob_out"  # a folder: <case>.npz beside each <case>.nii.gz
    inp.mkdir()
    shutil.copy(root / "volume-0.nii.gz", inp / "caseA_0000.nii.gz")
    predict(_cfg(ckpt=str(ckpt), input=str(inp), output=str(out), save_probabilities=True))
    assert sorted(p.name for p in out.iterdir()) == [".fedmed-predict", "caseA.nii.gz", "caseA.npz"]


def test_predictor_ensemble_mean_and_mirror_tta():
    import torch
    from torch import nn

    from lightning_modules.inference import VolumePredictor, mirror_sets

    torch.manual_seed(0)
    point, conv = nn.Conv2d(1, 2, 1).eval(), nn.Conv2d(1, 2, 3, padding=1).eval()
    x = torch.randn(3, 1, 16, 16)
    one = VolumePredictor([point]).probabilities(x)
    two = VolumePredictor([conv]).probabilities(x)
    assert torch.allclose(VolumePredictor([point, conv]).probabilities(x), (one + two) / 2, atol=1e-6)
    assert torch.allclose(one.sum(1), torch.ones(3, 16, 16), atol=1e-5)
    # a 1x1 conv commutes with flips: mirroring changes nothing; a 3x3 conv does not commute
    assert torch.allclose(VolumePredictor([point], mirror_axes=(0, 1)).probabilities(x), one, atol=1e-6)
    assert not torch.allclose(VolumePredictor([conv], mirror_axes=(0, 1)).probabilities(x), two, atol=1e-4)
    assert mirror_sets([0, 1]) == [(), (0,), (1,), (0, 1)]
    with pytest.raises(ValueError, match="mirror_axes"):
        VolumePredictor([point], mirror_axes=(2,))


@pytest.mark.parametrize("layout", ["lits", "kits"])
def test_a_folder_in_a_training_layout_segments_its_images_and_scores_its_labels(tmp_path, layout):
    """Found by a walkthrough: predict on a LiTS folder segmented the ``segmentation-N`` masks as if they were
    CT (10 predictions for 5 cases) and, with ``labels=`` the folder, paired each volume with itself; a KiTS
    folder (``case_*/imaging.nii.gz``) was refused."""
    from datamodules.synthetic import write_phantom_dataset
    from tests.cli import run_in_process

    ckpt = make_run(tmp_path)
    data = write_phantom_dataset(tmp_path / layout, layout=layout, n_cases=2, shape=(32, 32, 6), seed=1)
    out = tmp_path / "pred"
    proc = run_in_process("experiments.predict", [f"ckpt={ckpt}", f"input={data}", f"output={out}",
                                                  f"labels={data}", "device=cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {"lits": ["volume-0.nii.gz", "volume-1.nii.gz"], "kits": ["case_00000.nii.gz", "case_00001.nii.gz"]}
    assert sorted(p.name for p in out.glob("*.nii.gz")) == names[layout]
    scores = json.loads((out / "metrics.json").read_text())
    assert sorted(scores["per_case"]) == [n.removesuffix(".nii.gz") for n in names[layout]]


@pytest.mark.parametrize("key, value", [("class_names", ["background", "tumor"]), ("fg_threshold", 0.9)])
def test_an_ensemble_of_checkpoints_with_other_classes_or_threshold_is_refused(setup, key, value):
    """Found by a review: predict's checkpoint ensemble compared only the class count and took the names and
    threshold of the first checkpoint, so the order of ``ckpt=[a, b]`` decided the labels (7486 foreground
    voxels one way, 0 the other); experiments.ensemble already refused both."""
    from lightning_modules.errors import CheckpointError

    tmp, ckpt, root = setup
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"][key] = value
    other = ckpt.parent / f"other_{key}.ckpt"
    torch.save(state, other)
    with pytest.raises(CheckpointError, match=rf"{key}=.* an ensemble needs the same"):
        predict(_cfg(ckpt=[str(ckpt), str(other)], input=str(root / "volume-0.nii.gz"),
                     output=str(tmp / f"ens_{key}.nii.gz")))
    assert not (tmp / f"ens_{key}.nii.gz").exists()


def test_a_label_map_has_no_display_window_or_statistic_intent(setup):
    """Found by a review: the written label map kept the CT's cal_min/cal_max (-1000/1000: labels shown black)
    and its intent code."""
    tmp, ckpt, root = setup
    src = nib.load(root / "volume-0.nii.gz")
    header = src.header.copy()
    header["cal_min"], header["cal_max"] = -1000, 1000
    header.set_intent("t test", (10.0,))
    shown = tmp / "windowed.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), src.affine, header), shown)
    out = tmp / "windowed_seg.nii.gz"
    predict(_cfg(ckpt=str(ckpt), input=str(shown), output=str(out)))
    seg = nib.load(out).header
    assert (float(seg["cal_min"]), float(seg["cal_max"])) == (0.0, 0.0) and seg.get_intent()[0] == "label"
