"""End to end through Hydra's compose API: +exp=kits_hlfd on tiny phantoms, and the KD report."""
from __future__ import annotations

import json

import pytest
import torch

from experiments import kd_report
from engine.artifacts import write_json
from lightning_modules.checkpoints import load_checkpoint
from hydra_helpers import compose_run

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "logger=csv",
        "data.synthetic.n_cases=6", "data.synthetic.shape=[48,48,12]", "data.image_size=32",
        "data.batch_size=4", "data.augment=false", "module.example_size=32"]


def test_kits_hlfd_end_to_end(tmp_path, caplog, capsys):
    import logging

    from experiments.run import dispatch
    from lightning_modules.distillation import load_student
    from lightning_modules.nets.student import ResNet18Student

    cfg = compose_run(["+exp=kits_hlfd", *TINY], tmp_path)
    assert cfg.distill.method == "hlfd" and cfg.distill.teacher.ckpt is None
    with caplog.at_level(logging.INFO, logger="progress"):
        metrics = dispatch(cfg)
    # a walkthrough: the teacher stage wrote no progress line (its sub-run dropped the epoch log)
    lines = [r.getMessage() for r in caplog.records if r.name == "progress"]
    assert any(ln.startswith("teacher epoch 1/1:") for ln in lines), lines
    assert any(ln.startswith("epoch 1/1:") for ln in lines), lines
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["distill/method"] == "hlfd" and saved["distill/protocol"].startswith("a")
    assert "test/dice" in saved and "test/rvd_tumor" in saved and metrics["distill/method"] == "hlfd"
    teachers = list((tmp_path / "data" / "teachers").glob("*.ckpt"))
    assert len(teachers) == 1 and saved["distill/teacher_ckpt"] == str(teachers[0])
    payload = torch.load(run / "student.pt", weights_only=True)
    assert not any("teacher" in k or "kd_loss" in k for k in payload["state_dict"])
    assert isinstance(load_student(run / "student.pt"), ResNet18Student)
    from engine.errors import CheckpointError
    from engine.predict import load_models

    with pytest.raises(CheckpointError, match=r"student.pt is a bare net file .* ckpt=.*checkpoints/best.ckpt$"):
        load_models([run / "student.pt"])  # a walkthrough: it said "not trained with module=segmentation"
    # a walkthrough: the console's artefacts list was printed before student.pt was written
    out = capsys.readouterr().out
    assert "student.pt" in out[out.rindex("artefacts:"):]  # the student's run, after the teacher's
    assert (run / "kd_maps.png").stat().st_size > 0
    best = load_checkpoint(run / "checkpoints" / "best.ckpt")  # weights_only=True
    assert not any(k.startswith("teacher.") for k in best["state_dict"])
    _resume_and_test_only(tmp_path, teachers[0])


def _resume_and_test_only(tmp_path, teacher) -> None:
    """A review: the check of a checkpoint's keys before training compared them with the module's state, teacher
    included, and the student's checkpoints leave the teacher out, so every distillation resume was refused
    (and a test-only run of a student checkpoint too); ``train=false`` without a checkpoint tested the untrained
    student (the guard skipped runs that pass their module in), after training a teacher for it."""
    from experiments.run import dispatch
    from lightning_modules.errors import ConfigError

    run, longer = tmp_path / "run", [o for o in TINY if not o.startswith("trainer.max_epochs")]
    # a review: a longer resume retrained the run's finished teacher from its last.ckpt under the new length's cache
    # key, a teacher the key does not describe; refused (the run's teacher folder is stamped with its key) ...
    with pytest.raises(ConfigError, match=r"teacher holds a teacher trained for key \w+, but this config's teacher"):
        dispatch(compose_run(["+exp=kits_hlfd", *longer, "trainer.max_epochs=2", "resume=true"], tmp_path))
    # ... and the student trains on with the teacher and schedule it had (the cached teacher reused)
    same = ["distill.teacher.max_epochs=1", "module.scheduler.T_max=1"]
    metrics = dispatch(compose_run(["+exp=kits_hlfd", *longer, "trainer.max_epochs=2", *same, "resume=true"], tmp_path))
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 1 and "test/dice" in metrics
    best = run / "checkpoints" / "best.ckpt"
    tested = dispatch(compose_run(["+exp=kits_hlfd", *TINY, "train=false", f"ckpt_path={best}",
                                   f"distill.teacher.ckpt={teacher}"], tmp_path / "tested"))
    assert tested["test/dice"] == pytest.approx(metrics["test/dice"], abs=1e-6)  # best.ckpt, tested again
    with pytest.raises(ConfigError, match="train=false tests a checkpoint"):
        dispatch(compose_run(["+exp=kits_hlfd", *TINY, "train=false"], tmp_path / "untrained"))
    assert not (tmp_path / "untrained" / "data").exists()  # refused before a teacher was trained


def _fake_run(root, name, method, dataset, seed, dice, rvd, beta=0.9, lam=0.1):
    d = root / name
    cfg = {"seed": seed, "data": {"layout": dataset, "target": "tumor"},
           "distill": {"method": method, "loss": {"beta": beta, "lam": lam} if method == "hlfd" else None}}
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    write_json(d / "metrics.json", {"distill/method": method, "test/dice": dice, "test/rvd_tumor": rvd,
                                    "distill/protocol": "a (foreground slices)"})


def test_report_means_and_failures(tmp_path, capsys):
    _fake_run(tmp_path, "0_s1", "hlfd", "kits", 1, 0.50, -0.2)
    _fake_run(tmp_path, "1_s2", "hlfd", "kits", 2, 0.60, -0.4)
    _fake_run(tmp_path, "2_s1", "hlfd", "kits", 1, 0.30, 0.0, beta=1.8)
    (tmp_path / "0_s1" / "teacher").mkdir()
    write_json(tmp_path / "0_s1" / "teacher" / "metrics.json", {"test/dice": 0.9})  # teacher pre-training: ignored
    (tmp_path / "3_s3").mkdir()
    write_json(tmp_path / "3_s3" / "failed.json", {"error": "ConfigError: bad tap", "overrides": ["seed=3"]})
    _fake_run(tmp_path, "4_fdr", "hlfd", "kits", 4, 0.01, 9.0)  # a fast_dev_run: one batch, not a result
    write_json(tmp_path / "4_fdr" / "metrics.json", {**json.loads((tmp_path / "4_fdr" / "metrics.json").read_text()),
                                                    "debug": True})
    _fake_run(tmp_path, "5_s5", "hlfd", "kits", 5, 0.2, 0.0, lam=None)  # a review: beta without lam crashed
    assert kd_report.main([str(tmp_path)]) == 0
    res = kd_report.report(tmp_path)
    row = next(r for r in res["table1"] if r["method"] == "hlfd" and r["dataset"] == "KiTS")
    assert row["n_seeds"] == 2 and row["dsc_mean"] == pytest.approx(55.0) and row["dsc_std"] == pytest.approx(5.0)
    assert row["rvd_mean"] == pytest.approx(-0.3) and row["paper_dsc_mean"] == 52.18
    t2 = {(r["beta"], r["lam"]): r for r in res["table2"]}
    assert t2[(1.8, 0.1)]["dsc_mean"] == pytest.approx(30.0) and t2[(1.8, 0.1)]["paper_dsc_mean"] == 51.58
    md = (tmp_path / "kd_report.md").read_text()
    assert "55.00 ± 5.00 (n=2)" in md and "ConfigError: bad tap" in md
    assert "Left out: 1 debug (fast_dev_run, debug=) run(s); `--all` includes them." in md
    assert (tmp_path / "kd_table1.csv").read_text().startswith("method,dataset")
    assert kd_report.main([str(tmp_path), "--all"]) == 0  # the debug run joins its seed-4 row
    with_debug = next(r for r in kd_report.report(tmp_path, include_debug=True)["table1"]
                      if r["method"] == "hlfd" and r["dataset"] == "KiTS")
    assert with_debug["n_seeds"] == 3


def test_report_of_debug_runs_only_says_so(tmp_path, capsys):
    """A sweep made with ``debug=fdr`` is not "no distillation runs": one line saying why, and ``--all``."""
    _fake_run(tmp_path, "0_fdr", "hlfd", "kits", 1, 0.01, 9.0)
    write_json(tmp_path / "0_fdr" / "metrics.json", {"distill/method": "hlfd", "test/dice": 0.01, "debug": True})
    assert kd_report.main([str(tmp_path)]) == 2
    assert "all 1 run(s) under" in capsys.readouterr().err
    assert kd_report.main([str(tmp_path), "--all"]) == 0


def test_report_without_runs_fails(tmp_path, capsys):
    assert kd_report.main([str(tmp_path)]) == 2  # a wrong folder: exit 2, as experiments.report
    assert "no distillation runs" in capsys.readouterr().err


def test_runs_of_other_nets_protocols_or_sites_are_not_pooled_as_seeds(tmp_path):
    """A review: ``distill=hlfd_dnet_unet`` (D-Net -> U-Net) runs were averaged into the paper's HLFD row with
    UNet++ -> ResNet-18 ones, protocol a with protocol b, and a federated distillation's ``hlfd_local`` and
    ``hlfd_fed`` arms of three sites counted as six seeds of one "HLFD"."""
    for seed, dice in ((1, 0.50), (2, 0.52)):
        _fake_run(tmp_path, f"paper_s{seed}", "hlfd", "kits", seed, dice, -0.2)
    for seed, dice in ((1, 0.20), (2, 0.22)):
        _fake_run(tmp_path, f"dnet_s{seed}", "hlfd", "kits", seed, dice, -0.2)
        cfg = json.loads((tmp_path / f"dnet_s{seed}" / "config.yaml").read_text())
        cfg["model"] = {"_target_": "segmentation_models_pytorch.Unet"}
        cfg["distill"]["teacher"] = {"model": {"_target_": "lightning_modules.nets.dnet.DNet", "width": 32}}
        (tmp_path / f"dnet_s{seed}" / "config.yaml").write_text(json.dumps(cfg))
    _fake_run(tmp_path, "b_s1", "none", "kits", 1, 0.10, 0.0)
    _fake_run(tmp_path, "a_s1", "none", "kits", 1, 0.40, 0.0)
    write_json(tmp_path / "b_s1" / "metrics.json", {"distill/method": "none", "test/dice": 0.10,
                                                   "distill/protocol": "b (all slices)"})
    for site in ("site_a", "site_b"):
        _fake_run(tmp_path / "fed" / "sites" / site, "hlfd_fed", "hlfd", "kits", 1, 0.9, 0.0)
        metrics = json.loads((tmp_path / "fed" / "sites" / site / "hlfd_fed" / "metrics.json").read_text())
        write_json(tmp_path / "fed" / "sites" / site / "hlfd_fed" / "metrics.json",
                   {**metrics, "distill/arm": "hlfd_fed", "distill/site": site})
    res = kd_report.report(tmp_path)
    rows = {r["method"]: r for r in res["table1"] if r["dataset"] == "KiTS"}
    hlfd = [m for m in rows if m.startswith("hlfd")]
    assert len(hlfd) == 2 and sorted(rows[m]["dsc_mean"] for m in hlfd) == pytest.approx([21.0, 51.0])
    assert any("teacher=DNet(width=32)" in m and "student=Unet" in m for m in hlfd)
    none = sorted((m for m in rows if m.startswith("none")), key=lambda m: rows[m]["dsc_mean"])
    assert [rows[m]["dsc_mean"] for m in none] == pytest.approx([10.0, 40.0]) and "protocol=b" in none[0]
    assert all(rows[m]["n_seeds"] == 1 for m in none)
    md = res["markdown"]
    assert "Left out: 2 arm(s) of federated distillation runs" in md
    _fake_run(tmp_path, "again_s1", "hlfd", "kits", 1, 0.51, -0.2)  # seed 1 made twice
    assert "student=?] on KiTS: seed(s) 1 more than once" in kd_report.report(tmp_path)["markdown"]
    only_arms = tmp_path / "fed"
    assert kd_report.main([str(only_arms)]) == 2


def test_runs_on_other_data_or_epochs_are_not_pooled_as_seeds(tmp_path):
    """A review: synthetic phantoms and real KiTS slices (both "KiTS"), or 20 and 100 epochs, were averaged into
    one HLFD row beside the paper's."""
    _fake_run(tmp_path, "0_s1", "hlfd", "kits", 1, 0.50, -0.2)
    _fake_run(tmp_path, "1_s2", "hlfd", "kits", 2, 0.10, -0.4)
    cfg = json.loads((tmp_path / "1_s2" / "config.yaml").read_text())
    cfg["data"]["root"] = "/data/kits19_slices"
    (tmp_path / "1_s2" / "config.yaml").write_text(json.dumps(cfg))
    rows = [r for r in kd_report.report(tmp_path)["table1"] if r["method"].startswith("hlfd") and r["dataset"] == "KiTS"]
    assert sorted(r["n_seeds"] for r in rows) == [1, 1], rows


def test_a_student_started_from_init_weights_is_not_pooled_with_fresh_ones(tmp_path):
    """``init_weights=``: a student fine-tuned from another run's weights is another setting than one trained from
    its fresh initialisation, not a seed of it."""
    _fake_run(tmp_path, "0_s1", "hlfd", "kits", 1, 0.50, -0.2)
    _fake_run(tmp_path, "1_s2", "hlfd", "kits", 2, 0.10, -0.4)
    cfg = json.loads((tmp_path / "1_s2" / "config.yaml").read_text())
    cfg["init_weights"] = "/runs/pretrained/student.pt"
    (tmp_path / "1_s2" / "config.yaml").write_text(json.dumps(cfg))
    rows = [r for r in kd_report.report(tmp_path)["table1"] if r["method"].startswith("hlfd") and r["dataset"] == "KiTS"]
    assert sorted(r["n_seeds"] for r in rows) == [1, 1], rows
    assert any("init=/runs/pretrained/student.pt" in r["method"] for r in rows), rows
    # a third student from the same path, but the file saved over since (its recorded SHA-256 differs)
    _fake_run(tmp_path, "2_s3", "hlfd", "kits", 3, 0.30, -0.3)
    for name, sha in (("1_s2", "a" * 64), ("2_s3", "b" * 64)):
        cfg = json.loads((tmp_path / name / "config.yaml").read_text())
        cfg.update(init_weights="/runs/pretrained/student.pt", init_weights_sha256=sha)
        (tmp_path / name / "config.yaml").write_text(json.dumps(cfg))
    rows = [r for r in kd_report.report(tmp_path)["table1"] if r["method"].startswith("hlfd") and r["dataset"] == "KiTS"]
    assert sorted(r["n_seeds"] for r in rows) == [1, 1, 1], rows
    assert any("init=aaaaaaaaaaaa /runs/pretrained/student.pt" in r["method"] for r in rows), rows


def test_table2_keeps_settings_apart(tmp_path):
    """Found by a review: Table 2 (beta/lambda) pooled protocol a and protocol b runs into one cell while Table 1
    split them; it is split by the same setting now."""
    _fake_run(tmp_path, "a_s1", "hlfd", "kits", 1, 0.50, -0.2)
    _fake_run(tmp_path, "b_s1", "hlfd", "kits", 1, 0.20, -0.2)
    metrics = json.loads((tmp_path / "b_s1" / "metrics.json").read_text())
    write_json(tmp_path / "b_s1" / "metrics.json", {**metrics, "distill/protocol": "b (all slices)"})
    res = kd_report.report(tmp_path)
    cells = {(r["setting"], r["beta"], r["lam"]): r for r in res["table2"] if r["dataset"] == "KiTS"}
    assert cells[("protocol=a (foreground slices)", 0.9, 0.1)]["dsc_mean"] == pytest.approx(50.0)
    assert cells[("protocol=b (all slices)", 0.9, 0.1)]["dsc_mean"] == pytest.approx(20.0)
    assert all(r["n_seeds"] <= 1 for r in res["table2"])


def test_students_of_differently_trained_teachers_are_not_pooled(tmp_path):
    """A walkthrough: HLFD students of teachers trained 1 and 12 epochs (``distill.teacher.max_epochs``) were one
    row of three seeds in kd_report, while experiments.report kept them apart."""
    for name, seed, epochs, dice in (("t1_s1", 1, 1, 0.2), ("t1_s2", 2, 1, 0.4), ("t12_s1", 1, 12, 0.8)):
        _fake_run(tmp_path, name, "hlfd", "kits", seed, dice, 0.0)
        cfg = json.loads((tmp_path / name / "config.yaml").read_text())
        cfg["distill"]["teacher"] = {"max_epochs": epochs}
        (tmp_path / name / "config.yaml").write_text(json.dumps(cfg))
    rows = [r for r in kd_report.report(tmp_path)["table1"] if r["method"].startswith("hlfd")]
    assert sorted((r["n_seeds"], round(r["dsc_mean"], 6)) for r in rows) == [(1, 80.0), (2, 30.0)], rows


def test_the_teacher_stamp_follows_what_the_teacher_learns_not_where_the_data_lies(tmp_path):
    """A review: the stamp held the cache key, which hashes ``data.root`` and ``data.num_workers``, so a resume from
    a moved data folder (allowed: ``data.root`` may move) was refused as another teacher."""
    from engine.distill import _stamp_key, teacher_key

    def stamp(overrides):
        return _stamp_key(teacher_key(compose_run(overrides, tmp_path)))

    base = stamp(["+exp=kits_hlfd", *TINY])
    key = teacher_key(compose_run(["+exp=kits_hlfd", *TINY], tmp_path))  # a fix to how image files are read (NPY
    assert key["image_file_format"] >= 2 and _stamp_key({**key, "image_file_format": 1}) == base  # dtype) retires
    # cached teachers through the cache key; a resume's stamp is left as it was
    assert stamp(["+exp=kits_hlfd", *TINY, f"data.root={tmp_path / 'moved'}", "data.num_workers=3"]) == base
    assert stamp(["+exp=kits_hlfd", *TINY, "distill.teacher.max_epochs=3"]) != base
    sites = ["+exp=kits_hlfd", "data=multisite_kits", "logger=csv"]
    # each site's root follows data.root
    assert stamp([*sites, f"data.root={tmp_path / 'moved'}"]) == stamp(sites)


@pytest.mark.parametrize("bad", ["distill.loss=hlfd", "distill.loss._target_=lightning_modules.losses.kd.HLFDLos",
                                 "~distill.loss._target_"])
def test_a_bad_kd_loss_is_one_line_before_a_teacher_trains(tmp_path, bad):
    """A walkthrough: a typo in the loss's ``_target_`` was reported after the teacher had trained (hours at paper
    size); a review: ``distill.loss=hlfd`` (a string) was a traceback, and a loss without ``_target_`` passed."""
    from engine.distill import run_distillation
    from engine.errors import ConfigError

    cfg = compose_run(["+exp=kits_hlfd", *TINY, bad], tmp_path)
    with pytest.raises(ConfigError, match=r"^distill.loss"):
        run_distillation(cfg)
    assert not (tmp_path / "run" / "teacher").exists() and not (tmp_path / "data" / "teachers").exists()


@pytest.mark.parametrize("bad, said", [
    ("distill.taps.0.student=encoder.layer9", r"bad student path for ResNet18Student: module path 'encoder.layer9'"),
    ("distill.taps.4.teacher=conv9_0", r"bad teacher path for NestedUNet: module path 'conv9_0'"),
    ("distill.taps.8.head=final9", r"bad teacher head path for NestedUNet: module path 'final9'"),
    ("+distill.taps.0.index=1", r"bad student path for ResNet18Student: module 'encoder.layer1': index=1 given")])
def test_a_tap_naming_no_module_is_one_line_before_a_teacher_trains(tmp_path, bad, said):
    """A walkthrough: a tap or head path that names no module was reported only after the teacher had trained
    (docs/distillation.md: "a wrong path fails before any training")."""
    from engine.distill import run_distillation
    from engine.errors import ConfigError

    cfg = compose_run(["+exp=kits_hlfd", *TINY, bad], tmp_path)
    with pytest.raises(ConfigError, match=rf"^distill.taps: {said}"):
        run_distillation(cfg)
    assert not (tmp_path / "run" / "teacher").exists() and not (tmp_path / "data" / "teachers").exists()
