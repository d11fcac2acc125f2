"""Sweeps through the submitit launcher, the offline report, W&B run contents and resume."""
import csv
import json
import subprocess
import sys

import pytest
import pytorch_lightning as pl

from experiments import report
from experiments.run import dispatch
from lightning_modules.checkpoints import load_checkpoint
from tests.hydra_helpers import compose_run
from tests.wandb_offline import read_run

TINY = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "data.batch_size=8",
        "data.synthetic.n_cases=6", "data.synthetic.shape=[48,48,10]", "trainer.max_epochs=1"]


def test_submitit_local_sweep_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "-m", "hydra/launcher=submitit_local", *TINY, "logger=csv",
         "seed=1,2", f"hydra.sweep.dir={sweep}", f"paths.data_dir={tmp_path / 'data'}"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert len(runs) == 2, [p.read_text() for p in sweep.rglob("failed.json")]
    assert report.main([str(sweep)]) == 0
    rows = list(csv.DictReader((sweep / "report.csv").read_text().splitlines()))
    assert len(rows) == 1  # one method: the two seeds are grouped
    dice = [json.loads((r / "metrics.json").read_text())["test/dice"] for r in runs]
    mean = float(rows[0]["test/dice_mean"])
    assert mean == pytest.approx(sum(dice) / 2, abs=1e-5)


def test_report_lists_failures_and_empty_dir(tmp_path, capsys):
    good, bad = tmp_path / "m" / "0", tmp_path / "m" / "1"
    good.mkdir(parents=True), bad.mkdir(parents=True)
    (good / "metrics.json").write_text(json.dumps({"test/dice": 0.5}))
    (bad / "failed.json").write_text(json.dumps({"error": "DataError: data.root /x does not exist"}))
    assert report.main([str(tmp_path / "m")]) == 0
    text = (tmp_path / "m" / "report.md").read_text()
    assert "0.5000" in text and "data.root /x does not exist" in text
    assert report.main([str(tmp_path / "empty")]) == 2


def test_wandb_offline_run_has_config_and_summary(tmp_path):
    cfg = compose_run(TINY, tmp_path)
    dispatch(cfg)
    run = tmp_path / "run"
    run_id = (run / "wandb_id.txt").read_text().strip()
    wandb_dirs = list((run / "wandb").glob(f"offline-run-*-{run_id}"))
    assert wandb_dirs, list((run / "wandb").iterdir())
    logged = read_run(run)  # waits for wandb-core to finish writing the offline log
    for key in ("test/dice", "perf/train_images_per_s"):
        assert key in logged["summary"], sorted(logged["summary"])
    assert "git_sha" in logged["config"], sorted(logged["config"])


def test_resume_continues_from_last_checkpoint(tmp_path, monkeypatch):
    cfg = compose_run([*TINY, "logger=csv", "test=false"], tmp_path)
    dispatch(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    step1 = load_checkpoint(last)["global_step"]
    seen = {}
    original_fit = pl.Trainer.fit

    def fit(self, *args, ckpt_path=None, **kwargs):
        out = original_fit(self, *args, ckpt_path=ckpt_path, **kwargs)
        seen.update(ckpt_path=ckpt_path, start_epoch=self.fit_loop.epoch_progress.current.completed)
        return out

    monkeypatch.setattr(pl.Trainer, "fit", fit)
    cfg2 = compose_run([*TINY, "logger=csv", "test=false", "resume=true", "trainer.max_epochs=2"], tmp_path)
    dispatch(cfg2)
    assert seen["ckpt_path"] == str(last)
    assert load_checkpoint(last)["global_step"] == 2 * step1


def test_report_labels_methods_by_the_overrides_that_differ(tmp_path):
    from experiments.report import run_labels

    runs = []
    for i, (model, seed) in enumerate([("dnet", 1), ("dnet", 2), ("unet", 1)]):
        run = tmp_path / f"{i}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(
            f"- +exp=lits_dnet\n- data=liver_slices\n- model={model}\n- seed={seed}\n")
        runs.append(run)
    labels, common = run_labels(runs)
    assert [labels[r] for r in runs] == ["model=dnet", "model=dnet", "model=unet"]
    assert common == ["+exp=lits_dnet", "data=liver_slices"]
    labels, common = run_labels(runs[:2])  # one method over seeds
    assert set(labels.values()) == {"+exp=lits_dnet data=liver_slices model=dnet"} and common == []
    # found by a walkthrough: a sweep whose other job failed labelled the finished one by its whole command
    labels, common = run_labels(runs[2:], siblings=runs[:1])
    assert labels == {runs[2]: "model=unet"} and common == ["+exp=lits_dnet", "data=liver_slices"]


def test_report_gives_the_evaluation_matrix_over_seeds_per_strategy(tmp_path):
    """``--keys 'matrix/FL_global/*'``: the matrix row of each run, mean ± std per strategy over seeds."""
    from experiments.report import main

    values = {("fedavg", 0): (0.70, 0.20), ("fedavg", 1): (0.80, 0.30), ("fedbn", 0): (0.85, 0.90),
              ("fedbn", 1): (0.87, 0.88)}
    for i, ((strategy, seed), (a, b)) in enumerate(values.items()):
        run = tmp_path / f"{i}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- +exp=fed_lits_dnet\n- federation/strategy={strategy}\n"
                                                       f"- seed={seed}\n")
        matrix = {"FL_global": {"site_a": a, "site_b": b}, "site_a_FL_local": {"site_a": 0.9, "site_b": 0.1}}
        (run / "metrics.json").write_text(json.dumps({"test/dice": 0.5, "debug": False, "evaluation_matrix": matrix}))
    assert main([str(tmp_path), "--keys", "matrix/FL_global/*", "test/dice"]) == 0
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [r["method"] for r in rows] == ["federation/strategy=fedavg", "federation/strategy=fedbn"]
    assert list(rows[0])[2:] == ["matrix/FL_global/site_a_mean", "matrix/FL_global/site_a_std",
                                 "matrix/FL_global/site_b_mean", "matrix/FL_global/site_b_std",
                                 "test/dice_mean", "test/dice_std"]
    assert float(rows[0]["matrix/FL_global/site_b_mean"]) == pytest.approx(0.25)
    assert float(rows[1]["matrix/FL_global/site_b_mean"]) == pytest.approx(0.89)
    assert float(rows[1]["matrix/FL_global/site_a_std"]) == pytest.approx(0.01)
    assert "**0.8900 ± 0.0100**" in (tmp_path / "report.md").read_text()  # FedBN's site_b: the best in its column
    # found by a walkthrough: which std was not said (with 2 seeds the sample std is √2 larger)
    assert "population std, numpy's ddof=0" in (tmp_path / "report.md").read_text()


def test_the_best_is_bold_within_each_experiment_not_across_them(tmp_path):
    """A report over two experiments' sweeps bolded one liver model as the best Dice of the kidney rows too
    (a Dice on one task is no rival to one on another): the best is now bold within each ``+exp``/``data``."""
    from experiments.report import main

    scores = {("lits_dnet", "dnet"): 0.9, ("lits_dnet", "unet"): 0.8, ("kits_hlfd", "dnet"): 0.3,
              ("kits_hlfd", "unet"): 0.4}
    for i, ((exp, model), dice) in enumerate(scores.items()):
        run = tmp_path / f"{i}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- +exp={exp}\n- model={model}\n- seed=0\n")
        (run / "metrics.json").write_text(json.dumps({"test/dice": dice, "debug": False}))
    assert main([str(tmp_path), "--keys", "test/dice"]) == 0
    md = (tmp_path / "report.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| +exp")}
    assert "**0.9000**" in rows["+exp=lits_dnet model=dnet"] and "**0.4000**" in rows["+exp=kits_hlfd model=unet"]
    assert "**" not in rows["+exp=lits_dnet model=unet"] + rows["+exp=kits_hlfd model=dnet"]
    assert list(rows) == ["+exp=kits_hlfd model=dnet", "+exp=kits_hlfd model=unet", "+exp=lits_dnet model=dnet",
                          "+exp=lits_dnet model=unet"]  # grouped by experiment
    assert "bold within each, not across" in md
