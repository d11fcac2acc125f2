"""Issue 10 §1-3: no file a user is handed can run code or delete files (crafted pickle, crafted ``_target_``
in a checkpoint's config, crafted phantom manifest), through the real entry points."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import pytest
import torch

from datamodules.errors import DataError
from datamodules.synthetic import MANIFEST, write_phantom_dataset
from lightning_modules.base import build
from lightning_modules.errors import ConfigError
from tests.cli import run_in_process, run_subprocess

REPO = Path(__file__).resolve().parents[1]
TINY = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "data.batch_size=8", "data.synthetic.n_cases=6",
        "data.synthetic.shape=[48,48,10]", "trainer.max_epochs=1", "logger=csv", "callbacks=default",
        "~callbacks.rich_progress_bar", "~callbacks.throughput"]
TINY_KD = ["+exp=lits_hlfd", "data.image_size=32", "data.batch_size=4", "data.synthetic.n_cases=6",
           "data.synthetic.shape=[48,48,10]", "trainer.max_epochs=1", "logger=csv", "module.example_size=32"]


def run_cli(module: str, args: list[str], tmp: Path, as_process: bool = False) -> subprocess.CompletedProcess:
    """The entry point's ``__main__`` in this process (tests/cli.py), or as a real process for the crafted
    pickles and the shared training run."""
    run = run_subprocess if as_process else run_in_process
    return run(module, args, tmp, env={"FEDMED_LOG_DIR": str(tmp / "logs")})


def assert_one_line_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


class MakeMarker:
    """Unpickling this calls ``os.mkdir(marker)``: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def trained(module_tmp) -> Path:
    """One tiny real run (shared): its run dir with checkpoints/best.ckpt, last.ckpt and config.yaml."""
    tmp = module_tmp("trained")
    proc = run_cli("experiments.run", [*TINY, f"paths.data_dir={tmp / 'data'}", f"hydra.run.dir={tmp / 'run'}"], tmp,
                   as_process=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


# ------------------------------------------------------------------ 1. pickles never run
@pytest.mark.parametrize("name", ["best.ckpt", "last.ckpt"])
def test_framework_checkpoints_load_weights_only(trained, name):
    """Round trip: what the framework writes (hparams, callback/loop/optimizer states) is weights_only-loadable."""
    ckpt = torch.load(trained / "run" / "checkpoints" / name, map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["net"]["_target_"].endswith("DNet")
    assert isinstance(ckpt["hyper_parameters"]["optimizer"], dict)  # a plain config, not a functools.partial


def test_classification_checkpoint_loads_weights_only(tmp_path):
    from lightning_modules.classification import ClassificationModule
    import pytorch_lightning as pl

    net = {"_target_": "lightning_modules.nets.classifiers.SmallCNN", "in_channels": 1, "num_classes": 3}
    module = ClassificationModule(net, task="multi-class", num_classes=3,
                                  optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3})
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    ckpt = torch.load(tmp_path / "c.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["optimizer"]["_target_"] == "torch.optim.Adam"


def _evil_ckpt(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {"net.x": MakeMarker(marker)}, "hyper_parameters": {}}, path)
    return path


def test_crafted_pickle_as_test_ckpt_path_runs_nothing(trained, tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_ckpt(tmp_path / "evil.ckpt", marker)
    proc = run_cli("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", f"hydra.run.dir={tmp_path / 'r'}",
                                       "train=false", f"ckpt_path={evil}"], tmp_path, as_process=True)
    assert not marker.exists(), "the pickle ran"
    assert_one_line_error(proc, "evil.ckpt")
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_crafted_last_ckpt_on_resume_runs_nothing(trained, tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    _evil_ckpt(run / "checkpoints" / "last.ckpt", marker)
    proc = run_cli("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", f"resume={run}"], tmp_path,
                   as_process=True)
    assert not marker.exists(), "the pickle ran"
    assert_one_line_error(proc, "last.ckpt")


def test_crafted_pickle_as_teacher_runs_nothing(trained, tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil_ckpt(tmp_path / "teacher.ckpt", marker)
    proc = run_cli("experiments.run", [*TINY_KD, f"paths.data_dir={trained / 'data'}",
                                       f"hydra.run.dir={tmp_path / 'r'}", f"distill.teacher.ckpt={evil}"], tmp_path,
                   as_process=True)
    assert not marker.exists(), "the pickle ran"
    assert_one_line_error(proc, "teacher.ckpt")


@pytest.mark.parametrize("linked", ["csv/hparams.yaml", "run.log", "checkpoints"])
def test_resume_refuses_a_run_folder_linking_out_of_itself(trained, tmp_path, linked):
    """Found by an audit: ``resume=`` a crafted run folder whose ``csv/hparams.yaml`` linked to another file
    replaced that file with the module's hyper-parameters (exit 0). Now one line before anything is written."""
    import shutil

    run = tmp_path / "r"
    shutil.copytree(trained / "run", run, symlinks=True)
    victim = tmp_path / "victim"
    victim.mkdir() if linked == "checkpoints" else victim.write_text("precious")
    before = sorted(p.name for p in victim.iterdir()) if victim.is_dir() else victim.read_text()
    target = run / linked
    shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    target.symlink_to(victim)
    proc = run_cli("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", f"resume={run}"], tmp_path)
    assert_one_line_error(proc, linked.split("/")[-1], "outside")
    assert (sorted(p.name for p in victim.iterdir()) if victim.is_dir() else victim.read_text()) == before


def test_a_sweep_job_checks_its_resume_folder_too(trained, tmp_path):
    """A trust review: ``-m ... resume=<dir>`` skipped the checks a single run's Hydra callback makes (they run
    only for single runs), and Lightning's CSV logger rewrote the file a handed-over folder's
    ``csv/metrics.csv`` linked to (exit 0). A sweep's job now checks its folder: the job fails (its
    ``failed.json``), the file is untouched and the sweep exits 2 naming the link."""
    run = tmp_path / "r"
    shutil.copytree(trained / "run", run, symlinks=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / "csv").mkdir(exist_ok=True)
    (run / "csv" / "metrics.csv").unlink(missing_ok=True)
    (run / "csv" / "metrics.csv").symlink_to(victim)
    proc = run_cli("experiments.run", ["-m", *TINY, f"paths.data_dir={trained / 'data'}", f"resume={run}",
                                       f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert "metrics.csv" in errors[0] and "outside" in errors[0] and "1 of 1 sweep jobs failed" in errors[-1], errors
    assert victim.read_text() == "precious"
    # a review of that fix: resume=true (the job's own folder, e.g. a resubmitted sweep) was not checked, and a
    # config.yaml that does not parse was a traceback; both are the job's one line now, as for a single run
    job = tmp_path / "sweep2" / "job"
    shutil.copytree(run, job, symlinks=True)
    proc = run_cli("experiments.run", ["-m", *TINY, f"paths.data_dir={trained / 'data'}", "resume=true",
                                       f"hydra.sweep.dir={tmp_path / 'sweep2'}", "hydra.sweep.subdir=job"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "metrics.csv" in proc.stderr and victim.read_text() == "precious", proc.stderr[-3000:]
    (run / "csv" / "metrics.csv").unlink()
    (run / "config.yaml").write_text("a: [")
    proc = run_cli("experiments.run", ["-m", *TINY, f"paths.data_dir={trained / 'data'}", f"resume={run}",
                                       f"hydra.sweep.dir={tmp_path / 'sweep3'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert "config.yaml" in errors[0] and "1 of 1 sweep jobs failed" in errors[-1], errors


@pytest.mark.parametrize("linked", [".hydra/overrides.yaml", ".hydra", "run.log"])
def test_an_output_folder_linking_out_of_itself_is_refused_before_hydra_writes(tmp_path, linked):
    """A security review: Hydra saves ``.hydra/*.yaml`` and opens the job log before the run's own checks, so a
    reused run folder (no ``resume=``) or sweep folder whose ``.hydra/overrides.yaml``, ``.hydra`` or ``run.log``
    linked elsewhere had that file overwritten or appended to (exit 0 for a run). Now one line, nothing written."""
    victim = tmp_path / "victim"
    victim.mkdir() if linked == ".hydra" else victim.write_text("precious")
    for key, folder, job in (("hydra.run.dir", tmp_path / "run", tmp_path / "run"),
                             ("hydra.sweep.dir", tmp_path / "sweep", tmp_path / "sweep" / "0_dnet_s0")):
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra").rmdir() if linked == ".hydra" else None
        (job / linked).symlink_to(victim)
        sweep = ["-m"] if key == "hydra.sweep.dir" else []
        proc = run_cli("experiments.run", [*sweep, *TINY, f"{key}={folder}"], tmp_path)
        line = assert_one_line_error(proc, linked.split("/")[-1], "outside", key)
        assert (list(victim.iterdir()) == [] if victim.is_dir() else victim.read_text() == "precious"), line


def test_links_inside_a_run_folder_are_fine(tmp_path):
    from experiments.run_folder import foreign_link

    (tmp_path / "wandb" / "run-1").mkdir(parents=True)
    (tmp_path / "wandb" / "latest-run").symlink_to("run-1")  # what W&B writes
    assert foreign_link(tmp_path) is None
    # W&B's own folder is W&B's: 0.31 links wandb/offline-run-*/logs/debug-core.log into ~/.cache/wandb (a
    # review found every resume of a run with the default logger refused)
    (tmp_path / "wandb" / "run-1" / "logs").mkdir()
    (tmp_path / "wandb" / "run-1" / "logs" / "debug-core.log").symlink_to(tmp_path.parent)
    assert foreign_link(tmp_path) is None
    # ... and so are a stage's or site's (a walkthrough: a federated distillation's resume was refused for them)
    (tmp_path / "sites" / "a" / "none" / "wandb" / "run-2" / "logs").mkdir(parents=True)
    (tmp_path / "sites" / "a" / "none" / "wandb" / "run-2" / "logs" / "debug-core.log").symlink_to(tmp_path.parent)
    link = Path("sites/a/none/wandb/run-2/logs/debug-core.log")
    assert foreign_link(tmp_path) == (link, str(tmp_path.parent))  # not a run's: no wandb_id.txt beside it
    (tmp_path / "sites" / "a" / "none" / "wandb_id.txt").write_text("abc\n")
    assert foreign_link(tmp_path) is None
    (tmp_path / "sites" / "a" / "none" / "csv").mkdir()
    (tmp_path / "sites" / "a" / "none" / "csv" / "metrics.csv").symlink_to(tmp_path.parent)
    assert foreign_link(tmp_path) == (Path("sites/a/none/csv/metrics.csv"), str(tmp_path.parent))
    shutil.rmtree(tmp_path / "sites")
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "dangling").symlink_to(tmp_path / "nowhere")
    assert foreign_link(tmp_path) == (Path("csv/dangling"), str(tmp_path / "nowhere"))
    (tmp_path / "csv" / "dangling").unlink()
    (tmp_path / "aaa").symlink_to("aaa")  # a loop: Path.resolve raised RuntimeError, and Hydra ran the run anyway
    assert foreign_link(tmp_path) == (Path("aaa"), "aaa")
    (tmp_path / "aaa").unlink()
    other = tmp_path.parent / f"{tmp_path.name}_elsewhere"
    other.mkdir()
    shutil.move(str(tmp_path / "wandb"), str(other / "wandb"))
    (tmp_path / "wandb").symlink_to(other / "wandb")  # the W&B folder itself as a link out: refused
    assert foreign_link(tmp_path) == (Path("wandb"), str(other / "wandb"))


# ------------------------------------------------------------------ 2. a checkpoint's config is data
def _crafted_config_ckpt(trained: Path, tmp: Path, net_cfg: dict) -> Path:
    ckpt = torch.load(trained / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["net"] = net_cfg
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    (tmp / "run" / "config.yaml").write_text((trained / "run" / "config.yaml").read_text())
    torch.save(ckpt, tmp / "run" / "checkpoints" / "best.ckpt")
    return tmp / "run" / "checkpoints" / "best.ckpt"


def _victim(tmp: Path) -> tuple[Path, Path]:
    victim = tmp / "victim.txt"
    victim.write_text("precious")
    return victim, tmp / "copied.txt"


CRAFTED = {
    "copyfile": lambda v, m: {"_target_": "shutil.copyfile", "src": str(v), "dst": str(m)},
    "open": lambda v, m: {"_target_": "builtins.open", "file": str(m), "mode": "w"},
    "attribute_of_project_module": lambda v, m: {"_target_": "engine.distill.shutil.copyfile", "src": str(v),
                                                 "dst": str(m)},
    "nested": lambda v, m: {"_target_": "lightning_modules.nets.dnet.DNet", "in_channels": 1, "classes": 2,
                            "width": {"_target_": "builtins.open", "file": str(m), "mode": "w"}},
    # a _target_ hidden in an interpolation: the check saw a string, instantiate resolved it (found by an audit)
    "interpolation": lambda v, m: {"_target_": "lightning_modules.nets.dnet.DNet", "in_channels": 1, "classes": 2,
                                   "width": f"${{oc.create:'{{_target_: shutil.copyfile, src: {v}, dst: {m}}}'}}"},
    # a LightningModule is an nn.Module too: as a checkpoint's net it opened and parsed any file it named as its
    # teacher (a security review); refused as not a net, before anything is read
    "lightning_module": lambda v, m: {"_target_": "lightning_modules.distillation.DistillationModule",
                                      "net": {"_target_": "lightning_modules.nets.dnet.DNet", "in_channels": 1,
                                              "classes": 2}, "teacher": None, "teacher_ckpt": str(v)},
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_crafted_target_in_checkpoint_refused_by_predict(trained, tmp_path, kind):
    victim, marker = _victim(tmp_path)
    ckpt = _crafted_config_ckpt(trained, tmp_path, CRAFTED[kind](victim, marker))
    volume = trained / "data" / "synthetic_lits" / "volume-0.nii.gz"
    proc = run_cli("experiments.predict", [f"ckpt={ckpt}", f"input={volume}", f"output={tmp_path / 'seg.nii.gz'}"],
                   tmp_path)
    assert not marker.exists(), f"{kind} ran"
    line = assert_one_line_error(proc, "_target_")
    assert ("builtins.open" in line) or ("copyfile" in line) or ("DistillationModule' refused" in line)
    assert "not a torch checkpoint" not in line and not (tmp_path / "seg.nii.gz").exists()


@pytest.mark.parametrize("kind", ["copyfile", "nested", "interpolation", "lightning_module"])
def test_crafted_target_in_checkpoint_refused_by_test_only_run(trained, tmp_path, kind):
    victim, marker = _victim(tmp_path)
    ckpt = _crafted_config_ckpt(trained, tmp_path, CRAFTED[kind](victim, marker))
    proc = run_cli("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", f"hydra.run.dir={tmp_path / 'r'}",
                                       "train=false", f"ckpt_path={ckpt}"], tmp_path)
    assert not marker.exists()
    assert_one_line_error(proc, "_target_")
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_crafted_target_in_teacher_checkpoint_refused(trained, tmp_path):
    victim, marker = _victim(tmp_path)
    ckpt = _crafted_config_ckpt(trained, tmp_path, CRAFTED["copyfile"](victim, marker))
    proc = run_cli("experiments.run", [*TINY_KD, f"paths.data_dir={trained / 'data'}",
                                       f"hydra.run.dir={tmp_path / 'r'}", "distill.teacher.model=null",
                                       f"distill.teacher.ckpt={ckpt}"], tmp_path)
    assert not marker.exists()
    assert_one_line_error(proc, "shutil.copyfile")


@pytest.mark.parametrize("kind", ["classes_text", "int_weight_key"])
def test_crafted_values_in_a_checkpoint_are_one_line(trained, tmp_path, kind):
    """A security review: a net config's ``classes: "abc"`` was a ValueError traceback in a test-only run, and a
    state dict keyed by an int an AttributeError inside torch (test-only run and predict)."""
    ckpt = torch.load(trained / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    if kind == "classes_text":
        ckpt["hyper_parameters"]["net"] = {**ckpt["hyper_parameters"]["net"], "classes": "abc"}
    else:
        ckpt["state_dict"] = {7: torch.zeros(1), **ckpt["state_dict"]}
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    proc = run_cli("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", f"hydra.run.dir={tmp_path / 'r'}",
                                       "train=false", f"ckpt_path={path}"], tmp_path)
    assert_one_line_error(proc, "crafted.ckpt", "'abc'" if kind == "classes_text" else "key 7")
    if kind == "int_weight_key":
        volume = trained / "data" / "synthetic_lits" / "volume-0.nii.gz"
        proc = run_cli("experiments.predict", [f"ckpt={path}", f"input={volume}", f"output={tmp_path / 's.nii.gz'}"],
                       tmp_path)
        assert_one_line_error(proc, "crafted.ckpt", "key 7")


def test_a_crafted_fit_time_in_a_checkpoint_is_no_overflow():
    """A security review: ``seconds: 10**400`` in a resumed checkpoint's FitTime state was an OverflowError."""
    from callbacks.fit_time import FitTime

    cb = FitTime()
    for value, before in ((10 ** 400, 0.0), (float("inf"), 0.0), (True, 0.0), (-3, 0.0), ("5", 0.0), (12.5, 12.5)):
        cb.load_state_dict({"seconds": value})
        assert cb.before == before, value


HUB_NET = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "tu-hf-hub:attacker-org/beacon-model",
           "encoder_weights": "imagenet", "in_channels": 1, "classes": 2}


@pytest.mark.parametrize("entry", ["predict", "test_only"])
def test_crafted_hub_model_in_checkpoint_is_refused_before_any_download(trained, tmp_path, entry):
    """Found by an audit: a checkpoint whose net names a timm Hub encoder made predict contact a repo the
    file chose (the class is allowed; its arguments fetched the architecture). Now one line, nothing built."""
    ckpt = _crafted_config_ckpt(trained, tmp_path, HUB_NET)
    if entry == "predict":
        volume = trained / "data" / "synthetic_lits" / "volume-0.nii.gz"
        args = [f"ckpt={ckpt}", f"input={volume}", f"output={tmp_path / 'seg.nii.gz'}"]
        proc = run_cli("experiments.predict", args, tmp_path)
    else:
        proc = run_cli("experiments.run", [*TINY, f"paths.data_dir={trained / 'data'}", "train=false",
                                           f"hydra.run.dir={tmp_path / 'r'}", f"ckpt_path={ckpt}"], tmp_path)
    line = assert_one_line_error(proc, "best.ckpt")
    assert "Hugging Face Hub" in line and "huggingface.co" not in proc.stderr


@pytest.mark.parametrize("weights", [{"encoder_weights": "imagenet"}, {}], ids=["imagenet", "library_default"])
def test_a_checkpoint_trained_from_pretrained_weights_loads_offline(tmp_path, weights):
    """A checkpoint's net config saying ``encoder_weights=imagenet``, or leaving it to smp's default (which is
    ``imagenet``; found by a review), is rebuilt without fetching anything (its weights are in the file):
    before, loading it offline failed in the download."""
    from lightning_modules.checkpoints import net_from_checkpoint

    cfg = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "resnet18", "in_channels": 1, "classes": 2}
    net = build({**cfg, "encoder_weights": None})
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"net": {**cfg, **weights}}}, tmp_path / "m.ckpt")
    loaded = net_from_checkpoint(tmp_path / "m.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values()))


def test_no_downloads_rewrites_weight_keys_and_refuses_hub_names():
    from lightning_modules.targets import no_downloads

    cfg = {"_target_": "x.Net", "encoder_weights": "imagenet", "pretrained": True, "weights": "IMAGENET1K_V1",
           "loss": {"weights": [1.0, 2.0]}, "sub": [{"pretrained": False}]}
    assert no_downloads(cfg) == {"_target_": "x.Net", "encoder_weights": None, "pretrained": False, "weights": None,
                                 "loss": {"weights": [1.0, 2.0]}, "sub": [{"pretrained": False}]}
    with pytest.raises(ConfigError, match=r"net\.encoder_name=.*Hugging Face Hub"):
        no_downloads(HUB_NET)
    with pytest.raises(ConfigError, match="Hugging Face Hub"):
        no_downloads({"model_name": "HF_HUB:org/x"})
    # smp.Unet(encoder_name, encoder_depth, encoder_weights): "imagenet" as a positional argument escapes the keys
    with pytest.raises(ConfigError, match=r"net\.sub\._args_ refused"):
        no_downloads({"_target_": "x.Net", "sub": {"_target_": "segmentation_models_pytorch.Unet",
                                                   "_args_": ["resnet18", 5, "imagenet"]}}, "net")


FETCHING_NETS = {  # an allowed class whose arguments name a file or a URL to load from (security audit)
    "monai_hovernet_url": {"_target_": "monai.networks.nets.HoVerNet", "pretrained_url": "https://attacker/x.pth"},
    "monai_transchex_repo": {"_target_": "monai.networks.nets.Transchex", "in_channels": 1, "img_size": [32, 32],
                             "num_classes": 2, "patch_size": [16, 16], "path_or_repo_id": "attacker/repo"},
    "timm_checkpoint_path": {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "tu-resnet18",
                             "checkpoint_path": "/tmp/any.pth"},
    "timm_pretrained_cfg": {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "tu-resnet18",
                            "pretrained_cfg_overlay": {"file": "/tmp/any.pth"}},
    "url_anywhere": {"_target_": "x.Net", "sub": ["s3://bucket/weights.pt"]},
    # left out, Transchex fetches its default path_or_repo_id="bert-base-uncased" when built (review)
    "monai_transchex_default": {"_target_": "monai.networks.nets.Transchex", "in_channels": 1, "img_size": [32, 32],
                                "num_classes": 2, "patch_size": [16, 16]},
}


@pytest.mark.parametrize("kind", list(FETCHING_NETS))
def test_no_downloads_refuses_files_and_urls_a_net_would_load(kind):
    from lightning_modules.targets import no_downloads

    key = {"url_anywhere": r"net\.sub\[0\]=", "monai_hovernet_url": r"net\.pretrained_url=",
           "monai_transchex_repo": r"net\.path_or_repo_id=", "timm_checkpoint_path": r"net\.checkpoint_path=",
           "timm_pretrained_cfg": r"net\.pretrained_cfg_overlay=",
           "monai_transchex_default": r"net: monai\.networks\.nets\.Transchex"}[kind]
    with pytest.raises(ConfigError, match=key + ".* refused"):
        no_downloads(FETCHING_NETS[kind])
    assert no_downloads({"_target_": "x.Net", "checkpoint_path": None, "encoder_path": "encoder.layer4"})


def test_a_checkpoint_whose_net_names_a_file_to_load_is_refused_by_predict(trained, tmp_path):
    ckpt = _crafted_config_ckpt(trained, tmp_path, FETCHING_NETS["timm_checkpoint_path"])
    volume = trained / "data" / "synthetic_lits" / "volume-0.nii.gz"
    proc = run_cli("experiments.predict", [f"ckpt={ckpt}", f"input={volume}", f"output={tmp_path / 's.nii.gz'}"],
                   tmp_path)
    line = assert_one_line_error(proc, "best.ckpt", "checkpoint_path")
    assert "weights_only" not in line and not (tmp_path / "s.nii.gz").exists()


def test_build_allow_list():
    assert type(build({"_target_": "torch.nn.Identity"})).__name__ == "Identity"
    # a LightningModule is an nn.Module but a whole run (a security review: a checkpoint's net naming one read the
    # file its teacher_ckpt named): not a net a file's config may build
    with pytest.raises(ConfigError, match=r"DistillationModule' refused"):
        build({"_target_": "lightning_modules.distillation.DistillationModule", "net": None})
    for target in ("os.system", "builtins.eval", "lightning_modules.base.instantiate",
                   "engine.artifacts.atomic_write_text", "torch.nn.modules.module.torch.load"):
        with pytest.raises(ConfigError, match=target.replace(".", r"\.")):
            build({"_target_": target})


def test_allow_targets_adds_packages_not_a_way_around_the_rule(tmp_path, monkeypatch):
    """A trusted prefix's own net classes build; what its modules import does not (a security audit:
    ``allow_targets=[mylab]`` let a checkpoint name ``mylab.nets.torch.hub.load`` and run a hub folder's code,
    or ``mylab.nets.torch.load`` unpickle a file; a data config ``mylab.nets.torch.hub.load`` and a received
    client config ``mylab.nets.os.system`` passed too)."""
    from federation.received import check_received_target
    from lightning_modules import targets

    lab = tmp_path / "mylab"
    lab.mkdir()
    (lab / "__init__.py").write_text("")
    (lab / "nets.py").write_text("import os\nimport torch\n\n\nclass TinyNet(torch.nn.Module):\n"
                                 "    def forward(self, x):\n        return x\n\n\ndef helper():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="allow_targets"):
        build({"_target_": "mylab.nets.TinyNet"})
    monkeypatch.setenv(targets.ENV, "")
    targets.allow(["mylab"])
    assert type(build({"_target_": "mylab.nets.TinyNet"})).__name__ == "TinyNet"
    for target in ("mylab.nets.torch.hub.load", "mylab.nets.torch.load", "mylab.nets.os.system", "mylab.nets.helper"):
        with pytest.raises(ConfigError, match=re.escape(target)):
            build({"_target_": target})
        with pytest.raises(ConfigError, match=re.escape(target)):
            targets.check_data_target(target)
        with pytest.raises(ConfigError, match=re.escape(target)):
            check_received_target(target, "client config")
    check_received_target("mylab.nets.TinyNet", "client config")  # a net class of the trusted package


# ------------------------------------------------------------------ 3. the phantom generator deletes nothing
SHAPE = (24, 24, 6)


def test_crafted_manifest_deletes_nothing_through_the_cli(tmp_path):
    root = tmp_path / "data" / "synthetic_lits"
    root.mkdir(parents=True)
    outside, absolute = tmp_path / "data" / "victim.txt", tmp_path / "abs_victim.txt"
    outside.write_text("precious")
    absolute.write_text("precious")
    (root / MANIFEST).write_text(json.dumps({"params": {"layout": "other"},
                                             "files": {"../victim.txt": "0" * 64, str(absolute): "0" * 64}}))
    proc = run_cli("experiments.run", [*TINY, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'r'}"],
                   tmp_path)
    assert outside.read_text() == "precious" and absolute.read_text() == "precious"
    assert_one_line_error(proc, MANIFEST)
    assert sorted(p.name for p in root.iterdir() if p.name != ".phantom.lock") == [MANIFEST]


@pytest.mark.parametrize("files", [["../victim.txt"], "list", {"volume-0.nii.gz": "0" * 64}])
def test_manifest_listing_other_files_is_refused(tmp_path, files):
    root = write_phantom_dataset(tmp_path / "p", "lits", n_cases=1, shape=SHAPE)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"] = list(manifest["files"]) if files == "list" else (
        {n: "0" * 64 for n in files} if isinstance(files, list) else files)
    (root / MANIFEST).write_text(json.dumps(manifest))
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}
    with pytest.raises(DataError):
        write_phantom_dataset(root, "lits", n_cases=2, shape=SHAPE)
    assert victim.read_text() == "precious"
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()} == before


def test_folder_with_other_files_is_never_written(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="notes.txt"):
        write_phantom_dataset(tmp_path, "lits", n_cases=1, shape=SHAPE)
    root = write_phantom_dataset(tmp_path / "p", "lits", n_cases=1, shape=SHAPE)
    (root / "mine.nii.gz").write_text("mine")
    with pytest.raises(DataError, match="mine.nii.gz"):
        write_phantom_dataset(root, "lits", n_cases=2, shape=SHAPE)
    assert (root / "mine.nii.gz").read_text() == "mine" and (root / "volume-0.nii.gz").is_file()


def _generate(root: str) -> None:
    write_phantom_dataset(root, "kits", n_cases=3, shape=SHAPE, seed=7)


def test_two_processes_generating_into_one_fresh_folder(tmp_path):
    root = tmp_path / "fresh"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_generate, args=(str(root),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    manifest = json.loads((root / MANIFEST).read_text())
    assert len(manifest["files"]) == 6
    for name in manifest["files"]:
        assert nib.load(root / name).shape == SHAPE
    assert sorted(p.name for p in root.iterdir()) == sorted({".phantom.lock", MANIFEST, *(
        Path(n).parts[0] for n in manifest["files"])})
    write_phantom_dataset(root, "kits", n_cases=3, shape=SHAPE, seed=7)  # still recognised as its own


def test_crafted_data_target_in_run_config_refused_by_predict(trained, tmp_path):
    """The run's config.yaml beside a checkpoint is a file handed over too: its data ``_target_`` may only
    name a class of the project's datamodules package."""
    import shutil

    from omegaconf import OmegaConf

    victim, marker = _victim(tmp_path)
    run = tmp_path / "handed_over"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained / "run" / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    cfg = OmegaConf.load(trained / "run" / "config.yaml")
    cfg.data = OmegaConf.create({"_target_": "shutil.copyfile", "src": str(victim), "dst": str(marker)})
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    volume = trained / "data" / "synthetic_lits" / "volume-0.nii.gz"
    proc = run_cli("experiments.predict", [f"ckpt={run / 'checkpoints' / 'best.ckpt'}", f"input={volume}",
                                           f"output={tmp_path / 'seg.nii.gz'}"], tmp_path)
    assert not marker.exists(), "the run config's data _target_ ran"
    assert "shutil.copyfile" in assert_one_line_error(proc, "_target_")
    assert not (tmp_path / "seg.nii.gz").exists()


def test_every_shipped_model_config_passes_the_allow_list():
    """Every ``_target_`` in ``configs/{model,module,distill}`` builds through the ``_target_`` allow-list
    (``model=unet3d`` named a factory function, which the list refuses: it checks classes)."""
    from omegaconf import OmegaConf

    from lightning_modules.targets import check_target

    def targets(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from ([value] if key == "_target_" else targets(value))
        elif isinstance(node, list):
            for value in node:
                yield from targets(value)

    root = Path(__file__).resolve().parents[1] / "experiments" / "configs"
    configs = sorted(p for d in ("model", "module", "distill") for p in (root / d).rglob("*.yaml"))
    assert len(configs) > 10
    import pytorch_lightning as pl
    from hydra.utils import get_object

    for path in configs:
        for target in targets(OmegaConf.to_container(OmegaConf.load(path))):
            if isinstance(target, str) and issubclass(get_object(target), pl.LightningModule):
                assert path.parent.name == "module", path  # built from our own composition, never from a file
                continue
            check_target(target, str(path.relative_to(root)))


def test_an_interpolation_in_the_run_config_is_refused_before_anything_resolves_it(trained, tmp_path):
    """Found by a security audit: predict read ``data._target_`` (and a 3D run's ``data.patch_size``) from the
    run's config.yaml before checking it, so ``${oc.env:...}`` there was resolved (the environment read) before
    the refusal. A resolver that records its calls shows nothing in the file is resolved now."""
    import shutil

    from omegaconf import OmegaConf

    from engine.predict import load_models

    calls: list[str] = []
    OmegaConf.register_new_resolver("spy_audit", lambda: calls.append("resolved") or "x", replace=True)
    run = tmp_path / "handed_over"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained / "run" / "checkpoints" / "best.ckpt", run / "checkpoints" / "best.ckpt")
    text = (trained / "run" / "config.yaml").read_text()
    target = OmegaConf.load(trained / "run" / "config.yaml").data._target_
    (run / "config.yaml").write_text(text.replace(f"_target_: {target}", "_target_: ${spy_audit:}", 1))
    with pytest.raises(ConfigError, match=r"config\.yaml\.data\._target_=.*interpolation"):
        load_models([run / "checkpoints" / "best.ckpt"], None)
    assert calls == []


def test_no_downloads_takes_any_true_pretrained_and_refuses_a_checkpoint_argument():
    """A second audit: ``pretrained: 1`` (an int, as YAML or JSON may carry it) fetched MONAI's FlexibleUNet
    weights, since only strings and booleans were rewritten; MONAI's ``CellSamWrapper(checkpoint=)`` and a
    ``from_pretrained(pretrained_model_name_or_path=)`` name a file to load and were not refused."""
    from lightning_modules.targets import no_downloads

    for value in (1, 1.0, True, "yes", [True], {"a": 1}):  # the last two fetched too (a second audit)
        assert no_downloads({"_target_": "x.Net", "pretrained": value})["pretrained"] is False
    assert no_downloads({"_target_": "x.Net", "encoder_weights": [1]})["encoder_weights"] is None
    with pytest.raises(ConfigError, match="local model folder"):  # timm reads config.json from the folder
        no_downloads({"_target_": "x.Net", "encoder_name": "tu-local-dir:/tmp/m"})
    assert no_downloads({"loss": {"weights": 2.0}}) == {"loss": {"weights": 2.0}}  # a number in a loss: kept
    for key in ("checkpoint", "checkpoint_file", "pretrained_model_name_or_path"):
        with pytest.raises(ConfigError, match=rf"net\.{key}=.* refused"):
            no_downloads({"_target_": "x.Net", key: "/tmp/any.pth"})
    assert no_downloads({"_target_": "x.Net", "use_checkpoint": True, "checkpoint": None})["use_checkpoint"] is True

