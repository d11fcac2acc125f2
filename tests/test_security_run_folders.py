"""A run folder, a data folder and a run config handed over from elsewhere are data, never code (found by the
33rd session's security review): what a crafted one could make run, and the protections no test held before."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.cli import run_in_process
from tests.test_predict_federation import fed_run
from tests.volumetric_helpers import phantom

PAYLOAD = "import pathlib\npathlib.Path(__file__).with_name('MARKER').write_text('ran')\nclass Strategy: pass\n"


def test_a_strategy_named_by_a_handed_over_run_config_is_not_imported(tmp_path, monkeypatch):
    """predict on a federation's weights asked the run config's ``federation.strategy._target_`` whether it keeps
    batch norm at the sites by importing whatever module it named (a review ran a payload shipped beside the
    run, with the folder on ``sys.path`` as it is for a command started there). Now only the project's
    strategies are imported, and anything else is one line before any output."""
    run, _ = fed_run(tmp_path, ["federation/strategy=fedbn"])
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.federation.strategy._target_ = "payload_strategy.Strategy"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run / "payload_strategy.py").write_text(PAYLOAD)
    monkeypatch.syspath_prepend(str(run))
    data = phantom(tmp_path, n_cases=1)
    out = tmp_path / "pred" / "seg.nii.gz"
    proc = run_in_process("experiments.predict", [f"ckpt={run / 'global_best.pt'}", f"input={data / 'volume-0.nii.gz'}",
                                                  f"output={out}", "device=cpu"], tmp_path)
    assert not (run / "MARKER").exists(), "the run config's strategy module was imported"
    assert proc.returncode != 0 and not out.exists()
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "payload_strategy.Strategy" in lines[0] and "refused" in lines[0], proc.stderr


def test_a_strategy_of_a_trusted_prefix_is_taken_with_allow_targets(tmp_path, monkeypatch):
    """The refusal's remedy works: ``allow_targets=[prefix]`` on predict's command line (a review: predict.yaml
    offered the key and predict never applied it, so only FEDMED_ALLOW_TARGETS did)."""
    run, _ = fed_run(tmp_path)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.federation.strategy._target_ = "mylab_strategies.MyAvg"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "mylab_strategies.py").write_text("from federation.core.strategies import FedAvg\nclass MyAvg(FedAvg): pass\n")
    monkeypatch.syspath_prepend(str(lab))
    monkeypatch.delenv("FEDMED_ALLOW_TARGETS", raising=False)
    data = phantom(tmp_path, n_cases=1)
    args = [f"ckpt={run / 'global_best.pt'}", f"input={data / 'volume-0.nii.gz'}", "device=cpu"]
    refused = run_in_process("experiments.predict", [*args, f"output={tmp_path / 'a.nii.gz'}"], tmp_path)
    assert refused.returncode == 2 and "allow_targets=[prefix]" in refused.stderr
    taken = run_in_process("experiments.predict", [*args, f"output={tmp_path / 'b.nii.gz'}",
                                                   "allow_targets=[mylab_strategies]"], tmp_path)
    assert taken.returncode == 0, taken.stderr[-2000:]


def test_the_deployed_strategy_must_be_a_strategy(tmp_path):
    """A project name that is no :class:`Strategy` (e.g. a function of the same package) is refused too, and the
    project's own FedBN is still recognised as keeping batch norm at the sites."""
    from federation.deploy import keeps_local
    from federation.errors import FederationError

    def fed(target: str):
        return OmegaConf.create({"strategy": {"_target_": target}})

    assert keeps_local(fed("federation.core.strategies.FedBN")) and not keeps_local(fed("federation.core.strategies.FedAvg"))
    for bad in ("federation.deploy.save_atomic", "federation.nowhere.Strategy", "os.system"):
        with pytest.raises(FederationError, match="refused|names no class|is not a federation"):
            keeps_local(fed(bad))


def test_yaml_tags_in_run_folder_files_run_nothing(tmp_path):
    """Every reader of a run folder's YAML (config.yaml, .hydra/overrides.yaml) loads it safely: a
    ``!!python/object/apply`` tag is a parse error, never a call (a safe_load turned into unsafe_load would pass
    every other test)."""
    from engine.continue_command import saved_overrides
    from engine.errors import CheckpointError, ConfigError
    from engine.predict_models import read_run_config
    from engine.run_match import saved_config

    marker = tmp_path / "MARKER"
    tag = f"!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]"
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "config.yaml").write_text(f"data:\n  _target_: datamodules.segmentation.VolumeSegmentationDataModule\n"
                                     f"  root: {tag}\n")
    (run / ".hydra" / "overrides.yaml").write_text(f"- {tag}\n")
    with pytest.raises(CheckpointError, match="does not parse"):
        read_run_config(run / "config.yaml")
    with pytest.raises(ConfigError, match="does not parse"):
        saved_config(run)
    assert saved_overrides(run) == []
    assert not marker.exists()


def test_run_files_read_by_resume_and_predict_are_not_followed_through_links(tmp_path, capsys):
    """A review: ``saved_config`` (resume, a test of a checkpoint) and predict's debug-run check read
    ``config.yaml`` / ``metrics.json`` through any link and without a bound (a link to ``/dev/zero`` filled the
    memory); both go through the bounded, link-refusing run-file reader now."""
    from engine.errors import ConfigError
    from engine.run_match import saved_config
    from experiments.predict import _warn_if_debug

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.yaml").write_text("data: {image_size: 32}\n")
    (elsewhere / "metrics.json").write_text('{"debug": true}')
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").symlink_to(elsewhere / "config.yaml")
    (run / "metrics.json").symlink_to(elsewhere / "metrics.json")
    with pytest.raises(ConfigError, match=r"config.yaml is not a run config this framework wrote \(a link"):
        saved_config(run)
    _warn_if_debug(run / "checkpoints" / "best.ckpt")
    assert "debug run" not in capsys.readouterr().out
    (run / "metrics.json").unlink()
    (run / "metrics.json").write_text('{"debug": true}')  # the run's own file is still read
    _warn_if_debug(run / "checkpoints" / "best.ckpt")
    assert "is from a debug run" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["folder2d", "cache"])
def test_pickled_arrays_in_a_data_folder_run_nothing(tmp_path, where):
    """``.npy`` files read from a data folder or the slice cache are loaded without pickle: an object array
    whose pickle would run code is refused (numpy's default today; a test so that passing allow_pickle=True
    anywhere fails here)."""
    marker = tmp_path / "MARKER"

    class Payload:
        def __reduce__(self):
            return (marker.touch, ())

    crafted = np.empty(1, dtype=object)
    crafted[0] = Payload()
    if where == "folder2d":
        from datamodules.image_files import _read as read_image

        path = tmp_path / "img.npy"
        np.save(path, crafted, allow_pickle=True)
        with pytest.raises(Exception):
            read_image(path)
    else:
        from datamodules.volume_cache import VolumeCache
        from datamodules.volumes import PreprocessParams

        from tests.test_data_volumes import _pair

        img, lab = _pair(tmp_path)
        cache = VolumeCache(tmp_path / "cache", PreprocessParams((-200, 300), (0.0, 1.0), 16, (0, 1, 2)))
        real = np.array(cache.load(img, lab, "case").image)   # a real entry, then its arrays replaced
        entry = cache.entry_dir(img, lab)
        for npy in entry.glob("*.npy"):
            np.save(npy, crafted, allow_pickle=True)
        decodes = cache.decode_count
        again = cache.load(img, lab, "case")  # refused without unpickling, so decoded from the NIfTI again
        assert cache.decode_count == decodes + 1 and np.array_equal(np.asarray(again.image), real)
    assert not marker.exists()


@pytest.mark.parametrize("module, call", [
    ("lightning_modules.safe_load", "load_checkpoint"),
    ("federation.server_state", "load_server_state"),
])
def test_loads_of_files_from_elsewhere_say_weights_only_themselves(tmp_path, monkeypatch, module, call):
    """torch's default is weights_only=True today, so a load that drops the argument passes every crafted-pickle
    test; a torch (or Lightning, for remote paths) whose default differs would unpickle. Each loader passes
    ``weights_only=True`` itself."""
    import importlib

    seen: list[object] = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only", "missing"))
        return real(*args, **{**kwargs, "weights_only": True})

    monkeypatch.setattr(torch, "load", spy)
    path = tmp_path / "x.pt"
    torch.save({"w": torch.zeros(2)}, path)
    fn = getattr(importlib.import_module(module), call)
    try:
        fn(path)
    except Exception:  # noqa: BLE001 - the loader may refuse this file's contents; the call is what is checked
        pass
    assert seen and all(w is True for w in seen), seen


def test_importing_the_data_package_makes_no_network_call(tmp_path):
    """albumentations asks pypi.org for its latest version at import unless NO_ALBUMENTATIONS_UPDATE is set (a
    second audit saw the request from every run and predict); the data package sets it first."""
    code = ("import socket\n"
            "calls = []\n"
            "def spy(host, *a, **k):\n"
            "    calls.append(host)\n"
            "    raise OSError('no network')\n"
            "socket.getaddrinfo = spy\n"
            "import datamodules.transforms\n"
            "import albumentations.check_version as cv\n"
            "print('calls', calls)\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repo, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "calls []" in proc.stdout, proc.stdout + proc.stderr[-2000:]
