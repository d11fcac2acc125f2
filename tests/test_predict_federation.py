"""``experiments.predict`` on a federation's global model (``global_best.pt``: a bare state dict beside the run's
config.yaml), found missing by a walkthrough: a federation's only deployable output could not be used."""
from __future__ import annotations

import json
import logging
import re

import nibabel as nib
import pytest
import torch
from omegaconf import OmegaConf

from engine.builders import build_module
from tests.cli import run_in_process
from tests.hydra_helpers import compose_run
from tests.volumetric_helpers import phantom

FED = ["+exp=fed_lits_dnet", "model.width=4"]


def fed_run(tmp, overrides=()) -> tuple:
    """A federation run folder as ``run_federation`` leaves it (``config.yaml``, ``global_best.pt``) with a
    global model that was never trained, and the module it must equal."""
    cfg = compose_run([*FED, *overrides], tmp)
    torch.manual_seed(0)
    module = build_module(cfg)
    run = tmp / "fedrun"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save(module.net.state_dict(), run / "global_best.pt")
    return run, module


def test_predict_runs_a_federations_global_model(tmp_path):
    run, module = fed_run(tmp_path)
    data = phantom(tmp_path, n_cases=1)
    out = tmp_path / "pred" / "seg.nii.gz"
    proc = run_in_process("experiments.predict", [f"ckpt={run / 'global_best.pt'}", f"input={data / 'volume-0.nii.gz'}",
                                                  f"output={out}", f"labels={data / 'segmentation-0.nii.gz'}",
                                                  "device=cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert nib.load(out).shape == nib.load(data / "volume-0.nii.gz").shape
    scores = json.loads((out.parent / "seg.metrics.json").read_text())
    assert scores["checkpoints"] == [str(run / "global_best.pt")] and 0.0 <= scores["summary"]["dice"] <= 1.0
    # the same weights into the same net: predict built the federation's net, not another one
    from engine.predict_models import load_models

    models = load_models([run / "global_best.pt"])
    assert models.hparams["num_classes"] == 2 and models.data_key == "data.sites.hospital_a"
    assert models.run_cfg.data.root.endswith("hospital_a")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(models.nets[0](x), module.net.eval()(x))


def test_a_federations_global_model_is_predicted_with_its_runs_window_and_tolerance(tmp_path):
    """A review: of a federation's run config predict read the classes only, so a run tested with
    ``module.overlap=0`` and ``nsd_tolerance_mm=2`` was predicted at 0.5 and scored at 1 mm (docs/data.md: predict
    defaults to the run's test window); a crafted value is one line."""
    from engine.errors import CheckpointError
    from engine.predict_models import load_models

    run, _ = fed_run(tmp_path, ["++module.overlap=0", "module.nsd_tolerance_mm=2"])
    hp = load_models([run / "global_best.pt"]).hparams
    assert hp["overlap"] == 0 and hp["nsd_tolerance_mm"] == 2
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.module.overlap = "abc"
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.raises(CheckpointError, match=r"run config .*config\.yaml: module\.overlap='abc' is not a number"):
        load_models([run / "global_best.pt"])


def test_sites_that_preprocess_differently_need_site(tmp_path):
    run, _ = fed_run(tmp_path, ["data.sites.hospital_b.image_size=32"])
    data = phantom(tmp_path, n_cases=1)
    argv = [f"ckpt={run / 'global_best.pt'}", f"input={data / 'volume-0.nii.gz'}", "device=cpu"]
    proc = run_in_process("experiments.predict", [*argv, f"output={tmp_path / 'a.nii.gz'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "preprocess differently (image_size: hospital_a 64 vs hospital_b 32): pass site=" in proc.stderr
    assert not (tmp_path / "a.nii.gz").exists()
    proc = run_in_process("experiments.predict", [*argv, f"output={tmp_path / 'b.nii.gz'}", "site=hospital_b"],
                          tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "b.nii.gz").is_file()
    proc = run_in_process("experiments.predict", [*argv, f"output={tmp_path / 'c.nii.gz'}", "site=nowhere"],
                          tmp_path)
    assert proc.returncode == 2 and "site='nowhere' is not a site of run config" in proc.stderr


@pytest.mark.parametrize("edit, culprit", [
    (lambda c: c.pop("module"), "has no segmentation module.net"),
    (lambda c: c.module.net.update(_target_="os.system"), "os.system"),
])
def test_global_weights_beside_a_config_without_a_segmentation_net_are_refused(tmp_path, edit, culprit):
    run, _ = fed_run(tmp_path)
    cfg = OmegaConf.load(run / "config.yaml")
    edit(cfg)
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    data = phantom(tmp_path, n_cases=1)
    proc = run_in_process("experiments.predict", [f"ckpt={run / 'global_best.pt'}", f"input={data / 'volume-0.nii.gz'}",
                                                  f"output={tmp_path / 'o.nii.gz'}", "device=cpu"], tmp_path)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and culprit in lines[0], proc.stderr[-2000:]
    assert not (tmp_path / "o.nii.gz").exists()


def test_a_fedbn_global_model_gets_its_sites_batch_norm(tmp_path):
    """FedBN never averages BN layers, so the server's ``global_best.pt`` holds BN statistics no client trained:
    predict fills them in from the client store, the site's with ``site=`` and, as the server evaluated the
    run's own ``test/*``, their mean without. (Without this the test fails: the BN entries stay the initial ones.)"""
    from experiments.predict import _site_weights
    from engine.predict_models import load_models
    from federation.store import ClientStore

    run, module = fed_run(tmp_path, ["federation/strategy=fedbn"])
    bn = {k: v for k, v in module.net.state_dict().items() if "running_mean" in k}
    store = ClientStore(run / "client_store")
    for cid, value in (("hospital_a", 1.0), ("hospital_b", 3.0)):
        store.update(cid, {"local_state": {k: torch.full_like(v, value) for k, v in bn.items()}})
    key = next(iter(bn))
    for site, expected in (("hospital_b", 3.0), (None, 2.0)):
        models = load_models([run / "global_best.pt"], site=site if site != "hospital_b" else None,
                             fill_weights=lambda p, st, rc, d, s=site: _site_weights(p, st, rc, d, s))
        assert torch.all(models.nets[0].state_dict()[key] == expected), site
    plain = load_models([run / "global_best.pt"])  # what predict loaded before: the never-trained statistics
    assert torch.equal(plain.nets[0].state_dict()[key], bn[key])

    def bn_of(weights, run_config=None, site=None):
        models = load_models([weights], run_config, fill_weights=lambda p, st, rc, d: _site_weights(p, st, rc, d, site))
        return float(models.nets[0].state_dict()[key].flatten()[0])

    # the best round's snapshot (federation.deploy.save_best_local) wins over the store for global_best.pt only
    from federation.deploy import save_best_local

    save_best_local(store, ["hospital_a", "hospital_b"], run)
    for cid, value in (("hospital_a", 5.0), ("hospital_b", 7.0)):  # a later round rewrites the store
        store.update(cid, {"local_state": {k: torch.full_like(v, value) for k, v in bn.items()}})
    (run / "global_final.pt").write_bytes((run / "global_best.pt").read_bytes())
    assert bn_of(run / "global_best.pt") == 2.0 and bn_of(run / "global_final.pt") == 6.0
    assert bn_of(run / "global_best.pt", site="hospital_b") == 3.0
    # found by a walkthrough: weights handed over apart from their run folder, with run_config= naming the run,
    # ran silently with untrained BN; the store is the run config's, and without one it is one line
    (tmp_path / "handover").mkdir()
    lone = tmp_path / "handover" / "fedbn.pt"
    lone.write_bytes((run / "global_best.pt").read_bytes())
    assert bn_of(lone, run_config=run / "config.yaml") == 6.0  # not global_best.pt by name: the store's round
    (tmp_path / "handover" / "config.yaml").write_text((run / "config.yaml").read_text())
    from federation.errors import FederationError

    with pytest.raises(FederationError, match="their store .* is missing"):
        bn_of(lone)
    with pytest.raises(FederationError, match="'elsewhere' is no client of"):
        bn_of(run / "global_best.pt", site="elsewhere")


def test_an_ensemble_of_runs_that_preprocess_differently_is_refused(tmp_path, caplog):
    """Found by a walkthrough: the second member of an ensemble got the first run's HU window and image size
    without a word. Members that differ only in where their data is or how it was sampled are an ensemble."""
    from engine.predict_models import load_models
    from lightning_modules.checkpoints import CheckpointError
    from tests.volumetric_helpers import make_run

    a = make_run(tmp_path, name="a")
    b = make_run(tmp_path, ["data.window=[-200,300]"], name="b")
    c = make_run(tmp_path, ["data.synthetic.seed=9", "data.augment=false"], name="c", seed=1)
    with pytest.raises(CheckpointError, match=r"ensemble members preprocess differently: data.window is \[-40, 160\]"):
        load_models([a, b])
    assert len(load_models([a, c]).nets) == 2
    # a review: weights with another run's config (a net of the same shape) were fed that run's window silently
    b_config = b.parent.parent / "config.yaml"
    with caplog.at_level(logging.WARNING, logger="engine.predict_models"):
        load_models([a], run_config=b_config)
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and re.search(r"run_config=.* does not preprocess as the run of .* did: data.window", said[0])
        caplog.clear()
        assert len(load_models([a], run_config=c.parent.parent / "config.yaml").nets) == 1  # preprocesses as a's
        assert not caplog.records
    # two federations' global weights: each net from its own run's config
    run1, _ = fed_run(tmp_path / "f1")
    run2, _ = fed_run(tmp_path / "f2", ["model.width=8"])
    models = load_models([run1 / "global_best.pt", run2 / "global_best.pt"])
    assert [sum(p.numel() for p in n.parameters()) for n in models.nets][0] < \
        [sum(p.numel() for p in n.parameters()) for n in models.nets][1]



def test_weights_of_a_debug_run_are_said_to_be(tmp_path):
    """Found by a walkthrough: a fast_dev_run federation's global weights were taken silently."""
    run, _ = fed_run(tmp_path)
    (run / "metrics.json").write_text(json.dumps({"debug": True}))
    data = phantom(tmp_path, n_cases=1)
    proc = run_in_process("experiments.predict", [f"ckpt={run / 'global_best.pt'}", f"input={data / 'volume-0.nii.gz'}",
                                                  f"output={tmp_path / 'o.nii.gz'}", "device=cpu"], tmp_path)
    assert proc.returncode == 0 and "is from a debug run (trainer.fast_dev_run" in " ".join(proc.stdout.split())


def test_a_fedbn_federation_over_pooled_data_picks_a_clients_batch_norm_by_client(tmp_path):
    """A FedBN federation over one pooled data set has clients ``client_0..``, not sites: ``site=`` names a data
    site (and is refused for one data set), so such a client's BN could not be chosen; ``client=`` picks it."""
    from federation.store import ClientStore

    run, module = fed_run(tmp_path, ["data=lits", "federation/partition=iid", "federation.num_clients=2",
                                     "federation/strategy=fedbn"])
    bn = {k: v for k, v in module.net.state_dict().items() if "running_mean" in k}
    store = ClientStore(run / "client_store")
    for cid, value in (("client_0", 1.0), ("client_1", 3.0)):
        store.update(cid, {"local_state": {k: torch.full_like(v, value) for k, v in bn.items()}})
    data = phantom(tmp_path, n_cases=1)
    argv = [f"ckpt={run / 'global_best.pt'}", f"input={data / 'volume-0.nii.gz'}", "device=cpu"]
    proc = run_in_process("experiments.predict", [*argv, f"output={tmp_path / 'c1.nii.gz'}", "client=client_1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = " ".join(proc.stdout.split())
    assert "client client_1's" in printed  # and it says where from: without the best round's snapshot, the store's
    assert "global_best_local.pt is missing beside it, so these are the last round's entries" in printed
    from federation.deploy import save_best_local

    save_best_local(store, ["client_0", "client_1"], run)
    proc = run_in_process("experiments.predict", [*argv, f"output={tmp_path / 'c1.nii.gz'}", "client=client_1"], tmp_path)
    assert proc.returncode == 0 and "global_best_local.pt" in "".join(proc.stdout.split()), proc.stdout[-2000:]
    assert "is missing" not in " ".join(proc.stdout.split())
    proc = run_in_process("experiments.predict", [*argv, f"output={tmp_path / 'm.nii.gz'}"], tmp_path)
    assert proc.returncode == 0 and "the mean of 2 clients'" in " ".join(proc.stdout.split())
    proc = run_in_process("experiments.predict", [*argv, f"output={tmp_path / 'x.nii.gz'}", "client=client_7"], tmp_path)
    assert proc.returncode == 2 and "'client_7' is no client of" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.nii.gz").exists()
    proc = run_in_process("experiments.predict", [*argv, f"output={tmp_path / 'mm.nii.gz'}", "client=mean"], tmp_path)
    assert proc.returncode == 0 and "the mean of 2 clients'" in " ".join(proc.stdout.split())
    later = "f" * 16  # a site's file of a later federation copied in (a review: its batch norm was filled in)
    store.update("client_1", {"federation_id": later})
    run_id = "0123456789abcdef"
    (run / "federation_id.txt").write_text(run_id + "\n")  # as the federation's server writes it
    proc = run_in_process("experiments.predict", [*argv, f"output={tmp_path / 'l.nii.gz'}", "client=client_1"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].endswith(
        f"client_1.pt holds the state of another federation ({later}), not this run's ({run_id}, "
        f"{run / 'federation_id.txt'}): copy the site's own file for it, <store>/client_1.pt while this was its latest "
        f"federation, else <store>/earlier/{run_id}/client_1.pt"), proc.stderr[-2000:]
    store.update("client_1", {"federation_id": run_id})
    # client= on a run whose clients keep nothing (FedAvg) is said to be unused, not silently ignored
    plain, _ = fed_run(tmp_path / "avg", ["data=lits", "federation/partition=iid", "federation.num_clients=2"])
    proc = run_in_process("experiments.predict", [f"ckpt={plain / 'global_best.pt'}", *argv[1:],
                                                  f"output={tmp_path / 'avg.nii.gz'}", "client=client_1"], tmp_path)
    assert proc.returncode == 0 and "client=client_1 is not used" in " ".join(proc.stdout.split())
    from tests.volumetric_helpers import make_run  # and on a Lightning checkpoint of a plain run

    proc = run_in_process("experiments.predict", [f"ckpt={make_run(tmp_path / 'plain')}", *argv[1:],
                                                  f"output={tmp_path / 'plain.nii.gz'}", "client=client_1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "client=client_1 is not used: no checkpoint is a federation's global weights" in " ".join(proc.stdout.split())


@pytest.mark.parametrize("exp, site", [(["+exp=fed_pancreas_3d"], "site2"),
                                       (["+exp=fed_lits_dnet", "data=liver_slices_two_sites", "model.width=4"], "site_b")])
def test_predict_a_federation_whose_sites_use_site_defaults(tmp_path, exp, site):
    """A walkthrough: predict built a site's data from ``data.sites.<site>`` alone, without ``data.site_defaults``
    (and ``data.patch_size``), so it failed on every such federation (a 3D one: "needs roi_size", then a
    traceback); it now completes each site's config as the datamodule does (``datamodules.multisite.site_configs``)."""
    from engine.predict_models import load_models

    cfg = compose_run(exp, tmp_path)
    torch.manual_seed(0)
    run = tmp_path / "fedrun"
    run.mkdir()
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    torch.save(build_module(cfg).net.state_dict(), run / "global_best.pt")
    models = load_models([run / "global_best.pt"], site=site)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert models.data_key == f"data.sites.{site}"
    assert models.run_cfg.data._target_ == data["site_defaults"]["_target_"]
    for key, value in data["sites"][site].items():  # the site's own keys win over the defaults
        assert models.run_cfg.data[key] == value, key
    if "patch_size" in data:
        assert list(models.run_cfg.data.patch_size) == data["patch_size"]
        vol = phantom(tmp_path, n_cases=1)
        out = tmp_path / "seg.nii.gz"
        proc = run_in_process("experiments.predict", [f"ckpt={run / 'global_best.pt'}", f"site={site}", "device=cpu",
                                                      f"input={vol / 'volume-0.nii.gz'}", f"output={out}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert nib.load(out).shape == nib.load(vol / "volume-0.nii.gz").shape


@pytest.mark.parametrize("net", [{"checkpoint_path": "VICTIM"}, {"encoder_name": "tu-hf-hub:attacker/model"}])
def test_a_handed_over_run_config_builds_the_global_model_offline(tmp_path, net):
    """A federation's ``config.yaml`` names the net its bare ``global_best.pt`` is built into: that net config
    is made to build offline as a checkpoint's is (a second audit: a ``checkpoint_path`` in it read a local
    file the config chose, a Hub encoder reached the network; predict exited 0)."""
    victim = tmp_path / "victim.pt"
    torch.save({"x": torch.zeros(1)}, victim)
    smp_net = {"_target_": "segmentation_models_pytorch.Unet", "encoder_name": "tu-resnet18", "encoder_weights": None,
               "in_channels": 1, "classes": 2, **{k: str(victim) if v == "VICTIM" else v for k, v in net.items()}}
    run, _ = fed_run(tmp_path)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.module.net = smp_net
    (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    data = phantom(tmp_path, n_cases=1)
    proc = run_in_process("experiments.predict", [f"ckpt={run / 'global_best.pt'}", f"input={data / 'volume-0.nii.gz'}",
                                                  f"output={tmp_path / 'seg.nii.gz'}", "device=cpu"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and "config.yaml module.net" in errors[0] and "refused" in errors[0], proc.stderr[-2000:]
    assert not (tmp_path / "seg.nii.gz").exists()
