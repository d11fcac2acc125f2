"""Federated distillation (issue 15, engine/fed_distill.py): +exp=fed_kits_hlfd end to end on tiny phantoms,
stage resumption, the privacy boundary of stage 2 (a site's config holds only its own data), and config errors."""
from __future__ import annotations

import csv
import json

import pytest
from omegaconf import OmegaConf

from engine import fed_distill
from engine.builders import ConfigError
from hydra_helpers import compose_run

SITES = ("site_a", "site_b")
TINY = ["~data.sites.site_c", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
        "logger=csv", "federation.rounds=1", "module.example_size=32", "callbacks=default",
        *[f"data.sites.{s}.{k}" for s in SITES for k in ("image_size=32", "synthetic.n_cases=5", "augment=false")]]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from experiments.run import dispatch

    tmp = tmp_path_factory.mktemp("fed_distill")
    cfg = compose_run(["+exp=fed_kits_hlfd", *TINY], tmp)
    return cfg, dispatch(cfg), tmp / "run"


def test_end_to_end_table_and_teacher_flow(tiny_run):
    cfg, metrics, run = tiny_run
    fed_teacher = run / "teacher" / "global_best.pt"
    assert fed_teacher.is_file() and (run / "teacher" / "metrics.json").is_file()
    assert metrics["fed_distill/teacher_weights"] == str(fed_teacher)
    for site in SITES:
        hlfd_fed = json.loads((run / "sites" / site / "hlfd_fed" / "metrics.json").read_text())
        hlfd_local = json.loads((run / "sites" / site / "hlfd_local" / "metrics.json").read_text())
        assert hlfd_fed["distill/teacher_ckpt"] == str(fed_teacher)  # the only thing a site receives
        assert hlfd_local["distill/teacher_ckpt"] == str(run / "sites" / site / "teacher_local" / "teacher.pt")
        assert (run / "sites" / site / "none" / "student.pt").is_file()
    rows = list(csv.DictReader((run / "fed_distill.csv").open()))
    assert [(r["site"], r["model"]) for r in rows] == [
        (s, m) for s in SITES for m in ("none", "teacher_local", "hlfd_local", "hlfd_fed", "teacher_fed")]
    for r in rows:
        assert 0.0 <= float(r["dice_own"]) <= 1.0 and float(r["ms_per_volume"]) > 0
        assert r["dice_own"] == r[f"dice_{r['site']}"]
    params = {r["model"]: int(r["parameters"]) for r in rows}
    assert params["teacher_fed"] == params["teacher_local"] != params["none"] == params["hlfd_fed"]
    assert (run / "fed_distill.png").stat().st_size > 0 and "federated teacher" in (run / "fed_distill.md").read_text()
    assert "fed_distill/hlfd_fed/dice_other" in json.loads((run / "metrics.json").read_text())


def test_finished_stages_are_reused(tiny_run, monkeypatch):
    cfg, _, run = tiny_run
    before = (run / "teacher" / "global_best.pt").stat().st_mtime_ns

    def boom(*_a, **_k):
        raise AssertionError("a finished stage was run again")

    monkeypatch.setattr(fed_distill, "run_distillation", boom)
    monkeypatch.setattr(fed_distill, "train_local_teacher", boom)
    metrics = fed_distill.run_fed_distill(cfg, federate=boom)
    assert (run / "teacher" / "global_best.pt").stat().st_mtime_ns == before
    assert "fed_distill/none/dice_other" in metrics


def test_stage_configs(tiny_run):
    cfg, _, run = tiny_run
    tcfg = fed_distill.teacher_stage_cfg(cfg)
    assert tcfg.federation == cfg.federation  # passed through unchanged (any strategy / executor / transport)
    assert tcfg.model._target_.endswith("NestedUNet") and "distill" not in tcfg and "fed_distill" not in tcfg
    assert tcfg.paths.output_dir == str(run / "teacher")
    scfg = fed_distill.site_cfg(cfg, "site_b", "hlfd_fed", run / "teacher" / "global_best.pt")
    assert "sites" not in scfg.data and scfg.data.root.endswith("site_b")  # the site's own data only
    assert "federation" not in scfg and scfg.distill.teacher.ckpt.endswith("global_best.pt")
    assert scfg.data.num_classes == cfg.data.num_classes and scfg.model.classes == cfg.data.num_classes


def test_config_errors(tmp_path):
    cfg = compose_run(["+exp=fed_kits_hlfd", "fed_distill.arms=[none,kd]"], tmp_path)
    with pytest.raises(ConfigError, match="fed_distill.arms"):
        fed_distill.check_config(cfg)
    cfg = compose_run(["+exp=fed_kits_hlfd", "data=synthetic_kits"], tmp_path)
    with pytest.raises(ConfigError, match="data.sites"):
        fed_distill.check_config(cfg)
    cfg = compose_run(["+exp=fed_kits_hlfd", "distill=none"], tmp_path)
    with pytest.raises(ConfigError, match="KD method"):
        fed_distill.check_config(cfg)
    assert OmegaConf.select(compose_run(["+exp=fed_kits_hlfd"], tmp_path), "fed_distill.teacher_weights") == "best"


def test_fedbn_site_teacher_keeps_the_sites_own_bn(tmp_path):
    """With FedBN a site receives the global weights plus its own batch-norm entries (from the client store)."""
    import torch

    run = tmp_path / "run"
    (run / "teacher" / "client_store").mkdir(parents=True)
    torch.save({"conv.weight": torch.ones(2), "bn.running_mean": torch.zeros(2)}, run / "teacher" / "global_best.pt")
    torch.save({"local_state": {"bn.running_mean": torch.full((2,), 7.0)}}, run / "teacher" / "client_store" / "site_a.pt")
    cfg = OmegaConf.create({"paths": {"output_dir": str(run)},
                            "federation": {"strategy": {"_target_": "federation.core.strategies.FedBN"}, "store_dir": "client_store"}})
    path = fed_distill.site_teacher(cfg, run / "teacher" / "global_best.pt", "site_a")
    state = torch.load(path, weights_only=True)
    assert path == run / "sites" / "site_a" / "teacher_fed.pt"
    assert torch.equal(state["bn.running_mean"], torch.full((2,), 7.0)) and torch.equal(state["conv.weight"], torch.ones(2))
    with pytest.raises(fed_distill.CheckpointError, match="site_b"):
        fed_distill.site_teacher(cfg, run / "teacher" / "global_best.pt", "site_b")
    cfg.federation.strategy._target_ = "federation.core.strategies.FedAvg"
    assert fed_distill.site_teacher(cfg, run / "teacher" / "global_best.pt", "site_b") == run / "teacher" / "global_best.pt"
