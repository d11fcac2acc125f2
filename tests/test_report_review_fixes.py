"""experiments.report and decathlon_report on what reviews found: crafted overrides, unreadable or empty
metrics.json, curves of runs of unequal length, a folder that is no decathlon sweep, fractional epoch ticks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import report, report_overrides


def _run(root: Path, name: str, metrics: dict | None, overrides: list | None = None, csv: str | None = None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    (run / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides or []))
    if csv is not None:
        (run / "csv").mkdir()
        (run / "csv" / "metrics.csv").write_text(csv)
    return run


@pytest.fixture
def figures(monkeypatch):
    """The figures the report draws, kept open to inspect (not written)."""
    import callbacks.plotting

    kept = []
    monkeypatch.setattr(callbacks.plotting, "save_figure", lambda fig, path, dpi=110: kept.append(fig) or Path(path))
    yield kept
    for fig in kept:
        callbacks.plotting.plt.close(fig)


def test_a_run_short_of_an_epoch_does_not_cut_its_methods_curve(tmp_path, figures):
    """A review: the curves were cut to the shortest run; a seed missing an epoch row made its method one point."""
    _run(tmp_path, "s0", {"test/dice": 0.5}, ["seed=0"], "epoch,step,val/dice\n0,9,0.2\n1,19,0.4\n2,29,0.6\n")
    _run(tmp_path, "s1", {"test/dice": 0.6}, ["seed=1"], "epoch,step,val/dice\n0,9,0.4\n2,29,0.8\n")
    assert report.main([str(tmp_path)]) == 0
    (line,) = figures[0].axes[0].get_lines()
    assert list(line.get_xdata()) == [1, 2, 3]
    assert list(line.get_ydata()) == pytest.approx([0.3, 0.4, 0.7])  # epoch 2: the one run that has it
    assert "n=2" in line.get_label() and "fewer at 1 point" in line.get_label()


def test_the_curves_epoch_ticks_are_whole_numbers(tmp_path, figures):
    """A review: report_curves.png of a 2-epoch sweep had ticks at epochs 1.2, 1.4, ..."""
    _run(tmp_path, "a", {"test/dice": 0.5}, ["model=a"], "epoch,step,val/dice\n0,9,0.2\n1,19,0.4\n")
    assert report.main([str(tmp_path)]) == 0
    ticks = figures[0].axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks), ticks


def test_runs_with_unreadable_or_empty_metrics_are_listed_in_report_md(tmp_path, capsys):
    """A review: a truncated metrics.json was a stderr line only, one holding {} vanished without a word, and a
    method whose every run was so lost its row unmentioned."""
    _run(tmp_path, "good", {"test/dice": 0.5}, ["model=unet"])
    cut = _run(tmp_path, "cut", None, ["model=dnet"])
    (cut / "metrics.json").write_text('{"test/dice": 0.')
    empty = _run(tmp_path, "empty", {}, ["model=swin"])
    assert report.main([str(tmp_path)]) == 0
    assert "2 run(s) left out" in capsys.readouterr().err
    md = (tmp_path / "report.md").read_text()
    assert "0.5000" in md and "Left out, unreadable or without metrics (2)" in md
    assert f"- `{cut}`: unreadable" in md and f"- `{empty}`: no metrics" in md
    only = tmp_path / "only"  # nothing else to report: the list is written, exit 1 as when every run failed
    _run(only, "empty", {"val/dice": float("nan")}, ["model=swin"])
    assert report.main([str(only)]) == 1
    assert f"- `{only / 'empty'}`: no metrics" in (only / "report.md").read_text()


def test_a_run_with_too_many_overrides_is_left_out_and_each_runs_overrides_are_parsed_once(tmp_path, capsys,
                                                                                           monkeypatch, figures):
    """A review: a crafted overrides.yaml of 1,000 lines held the report 22 s, 20,000 lines minutes (Hydra parsed
    each override ~7 times per run), and the legend drew a label thousands of characters long."""
    calls = []
    real = report_overrides.canonical_override
    monkeypatch.setattr(report_overrides, "canonical_override", lambda text: calls.append(text) or real(text))
    csv = "epoch,step,val/dice\n0,9,0.2\n"
    _run(tmp_path, "a", {"test/dice": 0.5}, ["model=a", *(f"+x{i}={'a' * 90}" for i in range(40))], csv)
    _run(tmp_path, "b", {"test/dice": 0.6}, ["model=b"], csv)
    crafted = _run(tmp_path, "crafted", {"test/dice": 0.9}, [f"+k{i}=v" for i in range(201)])  # over the 200 read
    assert report.main([str(tmp_path)]) == 0
    assert len(calls) == 42  # a's and b's, once each; none of the crafted run's
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 run(s) left out" in err[0] and ".hydra/overrides.yaml" in err[0]
    md = (tmp_path / "report.md").read_text()
    assert f"- `{crafted}`: unreadable: .hydra/overrides.yaml holds over 200 overrides" in md and "0.9000" not in md
    assert max(len(line.get_label()) for line in figures[0].axes[0].get_lines()) < 120


def test_decathlon_report_of_a_folder_that_is_no_decathlon_sweep_writes_nothing(tmp_path, capsys):
    """A review: ``decathlon_report`` of another folder wrote decathlon.md/.csv there ("not run" x 10, "0/10 ok")
    before saying it held no run; now one line, exit 2, as kd_report."""
    from experiments import decathlon_report

    run = _run(tmp_path, "seg", {"test/dice": 0.5}, ["model=unet"])
    (run / ".hydra" / "config.yaml").write_text("data:\n  root: /x\nmodel:\n  _target_: nets.UNet\n")
    assert decathlon_report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a decathlon sweep" in err[0]
    assert not (tmp_path / "decathlon.md").exists() and not (tmp_path / "decathlon.csv").exists()


def test_a_run_that_failed_after_writing_its_metrics_is_listed_as_failed(tmp_path, capsys):
    """A walkthrough: an Optuna trial trained, tested and wrote metrics.json, then failed on an ``optimized_metric``
    it lacks and wrote failed.json; the report showed it as a finished n=1 row and exited 0, while the sweep said
    "1 of 1 sweep jobs failed". A failed run resumed to its end keeps its older failed.json: it is finished."""
    import os

    trial = _run(tmp_path, "0", {"test/dice": 0.5}, ["model=unet"])
    (trial / "failed.json").write_text(json.dumps({"error": "optimized_metric=val/nope: no such metric"}))
    os.utime(trial / "metrics.json", ns=(10**18, 10**18))
    os.utime(trial / "failed.json", ns=(10**18 + 10**9, 10**18 + 10**9))  # written after metrics.json
    assert report.find_runs([str(tmp_path)]) == ([], [trial])
    assert report.main([str(tmp_path)]) == 1
    md = (tmp_path / "report.md").read_text()
    assert "Failed runs (1)" in md and "no such metric" in md and "0.5000" not in md
    assert "metrics.json, written before it failed, is left out" in md
    os.utime(trial / "failed.json", ns=(10**18 - 10**9, 10**18 - 10**9))  # an earlier failure, then resumed
    assert report.find_runs([str(tmp_path)]) == ([trial], [])
    assert report.main([str(tmp_path)]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "0.5000" in md and "Failed runs" not in md


def _configured(root: Path, name: str, overrides: list[str], config: str) -> Path:
    run = _run(root, name, {"test/dice": 0.5}, overrides)
    (run / "config.yaml").write_text(config)
    return run


def test_an_override_typed_in_some_runs_shows_in_every_label_at_its_value(tmp_path):
    """A walkthrough: runs of ``model.width``, ``data.layout`` and ``data.target`` were each labelled by their own
    override only, as if the others' settings were the same in every row; the others are shown at the value their
    config.yaml holds, a config group's choice (not in config.yaml) as ``(default)``."""
    base = "model: {width: %s}\ndata: {layout: %s, target: %s}\n"
    a = _configured(tmp_path, "a", ["+exp=lits_dnet", "model.width=32"], base % (32, "nested", "liver"))
    b = _configured(tmp_path, "b", ["+exp=lits_dnet", "data.layout=flat"], base % (16, "flat", "liver"))
    c = _configured(tmp_path, "c", ["+exp=lits_dnet", "data.target=tumor", "model=unet"],
                    base % (16, "nested", "tumor"))
    labels, common = report.run_labels([a, b, c])
    assert common == ["+exp=lits_dnet"]
    assert labels == {a: "data.layout=nested data.target=liver model=(default) model.width=32",
                      b: "data.layout=flat data.target=liver model=(default) model.width=16",
                      c: "data.layout=nested data.target=tumor model=unet model.width=16"}


def test_what_the_runs_of_one_experiment_share_is_shown_once_per_experiment(tmp_path):
    """A walkthrough: over a centralised sweep (``trainer.max_epochs=2``) and a federated one
    (``trainer.max_epochs=1 federation.rounds=1``), "Common to every run" listed only what both shared, and each
    experiment's own settings were nowhere in the report."""
    cfg = "model: {width: %s}\n"
    central = [_configured(tmp_path, f"a{i}", ["+exp=lits_dnet", f"model={m}", "trainer.max_epochs=2",
                                                "data.image_size=32", *extra], cfg % w)
               for i, (m, w, extra) in enumerate([("dnet", 16, []), ("unet", 8, ["model.width=8"])])]
    fed = [_configured(tmp_path, f"f{i}", ["+exp=fed_lits_dnet", f"federation/strategy={s}", "trainer.max_epochs=1",
                                            "federation.rounds=1", "data.image_size=32"], cfg % 16)
           for i, s in enumerate(["fedavg", "fedprox"])]
    assert report.main([str(tmp_path)]) == 0
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    for line in ("Common to every run: `data.image_size=32`",
                 "Common to the runs of `+exp=fed_lits_dnet`: `federation.rounds=1 trainer.max_epochs=1`",
                 "Common to the runs of `+exp=lits_dnet`: `trainer.max_epochs=2`"):
        assert line in md
    assert "<code>federation.rounds=1 trainer.max_epochs=1</code>" in page
    labels, common, by_experiment = report.label_parts([*central, *fed])
    assert common == ["data.image_size=32"]
    assert by_experiment == {"+exp=fed_lits_dnet": ["federation.rounds=1", "trainer.max_epochs=1"],
                             "+exp=lits_dnet": ["trainer.max_epochs=2"]}
    assert [labels[r] for r in [*central, *fed]] == [
        "+exp=lits_dnet model=dnet model.width=16", "+exp=lits_dnet model=unet model.width=8",
        "+exp=fed_lits_dnet federation/strategy=fedavg", "+exp=fed_lits_dnet federation/strategy=fedprox"]


def test_the_distillation_table_judges_a_failed_json_by_its_time_as_the_report_does(tmp_path):
    """A session's review: ``experiments.kd_runs`` listed every ``failed.json`` as a failure, so a run that failed,
    was resumed and finished was both a row and a failed run; and a run that tested, then failed, was a row. Both
    tables now read :func:`engine.finished_run.failed_last`."""
    import os

    from experiments.kd_runs import collect

    run = tmp_path / "hlfd"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"distill/method": "hlfd", "test/dice": 0.6}))
    (run / "config.yaml").write_text("seed: 1\n")
    (run / "failed.json").write_text(json.dumps({"error": "killed by OOM"}))
    os.utime(run / "failed.json", ns=(10**18, 10**18))
    os.utime(run / "metrics.json", ns=(10**18 + 10**9, 10**18 + 10**9))  # failed, then resumed to its end
    runs, failed, _, _ = collect(tmp_path)
    assert [r["method"] for r in runs] == ["hlfd"] and failed == []
    os.utime(run / "failed.json", ns=(10**18 + 2 * 10**9, 10**18 + 2 * 10**9))  # tested, then failed
    runs, failed, _, _ = collect(tmp_path)
    assert runs == [] and [f["error"] for f in failed] == ["killed by OOM"]


def test_the_real_kits_slices_are_the_kits_rows_of_the_distillation_table(tmp_path):
    """A walkthrough: ``+exp=kits_hlfd data=kits_slices`` (the real KiTS19 slices of docs/benchmarks.md, a 2D folder
    with no ``data.layout``) was the dataset "kits_hlfd", with none of paper 001's KiTS figures beside it."""
    from experiments.kd_runs import collect

    for name, data in (("real", "data: {image_dir: mini_eval/images}\n"), ("phantom", "data: {layout: kits}\n"),
                       ("other", "data: {layout: msd}\n")):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.json").write_text(json.dumps({"distill/method": "hlfd", "test/dice": 0.5}))
        (run / "config.yaml").write_text(f"seed: 1\nexp_name: kits_hlfd\n{data}")
    runs, _, _, _ = collect(tmp_path)
    assert sorted(r["dataset"] for r in runs) == ["KiTS", "KiTS", "msd"]
