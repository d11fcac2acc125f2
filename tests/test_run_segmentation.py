"""`+exp=lits_dnet` end to end through Hydra's compose API, predict, bad input, and the learning test."""
import json
import re
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from experiments.run import dispatch
from tests.cli import run_in_process
from tests.hydra_helpers import compose_run

TINY = [
    "+exp=lits_dnet",
    "model.width=4",
    "data.image_size=32",
    "data.batch_size=8",
    "data.synthetic.n_cases=6",
    "data.synthetic.shape=[48,48,10]",
    "trainer.max_epochs=1",
    "logger=csv",
]


def test_lits_dnet_end_to_end(tmp_path):
    cfg = compose_run(TINY, tmp_path)
    assert cfg.model._target_.endswith("DNet") and cfg.module.loss.base._target_.endswith("HybridCEDiceLoss")
    metrics = dispatch(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test/dice"] == pytest.approx(metrics["test/dice"])
    for key in ("test/dice", "test/miou", "test/accuracy", "test/rvd_liver", "test/auc_liver", "val/dice"):
        assert key in saved
    assert saved["test/num_cases"] >= 1
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    for png in ("test_overlays.png", "test_roc.png", "learning_curves.png"):
        assert (run / png).stat().st_size > 1000
    assert (run / "csv" / "metrics.csv").is_file()
    # found by a walkthrough: per-volume scores were only printed and sent to W&B; the run folder keeps them
    rows = (run / "test_per_case.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[0] == "case" and "dice" in header and len(rows) == 1 + saved["test/num_cases"]
    dices = [float(r.split(",")[header.index("dice")]) for r in rows[1:]]
    assert np.mean(dices) == pytest.approx(saved["test/dice"], abs=1e-5)


def test_a_checkpoint_can_be_chosen_on_one_classs_validation_dice(tmp_path):
    """A review: ``module.monitor=val/dice_liver`` was refused after the first epoch (Lightning could not find the
    key): per-class validation Dice reached metrics.json only, not the loggers or the checkpoint callback."""
    metrics = dispatch(compose_run([*TINY, "module.monitor=val/dice_liver", "test=false"], tmp_path))
    assert 0.0 <= metrics["val/dice_liver_best"] <= 1.0
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "val/dice_liver" in header


def test_models_swap_in(tmp_path):
    """``model=<name>`` builds and trains that net (a test audit: without an assertion, a model override ignored
    would have passed): the best checkpoint names that net's class."""
    import torch

    for model, cls in (("unet3plus", "UNet3Plus"), ("attention_unet", "AttentionUNet")):
        cfg = compose_run([*TINY, f"model={model}", "model.width=4", "test=false"], tmp_path / model)
        dispatch(cfg)
        ckpt = torch.load(tmp_path / model / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
        assert str(ckpt["hyper_parameters"]["net"]["_target_"]).endswith(f".{cls}"), ckpt["hyper_parameters"]["net"]


def test_predict_writes_aligned_nifti(tmp_path):
    cfg = compose_run(TINY, tmp_path)
    dispatch(cfg)
    run = tmp_path / "run"
    (run / "config.yaml").write_text(__import__("omegaconf").OmegaConf.to_yaml(cfg, resolve=True))
    volume = tmp_path / "data" / "synthetic_lits" / "volume-0.nii.gz"
    out = tmp_path / "pred" / "seg-0.nii.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.predict", f"ckpt={run / 'checkpoints' / 'best.ckpt'}",
         f"input={volume}", f"output={out}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    src, seg = nib.load(volume), nib.load(out)
    assert seg.shape == src.shape and np.allclose(seg.affine, src.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}


SMALL_DATA = ["data.synthetic.n_cases=4", "data.synthetic.shape=[32,32,6]", "data.image_size=32"]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["data=lits", "data.root={tmp}/no_such_dir/LiTS"], "no_such_dir/LiTS"),
        ([*SMALL_DATA, "model.no_such_key=1"], "no_such_key"),
        ([*SMALL_DATA, "data.num_classes=3"], "data.num_classes=3"),
    ],
)
def test_bad_input_one_line_nonzero_exit(tmp_path, args, expected):
    proc = run_in_process("experiments.run", ["+exp=lits_dnet", *[a.format(tmp=tmp_path) for a in args], "logger=csv",
                                              "trainer.max_epochs=1", f"paths.log_dir={tmp_path}",
                                              f"paths.data_dir={tmp_path / 'data'}", "model.width=4"], tmp_path)
    assert proc.returncode != 0
    assert expected in proc.stderr


def test_predict_rejects_bad_checkpoint(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    vol = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.float32), np.eye(4)), vol)
    proc = run_in_process("experiments.predict", [f"ckpt={bad}", f"input={vol}", f"output={tmp_path / 'o.nii.gz'}"],
                          tmp_path)
    assert proc.returncode == 2 and "bad.ckpt" in proc.stderr and not (tmp_path / "o.nii.gz").exists()


@pytest.mark.slow
def test_dnet_learns_synthetic_liver(tmp_path):
    """Learning test: D-Net reaches validation liver Dice >= 0.85 on the phantoms in a CPU budget."""
    cfg = compose_run(
        ["+exp=lits_dnet", "logger=csv", "callbacks=default", "test=false", "data.synthetic.n_cases=10",
         "trainer.max_epochs=6", "model.width=8"], tmp_path)
    metrics = dispatch(cfg)
    assert metrics["val/dice"] >= 0.85


def test_null_class_names_come_from_the_datasets_labels(tmp_path):
    """docs/data.md: ``data.class_names=null`` takes the names from ``dataset.json``; a walkthrough found the
    metrics named ``dice_class_1``/``dice_class_2`` (the data knew the names; the module never saw them)."""
    from lightning_modules.checkpoints import load_checkpoint

    cfg = compose_run([*TINY, "data.layout=msd", "data.target=multiclass", "+data.synthetic.organs=[liver,spleen]",
                       "data.num_classes=3", "data.class_names=null"], tmp_path)
    metrics = dispatch(cfg)
    assert "test/dice_liver" in metrics and "test/dice_spleen" in metrics
    assert not any("class_" in k for k in metrics)
    header = (tmp_path / "run" / "test_per_case.csv").read_text().splitlines()[0]
    assert "dice_spleen" in header
    hparams = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert hparams["class_names"] == ["background", "liver", "spleen"]  # what predict names its scores by


def test_a_plateau_schedule_steps_on_the_monitored_metric_and_a_reload_keeps_the_schedule(tmp_path):
    """A review: the segmentation module passed no ``monitor`` to its scheduler, so Lightning refused a
    ReduceLROnPlateau (allowed by config), and ``scheduler_interval`` / ``roc_thresholds`` were not in its
    hyper-parameters, so ``load_from_checkpoint`` stepped a per-step schedule once per epoch."""
    import torch

    from lightning_modules.safe_load import load_checkpoint
    from lightning_modules.segmentation import SegmentationModule

    sched = ["+module.scheduler.mode=max", "+module.scheduler.factor=0.5", "+module.scheduler.patience=0",
             "~module.scheduler.T_max", "~module.scheduler.eta_min",
             "module.scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau",
             "++module.scheduler_interval=epoch", "++module.roc_thresholds=50", "trainer.max_epochs=2", "test=false"]
    dispatch(compose_run([*TINY, *sched], tmp_path))
    hp = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")["hyper_parameters"]
    assert hp["monitor"] == "val/dice" and hp["scheduler_interval"] == "epoch" and hp["roc_thresholds"] == 50
    module = SegmentationModule(net=torch.nn.Conv2d(1, 2, 1), loss={"_target_": "torch.nn.CrossEntropyLoss"},
                                num_classes=2, scheduler_interval="step", roc_thresholds=50,
                                scheduler={"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau", "_partial_": True})
    conf = module.configure_optimizers()["lr_scheduler"]
    assert conf["monitor"] == "val/dice" and conf["interval"] == "step"
    assert module.hparams["scheduler_interval"] == "step" and module.hparams["roc_thresholds"] == 50


@pytest.mark.parametrize("override, said", [
    ("++module.scheduler.T_mx=5", "'T_mx'"),
    ("module.scheduler.T_max=0", "ZeroDivisionError"),
])
def test_a_scheduler_it_cannot_build_or_step_is_one_line(tmp_path, override, said):
    """A review: a misspelt scheduler argument or ``T_max=0`` was a traceback at the first epoch (exit 1, no
    failed.json), and in a sweep it stopped the sweep; the module now builds and steps it once when it is made."""
    from engine.builders import build_module
    from engine.errors import find_user_error

    cfg = compose_run([*TINY, override], tmp_path)
    with pytest.raises(Exception) as info:
        build_module(cfg)
    err = find_user_error(info.value)  # what experiments.run prints as its one line (exit 2)
    assert err is not None and re.search(rf"module.scheduler \(torch.optim.lr_scheduler.\w+\): .*{said}", str(err))
