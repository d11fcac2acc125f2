"""experiments.report and federation.curves on the inputs a user gets wrong: one line, exit 2, nothing
overwritten; a run's own stages (a distillation's teacher/) are not runs of their own."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from callbacks.curves import read_csv_metrics
from experiments import report
from federation import curves


def _run(root: Path, name: str, metrics: dict) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_a_runs_teacher_is_not_a_run_of_its_own(tmp_path):
    kd = _run(tmp_path, "kd", {"test/dice": 0.5})
    _run(kd, "teacher", {"test/dice": 0.9})
    _run(tmp_path, "plain", {"test/dice": 0.4})
    runs, _ = report.find_runs([str(tmp_path)])
    assert runs == [kd, tmp_path / "plain"]


def test_unknown_key_is_an_error_and_the_earlier_report_stays(tmp_path, capsys):
    _run(tmp_path, "a", {"test/dice": 0.5})
    assert report.main([str(tmp_path)]) == 0
    before = (tmp_path / "report.md").read_text()
    assert report.main([str(tmp_path), "--keys", "test/dice", "test/bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test/bogus" in err[0] and "test/dice" in err[0]
    assert (tmp_path / "report.md").read_text() == before
    # found by an audit: a lone unknown key suggested nothing ("e.g. "): the suggestions come from every metric
    assert report.main([str(tmp_path), "--keys", "test/dcie"]) == 2
    assert "(e.g. test/dice" in capsys.readouterr().err


def test_only_debug_runs_and_a_missing_folder_are_errors(tmp_path, capsys):
    _run(tmp_path, "fdr", {"test/dice": 0.1, "debug": True})
    assert report.main([str(tmp_path)]) == 2
    assert "debug" in capsys.readouterr().err and not (tmp_path / "report.md").exists()
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_curves_missing_folder_and_unknown_metric(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        curves.main([str(tmp_path / "nope")])
    assert exc.value.code == 2 and "no rounds.csv" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "rounds.csv").write_text("round,test/acc,test/loss\n1,0.5,1.0\n2,0.6,0.9\n")
    with pytest.raises(SystemExit) as exc:
        curves.main([str(tmp_path), "--metric", "dice"])
    assert exc.value.code == 2 and "test/dice" in capsys.readouterr().err
    assert not (tmp_path / "fed_compare.png").exists()
    curves.main([str(tmp_path), "--metric", "acc"])
    assert (tmp_path / "fed_compare.png").is_file()


def test_a_metrics_json_that_is_no_json_object_is_left_out_with_a_warning(tmp_path, capsys):
    """Found by an audit: an invalid or non-object ``metrics.json`` (a killed write, a crafted file) was a
    JSONDecodeError / AttributeError traceback for the whole report."""
    _run(tmp_path, "good", {"test/dice": 0.5})
    for name, text in (("cut", '{"test/dice": 0.'), ("list", "[1, 2]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(text)
    (tmp_path / "failed_run").mkdir()
    (tmp_path / "failed_run" / "failed.json").write_text("not json")
    assert report.main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "2 run(s) left out" in err and "Traceback" not in err
    text = (tmp_path / "report.md").read_text()
    assert "0.5000" in text and "failed.json does not parse" in text


def test_curve_labels_read_a_runs_config_as_data(tmp_path, monkeypatch):
    """A label is read from the run's config.yaml as text: an interpolation in it is shown, not resolved
    (``${oc.env:...}`` would have put an environment variable of the user's into the figure)."""
    monkeypatch.setenv("FEDMED_TEST_SECRET", "s3cret")
    run = _run(tmp_path, "r", {"test/dice": 0.5})
    (run / "config.yaml").write_text("federation:\n  strategy:\n    mode: ${oc.env:FEDMED_TEST_SECRET}\n")
    assert curves._label(run, "federation.strategy.mode") == "${oc.env:FEDMED_TEST_SECRET}"
    assert curves._label(run, "federation.nope") is None  # compare_runs then names it by what differs


def test_a_run_config_may_only_build_datamodules():
    from lightning_modules.errors import ConfigError
    from lightning_modules.targets import check_data_target

    check_data_target("datamodules.folder2d.FolderSegmentationDataModule")
    with pytest.raises(ConfigError, match="refused"):  # a class of the package that is no datamodule
        check_data_target("datamodules.errors.DataError")


def test_the_curve_is_the_first_metric_the_runs_logged(tmp_path, capsys):
    """Classification runs log val/acc and val/auc, not val/dice, the old default: no report_curves.png and no
    word about it (found by a walkthrough of ``run -m +exp=digits_cnn seed=1,2``)."""
    for seed in (1, 2):
        run = _run(tmp_path, f"s{seed}", {"test/acc": 0.9})
        (run / "csv").mkdir()
        test_keys = ",".join(f"test/a_rather_long_metric_name_{i}" for i in range(12))  # sorted before val/
        (run / "csv" / "metrics.csv").write_text(f"epoch,step,val/acc,val/auc,{test_keys}\n"
                                                 f"0,9,0.5,0.6{',1' * 12}\n1,19,0.7,0.8{',1' * 12}\n")
    assert report.curve_key(report.read_curves(report.find_runs([str(tmp_path)])[0])) == "val/auc"
    assert report.main([str(tmp_path)]) == 0 and (tmp_path / "report_curves.png").is_file()
    # a walkthrough: a --curve no run logged (a typo) was a warning and exit 0; it is now one line, exit 2,
    # before anything is written
    assert report.main([str(tmp_path), "--curve", "val/dice", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error: --curve val/dice: no run logged it" in err and "val/auc" in err  # a review: cut off before val/
    assert not (tmp_path / "o").exists()
    # runs that log no curve at all: an earlier report's figure in the folder goes (it would belong to others)
    for seed in (1, 2):
        (tmp_path / f"s{seed}" / "csv" / "metrics.csv").write_text("epoch,step\n")
    assert report.main([str(tmp_path)]) == 0 and not (tmp_path / "report_curves.png").exists()
    assert "no learning curve" in capsys.readouterr().out


def test_the_console_shows_characters_the_markdown_writes_as_entities(tmp_path, capsys):
    """A walkthrough: a failed run's error ``x >= 1`` printed as ``x &gt;= 1`` on the console."""
    run = tmp_path / "bad"
    run.mkdir()
    (run / "failed.json").write_text(json.dumps({"error": "ConfigError: lr must be >= 0"}))
    _run(tmp_path, "ok", {"test/dice": 0.5})
    assert report.main([str(tmp_path)]) == 0
    assert "lr must be >= 0" in capsys.readouterr().out
    assert "lr must be &gt;= 0" in (tmp_path / "report.md").read_text()


def test_a_debug_run_is_known_by_its_hydra_config_too(tmp_path):
    """A job of a multirun keeps its config in ``.hydra/config.yaml`` only; ``is_debug`` read ``config.yaml``
    alone, so such a fast_dev_run job without ``"debug"`` in its metrics counted as a result."""
    run = _run(tmp_path, "job", {"test/dice": 0.5})
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("trainer:\n  fast_dev_run: true\n")
    assert report.is_debug(run)
    (run / ".hydra" / "config.yaml").write_text("trainer:\n  fast_dev_run: false\n")
    assert not report.is_debug(run)
    (run / ".hydra" / "config.yaml").write_text("- not a mapping\n")
    assert not report.is_debug(run)


def test_a_report_of_failed_runs_only_has_no_broken_table(tmp_path):
    """With every finished run left out (debug) and a failed one listed, report.md held a table whose header
    had three cells and its separator two."""
    _run(tmp_path, "debug", {"test/dice": 0.5, "debug": True})
    failed = tmp_path / "crashed"
    failed.mkdir()
    (failed / "failed.json").write_text(json.dumps({"error": "DataError: x"}))
    assert report.main([str(tmp_path)]) == 1  # every run failed: written, and exit 1 (a walkthrough: it was 0)
    md = (tmp_path / "report.md").read_text()
    assert "No finished run to compare." in md and "| method |" not in md and "DataError: x" in md
    header, sep = report.table({"m": {"a": [1.0]}}, [])[0].splitlines()[:2]
    assert header.count("|") == sep.count("|")


def test_runs_made_in_different_environments_are_said_to_be(tmp_path):
    """Seed 0 of the data-sharing claim gave none 0.822 at one torch thread and 0.794 at two: a report over
    runs whose env.json differ says which fields differ; equal environments (or none recorded) add nothing."""
    env = {"git_sha": "a", "torch": "2.14.1", "torch_threads": 1, "packages": {"monai": "1.6.1", "numpy": "2.4.6"}}
    for name, changes in (("a", {}), ("b", {"git_sha": "b"}), ("c", {"torch_threads": 2})):
        run = _run(tmp_path, name, {"test/dice": 0.5})
        (run / "env.json").write_text(json.dumps({**env, **changes}))
    _run(tmp_path, "old", {"test/dice": 0.5})  # made before env.json existed
    runs = [tmp_path / n for n in ("a", "b", "old")]
    assert report.environment_differences(runs) == []  # not the git SHA: runs of one study span doc-only commits
    (tmp_path / "b" / "env.json").write_text(json.dumps({**env, "packages": {"monai": "1.5.0", "numpy": "2.4.6"}}))
    assert report.environment_differences(runs) == ["packages.monai: 1.5.0 | 1.6.1"]
    assert report.main([str(tmp_path)]) == 0
    line = next(x for x in (tmp_path / "report.md").read_text().splitlines() if "environments differ" in x)
    assert "packages.monai: 1.5.0 | 1.6.1" in line and "torch_threads: 1 | 2" in line and "numpy" not in line


def test_the_bold_best_is_the_lowest_surface_distance_and_the_highest_nsd():
    """Found by a walkthrough: the report bolded the *worst* HD95 (its lower-is-better list lacked it); one rule
    (callbacks.metric_goal) now serves the report and the W&B best-of summaries."""
    groups = {"a": {"test/hd95": [3.0, 5.0], "test/nsd": [0.9, 0.9], "test/hd95_tumor": [9.0, 9.0],
                    "fit_seconds": [5.0, 5.0]},
              "b": {"test/hd95": [9.0, 11.0], "test/nsd": [0.7, 0.7], "test/hd95_tumor": [2.0, 2.0],
                    "fit_seconds": [9.0, 9.0]}}
    md, _ = report.table(groups, ["test/hd95", "test/nsd", "test/hd95_tumor", "fit_seconds"])
    row = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()[2:]}
    assert row["a"].count("**") == 6 and row["b"].count("**") == 2  # a: hd95, nsd, seconds; b: hd95_tumor
    assert "**10.0000" not in row["b"]


def test_ties_are_all_bold_and_one_run_has_no_spread_in_the_csv():
    """Found by a walkthrough: of two methods tied at the shown digits only one was bold, and a method run once
    had ``_std`` 0.000000 in report.csv (a spread of zero, not no spread)."""
    groups = {"a": {"test/dice": [0.81234]}, "b": {"test/dice": [0.81231, 0.81237]}, "c": {"test/dice": [0.5]}}
    md, csv_text = report.table(groups, ["test/dice"])
    row = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()[2:]}
    assert "**0.8123**" in row["a"] and "**0.8123 ± 0.0000**" in row["b"] and "**" not in row["c"]
    lines = {line.split(",")[0]: line.split(",") for line in csv_text.splitlines()[1:]}
    assert lines["a"][3] == "" and lines["c"][3] == "" and float(lines["b"][3]) == pytest.approx(3e-5)


def test_the_default_columns_include_surface_metrics_and_the_best_validation_score(tmp_path):
    """A walkthrough found HD95, NSD and ``val/dice_best`` (what a sweep selects on) left out by default."""
    _run(tmp_path, "a", {"test/dice": 0.5, "test/hd95": 4.0, "test/nsd": 0.8, "val/dice_best": 0.6, "fit_seconds": 3})
    assert report.main([str(tmp_path)]) == 0
    header = next(ln for ln in (tmp_path / "report.md").read_text().splitlines() if ln.startswith("| method"))
    assert header == "| method | n | test/dice | test/hd95 | test/nsd | val/dice_best |"


def test_a_run_and_a_sweep_of_one_method_are_one_group(tmp_path):
    """Found comparing a resumed run (typed ``x=true``) with the sweep it belongs to (Hydra writes a sweep job's
    ``x=True``): two groups of one method. Overrides are compared as Hydra parses them."""
    runs = []
    for name, overrides in (("sweep0", ["x=True", "federation/strategy=fedavg", "seed=0"]),
                            ("single", ["federation/strategy=fedavg", "x=true", "seed=1"]),
                            ("other", ["x=True", "federation/strategy=fedbn", "seed=0"])):
        run = _run(tmp_path, name, {"test/dice": 0.5})
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        runs.append(run)
    labels, common = report.run_labels(runs)
    assert labels[runs[0]] == labels[runs[1]] == "federation/strategy=fedavg" and common == ["x=True"]
    from engine.continue_command import canonical_override

    assert canonical_override("~callbacks.rich_progress_bar") == "~callbacks.rich_progress_bar"
    assert canonical_override("not an override ==") == "not an override =="


def _seeded(root: Path, name: str, overrides: list[str], metrics: dict) -> Path:
    run = _run(root, name, metrics)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))  # YAML reads JSON
    return run


def test_a_metric_missing_in_some_runs_says_over_how_many_it_is_averaged(tmp_path):
    """A review: a NaN metric (written null) was averaged over the other runs under the method's full n, and
    took the bold from a method whose every run had it; a later review: with ``(n=2)`` shown, it still took it."""
    for seed, hd in ((1, 6.0), (2, 7.0), (3, None)):
        _seeded(tmp_path, f"a{seed}", ["model=a", f"seed={seed}"], {"test/dice": 0.5, "test/hd95": hd})
        _seeded(tmp_path, f"b{seed}", ["model=b", f"seed={seed}"], {"test/dice": 0.6, "test/hd95": 6.8})
    assert report.main([str(tmp_path), "--keys", "test/dice", "test/hd95"]) == 0
    md = (tmp_path / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| model=a"))
    assert "| 6.5000 ± 0.5000 (n=2) |" in row and "| 3 |" in row, row
    other = next(line for line in md.splitlines() if line.startswith("| model=b"))
    assert "**6.8000 ± 0.0000**" in other, other
    assert "(n=k): the metric is missing" in md and "not ranked for the bold" in md


def test_a_seed_rerun_with_another_logger_is_the_same_method(tmp_path):
    """A review: the grouping ignored only seed and resume, so one seed re-run with ``logger=csv`` (or another
    ``paths.*``) was a method of its own."""
    _seeded(tmp_path, "s1", ["model=a", "seed=1"], {"test/dice": 0.5})
    _seeded(tmp_path, "s2", ["model=a", "seed=2", "logger=csv", "paths.log_dir=/x"], {"test/dice": 0.7})
    groups, _ = report.collect(report.find_runs([str(tmp_path)])[0], ("test/dice",))
    assert {k: v["test/dice"] for k, v in groups.items()} == {"model=a": [0.5, 0.7]}


def test_a_glob_reports_into_its_folder_and_a_bad_out_is_one_line(tmp_path, capsys):
    """A review: ``report 'sweep/*'`` wrote into a folder literally named ``*``; an ``--out`` that is a file was
    a traceback."""
    _run(tmp_path / "sweep", "0", {"test/dice": 0.5})
    _run(tmp_path / "sweep", "1", {"test/dice": 0.6})
    assert report.main([str(tmp_path / "sweep" / "*")]) == 0
    assert (tmp_path / "sweep" / "report.md").is_file() and not (tmp_path / "sweep" / "*").exists()
    (tmp_path / "afile").write_text("")
    assert report.main([str(tmp_path / "sweep"), "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --out {tmp_path / 'afile'}: cannot write"), err


def test_columns_with_no_better_end_are_never_bold(tmp_path):
    """A review: the highest ``*_best_step`` and ``fed/dropped_total`` were bolded as if higher were better."""
    _seeded(tmp_path, "a", ["model=a"], {"val/dice_best": 0.5, "val/dice_best_step": 9, "fed/dropped_total": 3})
    _seeded(tmp_path, "b", ["model=b"], {"val/dice_best": 0.6, "val/dice_best_step": 2, "fed/dropped_total": 0})
    groups, keys = report.collect(report.find_runs([str(tmp_path)])[0], None)
    md, _ = report.table(groups, keys)
    assert md.count("**") == 2 and "**0.6000**" in md, md


def test_curves_count_epochs_and_rounds_completed():
    """A centralised run's Lightning epoch is 0-based, a federated run's round 1-based: the report drew the first
    round beside the second epoch. Both now sit at 1, 2 (epochs or rounds completed)."""
    central = read_csv_metrics(Path("c"), "epoch,step,val/dice\n0,9,0.5\n1,19,0.7\n")
    federated = read_csv_metrics(Path("f"), "epoch,round,step,val/dice\n1,1,1,0.4\n2,2,2,0.6\n")
    assert report.completed(central, "val/dice") == [(1, 0.5), (2, 0.7)]
    assert report.completed(federated, "val/dice") == [(1, 0.4), (2, 0.6)]


def test_a_failed_runs_stages_debug_modes_nan_and_matrix_goals(tmp_path, capsys):
    """A review of the reports: (1) a distillation killed after its teacher stage (``.hydra/`` and no
    metrics.json of its own) gave its ``teacher/`` as a run; (2) a ``debug=limit`` job was pooled as a seed of
    its method; (3) a NaN metric was shown and bolded; (4) an evaluation matrix of HD95 bolded the highest row."""
    killed = tmp_path / "killed"
    (killed / ".hydra").mkdir(parents=True)
    (killed / ".hydra" / "overrides.yaml").write_text("- +exp=kits_hlfd\n")
    _run(killed, "teacher", {"val/dice_best": 0.9})
    a = _run(tmp_path, "a", {"test/dice": 0.5, "test/hd95": float("nan"), "evaluation_matrix_metric": "hd95",
                             "evaluation_matrix": {"FL_global": {"site1": 3.0}}})
    b = _run(tmp_path, "b", {"test/dice": 0.4, "test/hd95": 7.0, "evaluation_matrix_metric": "hd95",
                             "evaluation_matrix": {"FL_global": {"site1": 9.0}}})
    for run, model in ((a, "unet"), (b, "dnet")):
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n")
    limit = _run(tmp_path, "limit", {"test/dice": 0.05})
    (limit / ".hydra").mkdir()
    (limit / ".hydra" / "overrides.yaml").write_text("- model=unet\n- debug=limit\n")
    (limit / "config.yaml").write_text("debug: {mode: limit}\n")
    runs, failed = report.find_runs([str(tmp_path)])
    assert runs == [a, b, limit] and failed == []
    assert report.main([str(tmp_path), "--keys", "test/dice", "test/hd95", "matrix/*"]) == 0
    md = (tmp_path / "report.md").read_text()
    unet = next(line for line in md.splitlines() if line.startswith("| model=unet"))
    dnet = next(line for line in md.splitlines() if line.startswith("| model=dnet"))
    assert "| 1 |" in unet and "0.0500" not in md and "nan" not in md.lower()  # limit left out; NaN no value
    assert "**3.0000**" in unet and "**9.0000**" not in dnet  # HD95 matrix: lower is better
    assert "**7.0000** (n=1)" not in unet and "7.0000" in dnet


def test_a_seed_counted_twice_is_said(tmp_path, capsys):
    """A review: ``report A B`` over overlapping sweeps pooled one seed twice and the std shrank silently."""
    for name in ("a", "b"):
        run = _run(tmp_path, name, {"test/dice": 0.5})
        (run / "config.yaml").write_text("seed: 1\n")
    assert report.main([str(tmp_path)]) == 0
    assert "seed(s) 1" in (tmp_path / "report.md").read_text() and "counted more than once" in capsys.readouterr().err


def test_count_columns_are_unranked_but_a_site_named_like_one_is_ranked():
    from experiments.report import unranked

    assert unranked("fed/rounds") and unranked("perf/num_parameters") and unranked("perf/forward_gflops_per_image")
    assert unranked("val/dice_best_step") and not unranked("matrix/FL_global/rounds_b")
    assert not unranked("test/dice") and not unranked("test/dice_rounds_b")
    # a review: a federated distillation's sizes and a federation's counts were bold, the slowest net "best"
    assert unranked("fed_distill/teacher/parameters") and unranked("fed/num_clients") and unranked("fed/shared_pool")
    from callbacks.metric_goal import goal
    assert goal("fed_distill/student/ms_per_volume") == "min" and goal("test/dice") == "max"


def test_init_weights_counts_are_never_bold():
    """A review: ``init_weights/unused`` and ``/kept`` (how many tensors a file left unused or fresh) were ranked
    like a score, the run whose file fitted worst in bold."""
    from experiments.report import table, unranked

    assert all(unranked(f"init_weights/{k}") for k in ("loaded", "kept", "unused"))
    md, _ = table({"a": {"init_weights/unused": [3.0], "test/dice": [0.5]},
                   "b": {"init_weights/unused": [0.0], "test/dice": [0.4]}}, ["init_weights/unused", "test/dice"])
    assert "**3.0000**" not in md and "**0.0000**" not in md and "**0.5000**" in md


def test_the_score_a_run_selects_on_is_a_default_column(tmp_path):
    """A walkthrough: a ``val/acc``-monitored classification sweep showed ``val/auc_best`` by default and not
    ``val/acc_best``, the score its sweep selects on (docs/experiments.md)."""
    for seed in (0, 1):
        run = _run(tmp_path, f"s{seed}", {"val/acc_best": 0.8 + seed / 10, "val/auc_best": 0.9, "test/acc": 0.7,
                                          "val/acc_best_step": 3})
        (run / "config.yaml").write_text("module:\n  monitor: val/acc\n")
    assert report.main([str(tmp_path)]) == 0
    header = (tmp_path / "report.md").read_text().splitlines()[0]
    assert "val/acc_best " in header and header.index("val/acc_best") < header.index("val/auc_best")
    (tmp_path / "s1" / "config.yaml").write_text("module: [1, 2]\n")  # a damaged config: no column, no traceback
    assert report.main([str(tmp_path)]) == 0


def test_a_method_is_one_group_whatever_order_its_overrides_were_typed_in(tmp_path):
    """Found by a review: sweeps typed ``data.batch_size=16 module.optimizer.lr=0.05`` and the same two keys the
    other way round were two methods of one run each."""
    runs = [_seeded(tmp_path, name, overrides, {"test/dice": 0.5}) for name, overrides in (
        ("a", ["data.batch_size=16", "module.optimizer.lr=0.05", "seed=0"]),
        ("b", ["module.optimizer.lr=0.05", "data.batch_size=16", "seed=1"]),
        ("c", ["data.batch_size=32", "module.optimizer.lr=0.01", "seed=0"]))]
    labels, _ = report.run_labels(runs)
    assert labels[runs[0]] == labels[runs[1]] == "data.batch_size=16 module.optimizer.lr=0.05", labels


def test_the_report_says_what_the_matrix_columns_hold_and_when_runs_mix_metrics(tmp_path):
    """A walkthrough: ``report --keys 'matrix/FL_global/*'`` printed numbers whose metric (Dice) nothing named, and
    runs whose matrices held Dice and HD95 shared one column without a word (bolded by one run's goal)."""
    for name, model, metric, value in (("a", "unet", "dice", 0.5), ("b", "dnet", "dice", 0.4)):
        run = _run(tmp_path, name, {"test/dice": value, "evaluation_matrix_metric": metric,
                                    "evaluation_matrix": {"FL_global": {"site1": value}}})
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n")
    assert report.main([str(tmp_path), "--keys", "matrix/FL_global/*"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "`matrix/*` cells: each run's evaluation matrix of `test/dice`." in md
    assert report.main([str(tmp_path), "--keys", "test/dice"]) == 0  # no matrix column: nothing to say
    assert "matrix/*" not in (tmp_path / "report.md").read_text()
    run = _run(tmp_path, "c", {"test/dice": 0.3, "evaluation_matrix_metric": "hd95",
                               "evaluation_matrix": {"FL_global": {"site1": 7.0}}})
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text("- model=unet3plus\n")
    assert report.main([str(tmp_path), "--keys", "matrix/FL_global/*"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "**The runs' evaluation matrices hold different metrics** (`test/dice`: a, b; `test/hd95`: c)" in md
