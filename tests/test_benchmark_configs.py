"""The benchmark scripts compose real experiment configs: check those compositions still hold (no run)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fed_overhead_composes_a_fedavg_federation(tmp_path):
    import numpy as np

    from federation.plan import call_partitioner

    fed = _load("fed_overhead")
    cfg = fed._compose(fed._digits(10, 10, 3, 1), tmp_path)
    assert cfg.federation.strategy._target_.endswith("FedAvg") and cfg.federation.num_clients == 10
    assert cfg.federation.get("shared_fraction") is None  # no server pool under FedAvg
    labels = np.arange(200) % 10
    ids, parts = call_partitioner(cfg.federation.partition, labels, None, np.arange(200), 10, 0)
    assert len(ids) == 10 and sum(len(p) for p in parts) == 200


def test_kd_step_builds_the_plain_student_and_a_kd_module():
    kd = _load("kd_step")
    none = kd.measure("none", size=32, batch=2, steps=1, warmup=0, teacher_width=4, device="cpu")
    hlfd = kd.measure("hlfd", size=32, batch=2, steps=1, warmup=0, teacher_width=4, device="cpu")
    assert none["teacher_M"] is None and hlfd["teacher_M"] > 0 and hlfd["step_ms"] > 0


def test_fed_distill_seeds_prints_each_gain_over_its_baseline(tmp_path, capsys):
    import json

    seeds = _load("fed_distill_seeds")
    dirs = []
    for i, (none, fed, fed_none, fed_hlfd) in enumerate([(0.2, 0.25, 0.4, 0.5), (0.3, 0.2, 0.5, 0.55)]):
        d = tmp_path / f"s{i}"
        d.mkdir()
        m = {f"fed_distill/{k}/{key}": v for k, v in
             (("none", none), ("hlfd_fed", fed), ("fed_none", fed_none), ("fed_hlfd", fed_hlfd))
             for key in ("dice_other", "dice_own")}
        (d / "metrics.json").write_text(json.dumps(m))
        dirs.append(str(d))
    assert seeds.main(dirs) == 0
    out = capsys.readouterr().out
    assert "hlfd_fed - none, other sites: +0.050 / -0.100 (mean -0.025, min -0.100)" in out
    assert "fed_hlfd - fed_none, other sites: +0.100 / +0.050 (mean +0.075, min +0.050)" in out
    assert "hlfd_local - none" not in out  # an arm the runs did not train is left out
    assert "| none | 0.200 / 0.300 | 0.250 ± 0.050 |" in out
    # a walkthrough: runs made with other arm lists raised KeyError, and fast_dev_run runs were counted
    fewer, debug = tmp_path / "fewer", tmp_path / "debug"
    fewer.mkdir(), debug.mkdir()
    (fewer / "metrics.json").write_text(json.dumps({"fed_distill/none/dice_other": 0.4, "fed_distill/none/dice_own": 0.6}))
    (debug / "metrics.json").write_text(json.dumps({"debug": True, "fed_distill/none/dice_other": 0.9}))
    assert seeds.main([*dirs, str(fewer), str(debug)]) == 0
    out, err = capsys.readouterr()
    assert "| none | 0.200 / 0.300 / 0.400 |" in out and "fed_hlfd - fed_none" not in out and "debug" in err
    assert seeds.main([str(debug)]) == 2
