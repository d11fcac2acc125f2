"""Issue 10: every bad input through the real entry point (``python -m experiments.run``) gives exit code 2,
one line starting ``error`` that names the culprit, no traceback, and no half-written output (no
``metrics.json``, no checkpoint). Most cases fail before training, on tiny phantoms generated once.
Federation and predict cases live in tests/test_bad_inputs_federation.py and tests/test_bad_inputs_predict.py.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.synthetic import MANIFEST, write_phantom_dataset
from tests.cli import run_in_process, run_subprocess

BASE = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "data.batch_size=8", "data.synthetic.n_cases=6",
        "data.synthetic.shape=[48,48,10]", "trainer.max_epochs=1", "logger=csv", "callbacks=default",
        "~callbacks.rich_progress_bar", "~callbacks.throughput"]
KD = ["+exp=lits_hlfd", "data.image_size=32", "data.batch_size=4", "data.synthetic.n_cases=6",
      "data.synthetic.shape=[48,48,10]", "trainer.max_epochs=1", "logger=csv", "module.example_size=32"]


@pytest.fixture(scope="module")
def env(module_tmp) -> dict:
    """Phantoms (the shapes BASE asks for, so nothing is regenerated) and a framework checkpoint, built
    in-process without training."""
    root = module_tmp("bad_inputs")
    data = root / "data"
    write_phantom_dataset(data / "synthetic_lits", "lits", n_cases=6, shape=(48, 48, 10), seed=0)
    from lightning_modules.segmentation import SegmentationModule

    net = {"_target_": "lightning_modules.nets.dnet.DNet", "in_channels": 1, "classes": 2, "width": 4}
    loss = {"_target_": "lightning_modules.losses.hybrid.HybridCEDiceLoss"}
    module = SegmentationModule(net, loss, num_classes=2)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save(ckpt, root / "dnet.ckpt")
    return {"root": root, "data": data, "ckpt": ckpt}


def lits_copy(env: dict, tmp: Path) -> Path:
    """A plain LiTS-layout folder (no manifest) to break, for ``data=lits``."""
    dst = tmp / "lits"
    shutil.copytree(env["data"] / "synthetic_lits", dst, ignore=shutil.ignore_patterns(".*", MANIFEST))
    return dst


def save_ckpt(env: dict, tmp: Path, name: str = "c.ckpt", **hp) -> Path:
    ckpt = {"state_dict": env["ckpt"]["state_dict"],
            "hyper_parameters": {**env["ckpt"]["hyper_parameters"], **hp}}
    torch.save(ckpt, tmp / name)
    return tmp / name


class Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _nifti(path: Path, array: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


# -------------------------------------------------------------------------------- the cases
# name -> (setup(env, tmp) -> (overrides, culprit)); overrides are added to BASE unless they start with +exp
Setup = Callable[[dict, Path], tuple[list[str], str]]


def _text_file(env, tmp):
    (tmp / "notes.ckpt").write_text("not a checkpoint")
    return ["train=false", f"ckpt_path={tmp / 'notes.ckpt'}"], "notes.ckpt"


def _truncated(env, tmp):
    save_ckpt(env, tmp, "full.ckpt")
    (tmp / "cut.ckpt").write_bytes((tmp / "full.ckpt").read_bytes()[:200])
    return ["train=false", f"ckpt_path={tmp / 'cut.ckpt'}"], "cut.ckpt"


def _list_pickle(env, tmp):
    torch.save([1, 2, 3], tmp / "list.ckpt")
    return ["train=false", f"ckpt_path={tmp / 'list.ckpt'}"], "list.ckpt"


def _no_state_dict(env, tmp):
    torch.save({"epoch": 3}, tmp / "bare.ckpt")
    return ["train=false", f"ckpt_path={tmp / 'bare.ckpt'}"], "bare.ckpt"


def _pickle(env, tmp):
    torch.save({"state_dict": {"x": Marker(str(tmp / "pwned"))}}, tmp / "evil.ckpt")
    return ["train=false", f"ckpt_path={tmp / 'evil.ckpt'}"], "evil.ckpt"


def _other_arch(env, tmp):
    net = {"_target_": "lightning_modules.nets.unet3plus.UNet3Plus", "in_channels": 1, "classes": 2, "width": 4}
    return ["train=false", f"ckpt_path={save_ckpt(env, tmp, net=net)}"], "c.ckpt"


def _other_classes(env, tmp):
    net = {**env["ckpt"]["hyper_parameters"]["net"], "classes": 3}
    return ["train=false", f"ckpt_path={save_ckpt(env, tmp, net=net)}"], "classes=3"


def _target(env, tmp):
    net = {"_target_": "os.system", "command": f"touch {tmp / 'pwned'}"}
    return ["train=false", f"ckpt_path={save_ckpt(env, tmp, net=net)}"], "os.system"


def _weights_without_trainer_state(env, tmp):  # found by an audit: KeyError 'pytorch-lightning_version'
    return [f"ckpt_path={save_ckpt(env, tmp)}"], "trainer state"


def _trainer_state_of_wrong_type(env, tmp):  # found by an audit: AttributeError from Lightning's loop restore
    torch.save({**env["ckpt"], "pytorch-lightning_version": "2.5.0", "epoch": 0, "global_step": 0, "loops": 5},
               tmp / "loops.ckpt")
    return [f"ckpt_path={tmp / 'loops.ckpt'}"], "'loops' holds int"


def _resume_crafted(env, tmp):
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {"x": Marker(str(tmp / "pwned"))}}, tmp / "run" / "checkpoints" / "last.ckpt")
    return [f"resume={tmp / 'run'}"], "last.ckpt"


def _teacher_other_arch(env, tmp):  # distill.teacher.model is nested_unet, the checkpoint a D-Net
    # and the way out (a walkthrough: nothing said that teacher.model=null takes the checkpoint's own net)
    return [*KD, f"distill.teacher.ckpt={save_ckpt(env, tmp, 'dnet_teacher.ckpt')}"], \
        "distill.teacher.model=null takes the checkpoint's own net config"


def _teacher_foreign_weights(env, tmp):  # a bare state dict of another net: what does not fit, in one line
    torch.save({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, tmp / "resnet.pt")
    return [*KD, f"distill.teacher.ckpt={tmp / 'resnet.pt'}"], "2 unexpected (first: fc.weight)"


def _teacher_pickle(env, tmp):
    torch.save({"state_dict": {"x": Marker(str(tmp / "pwned"))}}, tmp / "t.ckpt")
    return [*KD, f"distill.teacher.ckpt={tmp / 't.ckpt'}"], "t.ckpt"


def _teacher_target(env, tmp):
    net = {"_target_": "builtins.open", "file": str(tmp / "pwned"), "mode": "w"}
    return [*KD, "distill.teacher.model=null", f"distill.teacher.ckpt={save_ckpt(env, tmp, net=net)}"], "builtins.open"


def _nan_image(env, tmp):
    root = lits_copy(env, tmp)
    img = nib.load(str(root / "volume-2.nii.gz"))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    vol[10, 10, 3] = np.nan
    _nifti(root / "volume-2.nii.gz", vol)
    return ["data=lits", f"data.root={root}", "data.image_size=32", "data.num_workers=0"], "volume-2.nii.gz"


def _missing_label(env, tmp):
    root = lits_copy(env, tmp)
    (root / "segmentation-4.nii.gz").unlink()
    return ["data=lits", f"data.root={root}", "data.image_size=32", "data.num_workers=0"], "volume-4.nii.gz"


def _label_values(env, tmp):
    root = lits_copy(env, tmp)
    _nifti(root / "segmentation-1.nii.gz", np.full((48, 48, 10), 7, np.uint8))
    return ["data=lits", f"data.root={root}", "data.image_size=32", "data.num_workers=0"], "segmentation-1.nii.gz"


def _shape_mismatch(env, tmp):
    root = lits_copy(env, tmp)
    _nifti(root / "segmentation-3.nii.gz", np.zeros((40, 48, 10), np.uint8))
    return ["data=lits", f"data.root={root}", "data.image_size=32", "data.num_workers=0"], "segmentation-3.nii.gz"


def _corrupt_nifti(env, tmp):
    root = lits_copy(env, tmp)
    (root / "volume-5.nii.gz").write_bytes(gzip.compress(b"garbage" * 50))
    return ["data=lits", f"data.root={root}", "data.image_size=32", "data.num_workers=0"], "volume-5.nii.gz"


def _empty_root(env, tmp):
    (tmp / "empty").mkdir()
    return ["data=lits", f"data.root={tmp / 'empty'}", "data.num_workers=0"], "empty"


def _foreign_folder(env, tmp):
    root = tmp / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("my files")
    return [f"data.root={root}"], "notes.txt"


def _crafted_manifest(env, tmp):
    root = tmp / "phantoms"
    root.mkdir()
    (tmp / "victim.txt").write_text("precious")
    (root / MANIFEST).write_text(json.dumps({"params": {}, "files": {"../victim.txt": "0" * 64}}))
    return [f"data.root={root}"], "../victim.txt"


def _medmnist_outside_table(env, tmp):
    rng = np.random.default_rng(0)
    arrays = {f"{s}_images": rng.integers(0, 255, (n, 28, 28), dtype=np.uint8) for s, n in
              (("train", 20), ("val", 6), ("test", 6))}
    arrays |= {f"{s}_labels": rng.integers(0, 3, (n, 1)) for s, n in (("train", 20), ("val", 6), ("test", 6))}
    np.savez(tmp / "mymnist.npz", **arrays)
    return ["+exp=medmnist", f"data.root={tmp}", "data.flag=mymnist", "logger=csv"], "mymnist"


def _medmnist_missing(env, tmp):
    return ["+exp=medmnist", f"data.root={tmp}", "data.flag=pathmnist", "logger=csv"], "pathmnist"


def simple(overrides: list[str], culprit: str) -> Setup:
    return lambda env, tmp: (overrides, culprit)


CASES: dict[str, Setup] = {
    # checkpoints (test-only, resume, teacher)
    "ckpt_missing": simple(["train=false", "ckpt_path=/nonexistent/best.ckpt"], "/nonexistent/best.ckpt"),
    "ckpt_is_a_folder": lambda env, tmp: (["train=false", f"ckpt_path={env['root']}"], "is a folder, not a checkpoint"),
    "ckpt_text_file": _text_file,
    "ckpt_truncated": _truncated,
    "ckpt_not_a_dict": _list_pickle,
    "ckpt_no_state_dict": _no_state_dict,
    "ckpt_crafted_pickle": _pickle,
    "ckpt_other_architecture": _other_arch,
    "ckpt_other_class_count": _other_classes,
    "ckpt_crafted_target": _target,
    "ckpt_fit_without_trainer_state": _weights_without_trainer_state,
    "ckpt_fit_trainer_state_wrong_type": _trainer_state_of_wrong_type,
    "resume_not_a_run_dir": simple(["resume=/nonexistent/run"], "/nonexistent/run"),
    "resume_crafted_last_ckpt": _resume_crafted,
    "teacher_missing": simple([*KD, "distill.teacher.ckpt=/nonexistent/teacher.ckpt"], "/nonexistent/teacher.ckpt"),
    "teacher_other_architecture": _teacher_other_arch,
    "teacher_foreign_weights": _teacher_foreign_weights,
    "teacher_crafted_pickle": _teacher_pickle,
    "teacher_crafted_target": _teacher_target,
    # optimiser / module / trainer values
    "negative_lr": simple(["module.optimizer.lr=-0.1"], "-0.1"),
    "negative_weight_decay": simple(["module.optimizer.weight_decay=-1"], "weight_decay"),
    "betas_out_of_range": simple(["module.optimizer.betas=[1.5,0.9]"], "module.optimizer (torch.optim.Adam): Invalid beta parameter at index 0: 1.5"),
    "eval_slices_unknown": simple(["module.eval_slices=some"], "module.eval_slices"),
    "fg_threshold_out_of_range": simple(["module.fg_threshold=2"], "module.fg_threshold"),
    "max_epochs_negative": simple(["trainer.max_epochs=-5"], "max_epochs"),
    # wrong types (engine/scalars.py; found by an audit: tracebacks from Lightning, the DataLoader, seed_everything)
    "max_epochs_not_a_number": simple(["trainer.max_epochs=abc"], "trainer.max_epochs='abc'"),
    "batch_size_not_a_number": simple(["data.batch_size=abc"], "data.batch_size='abc'"),
    "batch_size_negative": simple(["data.batch_size=-4"], "data.batch_size=-4"),
    "seed_not_a_number": simple(["seed=abc"], "seed='abc'"),
    "group_null": simple(["logger=null"], "override 'logger=null': logger is a config group"),  # a review: 40 lines
    "seed_null": simple(["seed=null"], "seed=None must be an integer in [0, 4294967295]"),  # a review: tracebacks
    "seed_too_large": simple(["seed=99999999999"], "seed=99999999999 must be an integer in [0, 4294967295]"),
    "limit_batches_out_of_range": simple(["trainer.limit_val_batches=1.5"], "trainer.limit_val_batches=1.5"),
    "width_not_a_number": simple(["model.width=abc"], "model.width='abc'"),
    "image_size_not_a_number": simple(["data.image_size=abc"], "data.image_size='abc'"),
    "lr_not_a_number": simple(["module.optimizer.lr=abc"], "module.optimizer.lr='abc'"),
    "kd_weight_not_a_number": simple([*KD, "distill.loss.beta=abc"], "distill.loss.beta='abc'"),
    "kd_temperature_zero": simple([*KD, "distill.loss.temperature=0"], "distill.loss.temperature=0"),
    # data
    "data_root_missing": simple(["data=lits", "data.root=/nonexistent/LiTS"], "/nonexistent/LiTS"),
    "data_root_empty": _empty_root,
    "data_root_a_file": lambda env, tmp: ((tmp / "notes.txt").write_text("x") and
                                          ["data=lits", f"data.root={tmp / 'notes.txt'}"], "notes.txt is not a folder"),
    "nan_in_image": _nan_image,
    "volume_without_label": _missing_label,
    "label_values_outside_classes": _label_values,
    "image_label_shape_mismatch": _shape_mismatch,
    "corrupt_nifti": _corrupt_nifti,
    "data_num_classes_wrong": simple(["data.num_classes=3"], "data.num_classes"),
    "data_layout_unknown": simple(["data.layout=nope", "data.synthetic=null"], "data.layout"),
    "data_target_unknown": simple(["data.target=nope"], "data.target"),
    "data_window_inverted": simple(["data.window=[160,-40]"], "data.window"),
    "synthetic_organs_wrong_layout": simple(["+data.synthetic.organs=[liver,spleen]"], "organs"),
    "synthetic_layout_mismatch": simple(["+data.synthetic.layout=kits"], "data.synthetic.layout"),
    # found by a walkthrough: a 2-value shape was a traceback deep in the phantom generator
    "synthetic_shape_2_values": simple(["data.synthetic.shape=[48,48]"], "data.synthetic.shape=[48, 48]"),
    "synthetic_site_unknown_key": simple(["+data.synthetic.site.noise=5"], "data.synthetic.site has unknown keys"),
    "synthetic_unknown_key": simple(["+data.synthetic.n_case=5"], "data.synthetic has unknown keys ['n_case']"),
    "synthetic_into_foreign_folder": _foreign_folder,
    "synthetic_crafted_manifest": _crafted_manifest,
    "medmnist_missing_file": _medmnist_missing,
    "medmnist_outside_table": _medmnist_outside_table,
    # Hydra's own command-line errors (one line through experiments.hydra_checks.run_cli, not Hydra's report)
    "hydra_key_typo": simple(["trainer.max_epoch=1"], "trainer.max_epoch"),
    # a walkthrough: neither line named the key meant; both now end with the close matches
    "hydra_key_typo_hint": simple(["data.imag_size=32"], "not in struct (did you mean data.image_size?)"),
    "data_key_typo_hint": simple(["+data.imag_size=32"], "unexpected keyword argument 'imag_size' (did you mean data.image_size?)"),
    "hydra_unknown_option": simple(["model=dnett"], "model/dnett"),
    "hydra_override_syntax": simple(["trainer.max_epochs=["], "trainer.max_epochs=["),
    # a key the constructor does not take, or a value it refuses, under trainer/module/logger/callbacks (``++`` adds
    # it past Hydra's own check): Hydra's multi-line InstantiationException and exit 1 before (a walkthrough)
    "trainer_key_typo": simple(["++trainer.fast_dev_rn=true"], "trainer (pytorch_lightning.Trainer): Trainer.__init__() got an unexpected keyword argument 'fast_dev_rn' (did you mean trainer.fast_dev_run?)"),
    "trainer_bad_value": simple(["++trainer.fast_dev_run=ture"], "trainer (pytorch_lightning.Trainer): invalid literal for int() with base 10: 'ture' (trainer.fast_dev_run='ture')"),
    "module_key_typo": simple(["++module.monitr=val/dice"], "module (lightning_modules.segmentation.SegmentationModule)"),
    "module_key_typo_hint": simple(["++module.monitr=val/dice"], "(did you mean module.monitor?)"),
    # a monitor the module never logs: Lightning's "could not find the monitored key" after a whole epoch before
    "monitor_typo": simple(["module.monitor=val/dcie"], "module.monitor=val/dcie: SegmentationModule logs no such key"),
    "callback_monitor_typo": simple(["+callbacks.early_stopping._target_=pytorch_lightning.callbacks.EarlyStopping",
                                     "+callbacks.early_stopping.monitor=val/dice_livr"],
                                    "callbacks.early_stopping.monitor=val/dice_livr"),
    # a search's objective: every trial trained and tested, then failed on the key it lacks
    "optimized_metric_typo": simple(["optimized_metric=val/dcie_best"],
                                    "optimized_metric=val/dcie_best: SegmentationModule logs no such key"),
    "logger_key_typo": simple(["++logger.csv.nme=x"], "logger.csv (engine.loggers.ResumableCSVLogger)"),
    "callback_key_typo": simple(["++callbacks.model_checkpoint.monitr=x"], "callbacks.model_checkpoint"),
    # not a Lightning callback: Lightning's AttributeError traceback after the object was built (an audit)
    "callback_not_a_callback": simple(["+callbacks.x._target_=collections.OrderedDict"],
                                      "callbacks.x: collections.OrderedDict is a OrderedDict, not a Lightning callback"),
    "callback_factory_not_a_callback": simple(["+callbacks.x._target_=time.time"],
                                              "callbacks.x: time.time gave a float, not a Lightning callback"),
    # a W&B mode wandb does not take: a 30-line pydantic traceback, exit 1, no failed.json; accepted under fdr
    "wandb_mode_typo": simple([*(b for b in BASE if b != "logger=csv"), "logger=wandb", "logger.wandb.mode=onlin",
                               "debug=fdr"], "logger.wandb.mode='onlin' is not a W&B mode; valid modes: online"),
    # a walkthrough: "No supported gpu backend found!" named no setting (only where there is no GPU, as on CI)
    **({"trainer_gpu_without_one": simple(["trainer=gpu"], "No supported gpu backend found! (trainer.accelerator=gpu")}
       if not torch.cuda.is_available() else {}),
    # a walkthrough: a net of the other task ended in a tensor-size traceback (exit 1, no failed.json)
    "classifier_for_segmentation": simple(["model=small_cnn"], "model=small_cnn is a classification net but "
                                          "module=segmentation segments them"),
    "segmenter_for_classification": lambda env, tmp: (["+exp=digits_cnn", "model=dnet"],
                                                      "model=dnet is a segmentation net but module=classification"),
    "segmentation_callbacks_for_classification": lambda env, tmp: (
        ["+exp=digits_cnn", "callbacks=segmentation", "trainer.max_epochs=1"],
        "callbacks=segmentation draws segmentation overlays, but module ClassificationModule does not segment"),
    # output
    "output_dir_unwritable": lambda env, tmp: ((tmp / "file").write_text("x") and [f"paths.log_dir={tmp / 'file' / 'logs'}"],
                                               str(tmp / "file")),
}


#: cases run as real ``python -m`` processes (one per family: checkpoint, data, output, Hydra); the rest run the same
#: ``__main__`` in this process (tests/cli.py: ~10 s of imports saved per case)
AS_PROCESS = {"ckpt_crafted_pickle", "corrupt_nifti", "output_dir_unwritable", "hydra_key_typo"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2(name, env, tmp_path):
    overrides, culprit = CASES[name](env, tmp_path)
    base = [] if overrides and overrides[0].startswith("+exp") else BASE
    if "data=lits" in overrides:  # a real-data config: no synthetic block to override
        base = [b for b in base if not b.startswith("data.synthetic")]
    run = tmp_path / "run_out"
    args = [*base, *overrides, f"paths.data_dir={env['data']}"]
    if not any(a.startswith(("paths.log_dir", "resume=")) for a in args):  # a resume runs in the run's folder
        args += [f"hydra.run.dir={run}"]
    run_cli = run_subprocess if name in AS_PROCESS else run_in_process
    proc = run_cli("experiments.run", args, tmp_path)
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert culprit in errors[0], errors[0]
    assert "weights_only set to False" not in proc.stderr  # torch's advice to run the file's code is not relayed
    assert not (tmp_path / "pwned").exists(), "a crafted file ran code"
    assert not (run / "metrics.json").exists() and not list(run.glob("checkpoints/*.ckpt")) or name.startswith("resume")
    if (run / "config.yaml").is_file():  # a run folder was made: it says why it holds no results
        assert json.loads((run / "failed.json").read_text())["error"] == errors[0].removeprefix("error: ")
    if name == "synthetic_crafted_manifest":
        assert (tmp_path / "victim.txt").read_text() == "precious"


def test_medmnist_outside_table_advice_is_enough(env, tmp_path):
    """The error's advice alone (data.task, data.num_classes, data.in_channels) makes the file work."""
    overrides, _ = _medmnist_outside_table(env, tmp_path)
    proc = run_in_process("experiments.run", [*overrides, "data.task=multi-class", "data.num_classes=3",
                                              "data.in_channels=1", "model=small_cnn", "data.num_workers=0",
                                              "++trainer.fast_dev_run=true", f"hydra.run.dir={tmp_path / 'run'}"],
                          tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_in_process_cli_matches_a_real_process(env, tmp_path):
    """tests/cli.py's in-process runner gives what ``python -m experiments.run`` gives (status, the one error
    line) and leaves the test process as it found it (argv, cwd, environment, root logger handlers, torch's
    generator: the run seeds it)."""
    import logging
    import os
    import sys

    args = [*BASE, "module.optimizer.lr=-0.1", f"paths.data_dir={env['data']}", f"hydra.run.dir={tmp_path / 'r'}"]
    torch.manual_seed(123)
    before = (list(sys.argv), os.getcwd(), dict(os.environ), list(logging.getLogger().handlers), torch.get_rng_state())
    mine, real = run_in_process("experiments.run", args, tmp_path), run_subprocess("experiments.run", args, tmp_path)
    after = (list(sys.argv), os.getcwd(), dict(os.environ), list(logging.getLogger().handlers), torch.get_rng_state())
    assert after[:4] == before[:4] and torch.equal(after[4], before[4])
    errors = [[ln for ln in p.stderr.splitlines() if ln.startswith("error")] for p in (mine, real)]
    assert mine.returncode == real.returncode == 2 and errors[0] == errors[1] and len(errors[0]) == 1, errors


def test_a_write_the_machine_refuses_is_one_line(env, tmp_path):
    """A write that fails for the machine's sake (here a 100 KB file-size limit, as ``ulimit -f``; a full disk
    is ENOSPC on the same path) is one line naming the errno, exit 2, with ``failed.json`` in the run
    folder; before, a 63-line traceback, exit 1, and no ``failed.json`` (found by a fault-injection audit)."""
    import resource
    import subprocess
    import sys

    from tests.cli import BASE_ENV

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    run = tmp_path / "run"
    args = [*BASE, f"paths.data_dir={env['data']}", f"hydra.run.dir={run}"]
    proc = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **BASE_ENV}, preexec_fn=limit)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and "File too large" in errors[0], proc.stderr[-3000:]
    assert json.loads((run / "failed.json").read_text())["error"] == errors[0].removeprefix("error: ")
    assert not list(run.rglob("*.ckpt")), "a checkpoint cut at the limit was left behind"


def test_a_full_disk_while_hydra_writes_a_jobs_files_is_one_line(capsys, monkeypatch):
    """Found when a full disk ended a sweep: Hydra's own write of a job's ``.hydra/`` files raised past the
    task (whose errors are already one line) as a traceback. Now one line naming the errno, exit 2."""
    import errno

    from experiments import hydra_checks

    monkeypatch.delenv(hydra_checks.FULL_ERROR, raising=False)
    # run_cli keeps the typed command in the environment; monkeypatch puts it back after the test (it leaked into
    # a later test of this worker, whose W&B name then lost its swept values: a CI run)
    monkeypatch.setenv(hydra_checks.COMMAND_ENV, "")

    def hydra_main():
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SystemExit) as done:
        hydra_checks.run_cli(hydra_main)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and err == [
        "error: OSError: [Errno 28] No space left on device (Hydra writing a run's files; the jobs that finished "
        "are kept)"], err
