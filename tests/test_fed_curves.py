"""Per-round federation curves: the same setting at several seeds becomes a mean line with a ± std band
(paper 000 Figs. 2-5 with seed bands), and the per-round statistics are written beside the PNG."""
import csv

import pytest

from federation.curves import compare_runs, seed_band


def _run(root, name, mode, accs, overrides=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"federation:\n  strategy:\n    mode: {mode}\n")
    if overrides is not None:
        (d / ".hydra").mkdir()
        (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    with open(d / "rounds.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["round", "test/acc", "test/loss"])
        for r, a in enumerate(accs, 1):
            w.writerow([r, a, 1 - a])


def test_seed_band_mean_std_and_missing_rounds():
    runs = [[{"round": 1, "a": 0.2}, {"round": 2, "a": 0.6}], [{"round": 1, "a": 0.4}]]
    x, mean, std, n = seed_band(runs, "a")
    assert x == [1, 2] and mean == pytest.approx([0.3, 0.6]) and std == pytest.approx([0.1, 0.0]) and n == [2, 1]


def test_compare_runs_groups_seeds_into_bands(tmp_path):
    _run(tmp_path, "0", "part", [0.5, 0.9])
    _run(tmp_path, "1", "part", [0.7, 0.9])
    _run(tmp_path, "2", "none", [0.1, 0.3])
    png = compare_runs(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(tmp_path / "fed_compare.csv")))
    part = [r for r in rows if r["label"] == "part"]
    assert [(r["round"], r["test/acc mean"], r["test/acc std"], r["n"]) for r in part] == [
        ("1", "0.6000", "0.1000", "2"), ("2", "0.9000", "0.0000", "2")]
    assert [r["n"] for r in rows if r["label"] == "none"] == ["1", "1"]


def test_runs_of_different_settings_are_not_pooled_as_seeds(tmp_path):
    """A walkthrough: a sweep over mode and partition.k drew "none (n=2)", averaging k=1 with k=2; the other
    overrides that differ (not the seed, not the label's own key) now name the band."""
    for name, (mode, k, seed, acc) in {"0": ("none", 1, 0, 0.1), "1": ("none", 2, 0, 0.5), "2": ("none", 1, 1, 0.3),
                                       "3": ("part", 1, 0, 0.7)}.items():
        _run(tmp_path, name, mode, [acc], [f"federation.strategy.mode={mode}", f"federation.partition.k={k}",
                                           f"seed={seed}", "+exp=fed_digits_datashare"])
    compare_runs(tmp_path)
    rows = {r["label"]: r for r in csv.DictReader(open(tmp_path / "fed_compare.csv"))}
    assert set(rows) == {"none (federation.partition.k=1)", "none (federation.partition.k=2)",
                         "part (federation.partition.k=1)"}
    assert rows["none (federation.partition.k=1)"]["n"] == "2" and rows["none (federation.partition.k=2)"]["n"] == "1"


def test_a_run_typed_true_and_its_sweeps_true_are_one_band(tmp_path):
    """A sweep job records ``x=True`` where a run typed ``x=true``: compared as typed, they drew two bands."""
    _run(tmp_path, "0", "part", [0.5], ["federation.strategy.mode=part", "federation.evaluation_matrix=True", "seed=0"])
    _run(tmp_path, "1", "part", [0.7], ["federation.strategy.mode=part", "federation.evaluation_matrix=true", "seed=1"])
    compare_runs(tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "fed_compare.csv")))
    assert [(r["label"], r["n"]) for r in rows] == [("part", "2")]


def test_runs_without_the_label_key_are_named_by_what_differs(tmp_path):
    """A walkthrough's strategy sweep (``federation/strategy=fedavg,datashare``) drew
    ``0_small_cnn_s42_strategy-fedavg (federation/strategy=fedavg)`` beside ``part (federation/strategy=datashare)``:
    FedAvg has no ``mode``, so its folder name stood in. A run without the key is named by what differs."""
    _run(tmp_path, "0_small_cnn_s42_strategy-fedavg", "part", [0.5], ["federation/strategy=fedavg", "seed=0"])
    (tmp_path / "0_small_cnn_s42_strategy-fedavg" / "config.yaml").write_text("federation:\n  strategy: {}\n")
    _run(tmp_path, "1", "part", [0.7], ["federation/strategy=datashare", "seed=0"])
    compare_runs(tmp_path)
    labels = [r["label"] for r in csv.DictReader(open(tmp_path / "fed_compare.csv"))]
    assert sorted(labels) == ["federation/strategy=fedavg", "part (federation/strategy=datashare)"]


def test_failed_and_debug_runs_are_left_out_of_the_bands(tmp_path, capsys):
    """A review: a failed seed's two rounds were averaged into its band (n=3, mean 0.37 instead of 0.51)."""
    import json

    _run(tmp_path, "0", "part", [0.5, 0.9])
    _run(tmp_path, "1", "part", [0.7, 0.9])
    _run(tmp_path, "2", "part", [0.0, 0.0])
    (tmp_path / "2" / "failed.json").write_text("{}")
    _run(tmp_path, "3", "part", [0.1, 0.1])
    (tmp_path / "3" / "metrics.json").write_text(json.dumps({"debug": True}))
    compare_runs(tmp_path)
    part = [r for r in csv.DictReader(open(tmp_path / "fed_compare.csv")) if r["label"] == "part"]
    assert [(r["test/acc mean"], r["n"]) for r in part] == [("0.6000", "2"), ("0.9000", "2")]
    assert "2 run(s) left out: failed or debug" in capsys.readouterr().err


def test_a_resumed_federation_keeps_its_wandb_bests_from_before_the_resume():
    """A review: the W&B bests live on the logger, so after a resume ``val/dice_best`` covered only the rounds
    since (0.6 at round 3 where metrics.json said 0.9 at round 1). The resumed server replays its history."""
    from types import SimpleNamespace

    from federation.records import log_metrics, replay_bests

    class WandbLogger:  # what track_best recognises by name
        def __init__(self):
            self.experiment = SimpleNamespace(define_metric=lambda *a, **k: None, summary={})

        def log_metrics(self, metrics, step):
            pass

    lg = WandbLogger()
    replay_bests([lg], [{"round": 1, "fed/round/server_val/dice": 0.9}, {"round": 2, "fed/round/server_val/dice": 0.5}])
    log_metrics([lg], {"round": 3, "fed/round/server_val/dice": 0.6}, step=3)
    assert lg.experiment.summary["val/dice_best"] == 0.9 and lg.experiment.summary["val/dice_best_step"] == 1


def test_a_failed_run_resumed_to_its_end_is_in_the_bands_and_a_running_debug_run_is_not(tmp_path):
    """A later review: ``failed.json`` stays after a resume that finished the run, which the bands then left out
    (``report`` counts it); and a debug federation still running (no metrics.json) was pooled."""
    import json

    _run(tmp_path, "0", "part", [0.5, 0.9])
    _run(tmp_path, "1", "part", [0.7, 0.9])
    (tmp_path / "1" / "failed.json").write_text("{}")
    (tmp_path / "1" / "metrics.json").write_text(json.dumps({"test/acc": 0.9}))  # resumed to its end
    _run(tmp_path, "2", "part", [0.0])
    (tmp_path / "2" / "config.yaml").write_text("federation: {strategy: {mode: part}}\ndebug: {mode: limit}\n")
    compare_runs(tmp_path)
    part = [r for r in csv.DictReader(open(tmp_path / "fed_compare.csv")) if r["label"] == "part"]
    assert [(r["test/acc mean"], r["n"]) for r in part] == [("0.6000", "2"), ("0.9000", "2")]


def test_each_label_has_one_colour_for_its_test_and_server_validation_lines(tmp_path, monkeypatch):
    """Found by a walkthrough: the documented 3 modes x 2 k sweep drew 12 lines from a 10-colour cycle, so one
    setting's lines shared colours with another's and nothing tied a setting's two lines together."""
    from matplotlib.axes import Axes

    from federation.curves import plot_rounds

    drawn: list[tuple[str, object]] = []
    real = Axes.plot

    def spy(self, *args, **kw):
        drawn.append((kw.get("label"), kw.get("color")))
        return real(self, *args, **kw)

    monkeypatch.setattr(Axes, "plot", spy)
    rows = [{"round": r, "test/acc": 0.5 + r / 10, "server_val/acc": 0.4 + r / 10, "test/loss": 1.0,
             "server_val/loss": 1.1} for r in range(3)]
    plot_rounds({f"setting {i}": rows for i in range(6)}, tmp_path / "c.png", metric="acc")
    by_label: dict[str, set] = {}
    for label, color in drawn:
        by_label.setdefault(label.split(" (")[0], set()).add(tuple(color))
    assert len(by_label) == 6 and all(len(c) == 1 for c in by_label.values())  # test and server val alike
    assert len({next(iter(c)) for c in by_label.values()}) == 6                  # and no two settings alike


def test_a_federation_the_server_cannot_score_is_drawn_from_the_sites_local_validation(tmp_path):
    """A Flower walkthrough: FedBN with each site's batch norm at its own node (the server scores nothing) drew an
    empty fed_curves.png. Its curves are the sites' mean local validation then, dotted; a federation the server
    scores keeps its test and server-validation curves only."""
    from federation.curves import curve_columns, plot_rounds

    unscored = [{"round": r, "local_val/dice": 0.1 * r, "local_val/loss": 1.0 / r} for r in (1, 2)]
    assert curve_columns([unscored], "test/dice") == [("local_val/dice", ":", "sites' local val")]
    scored = [{**row, "test/dice": 0.5, "server_val/dice": 0.4} for row in unscored]
    assert [c[0] for c in curve_columns([scored], "test/dice")] == ["test/dice", "server_val/dice"]
    assert curve_columns([[{"round": 1}]], "test/dice") == []
    assert plot_rounds({"fedbn": unscored}, tmp_path / "c.png", "dice").stat().st_size > 0
