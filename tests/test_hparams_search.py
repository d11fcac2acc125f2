"""`hparams_search=<name>`: Hydra's Optuna sweeper maximising a validation metric, end to end."""
import json
import subprocess
import sys

import pytest
import yaml

from engine.objective import objective_key, optimized_value
from lightning_modules.errors import ConfigError
from tests.hydra_helpers import compose_run

TINY = ["+exp=lits_dnet", "model.width=4", "data.image_size=32", "data.batch_size=8", "data.synthetic.n_cases=6",
        "data.synthetic.shape=[48,48,10]", "trainer.max_epochs=2", "logger=csv"]


def test_lits_dnet_optuna_two_trials(tmp_path):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "-m", *TINY, "hparams_search=lits_dnet_optuna",
         "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", f"paths.data_dir={tmp_path / 'data'}"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("metrics.json"))
    assert len(runs) == 2
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    values = [json.loads((r / "metrics.json").read_text())["val/dice_best"] for r in runs]
    assert best["best_value"] == pytest.approx(max(values), abs=1e-6)  # maximised, on validation
    assert {"module.optimizer.lr", "module.loss.aux_weight"} <= set(best["best_params"])
    for r in runs:  # the trial's sampled values reached the job
        overrides = yaml.safe_load((r / ".hydra" / "overrides.yaml").read_text())
        assert any(o.startswith("module.optimizer.lr=") for o in overrides)


def test_objective_is_a_validation_metric(tmp_path):
    cfg = compose_run(["+exp=fed_lits_dnet", "hparams_search=fed_lits_dnet_optuna"], tmp_path)
    assert cfg.optimized_metric == "val/dice_best"
    assert optimized_value(cfg, {"val/dice_best": 0.7, "test/dice": 0.9}) == 0.7
    with pytest.raises(ConfigError, match="optimized_metric=val/dice_best"):
        optimized_value(cfg, {"test/dice": 0.9})
    plain = compose_run(["+exp=lits_dnet"], tmp_path)
    assert objective_key(plain) == "val/dice_best" and optimized_value(plain, {}) is None


def test_a_search_space_optuna_refuses_is_one_line(tmp_path):
    """Found by a walkthrough: a log interval from 0 was Optuna's traceback; now the override and its reason,
    exit 2, no trial run; and no alembic "setup plugin" lines around it."""
    from tests.cli import run_in_process

    sweep = tmp_path / "sweep"
    proc = run_in_process("experiments.run", [*TINY, "hparams_search=lits_dnet_optuna", f"hydra.sweep.dir={sweep}",
                                              "module.optimizer.lr=tag(log, interval(0, 0.1))"], tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "alembic" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'module.optimizer.lr=tag(log, interval(0, 0.1))'" in lines[0], proc.stderr
    assert "low" in lines[0] and not list(sweep.rglob("metrics.json"))


def _search(tmp_path, sweep, *args):
    """``python -m experiments.run`` of an Optuna search (in this process, tests/cli.py), its sweep in ``sweep``."""
    from tests.cli import run_in_process

    return run_in_process("experiments.run", ["hparams_search=lits_dnet_optuna", f"hydra.sweep.dir={sweep}", *args],
                          tmp_path)


def test_a_study_in_sqlite_storage_records_its_trials_and_a_new_submission_continues_it(tmp_path):
    """Found by a walkthrough: ``hydra.sweeper.storage=sqlite:///...`` (docs/experiments.md: "study kept in
    SQLite so a new submission continues it") failed at once with an AssertionError in Optuna 2's storage under
    SQLAlchemy 2 (the schema stamp was never committed). Now the study's trials are in the database, and a
    second command with the same storage and study name adds its trials to them."""
    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    common = [*TINY, "debug=fdr", "hydra.sweeper.n_trials=1", f"hydra.sweeper.storage={url}",
              f"paths.data_dir={tmp_path / 'data'}"]
    for n, sweep in enumerate([tmp_path / "sweep1", tmp_path / "sweep2"], start=1):
        proc = _search(tmp_path, sweep, *common)
        assert proc.returncode == 0, proc.stderr[-3000:]
        trials = optuna.load_study(study_name="lits_dnet", storage=url).trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * n
        values = [json.loads(p.read_text())["val/dice_best"] for p in sweep.rglob("metrics.json")]
        assert len(values) == 1 and trials[-1].value == pytest.approx(values[0], abs=1e-6)
        assert set(trials[-1].params) == {"module.optimizer.lr", "module.loss.aux_weight"}  # model.width=4: fixed
        best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
        assert best["best_value"] == pytest.approx(max(t.value for t in trials), abs=1e-6)  # over the whole study


def test_a_search_whose_trials_all_fail_ends_with_one_line_and_exit_2(tmp_path):
    """Found by a walkthrough: when every trial failed on bad input (each wrote its failed.json), Optuna's
    ``ValueError: No trials are completed yet.`` ended the search with a traceback and exit 1; now the line a
    plain sweep with failed jobs ends with, exit 2."""
    sweep = tmp_path / "sweep"
    proc = _search(tmp_path, sweep, "+exp=lits_dnet", "debug=fdr", "data=lits", f"data.root={tmp_path / 'none'}",
                   "hydra.sweeper.n_trials=2", "logger=csv")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "No trials are completed" not in proc.stderr
    jobs = sorted(str(p.parent.relative_to(sweep)) for p in sweep.rglob("failed.json"))
    assert len(jobs) == 2
    assert proc.stderr.strip().splitlines()[-1] == (f"error: 2 of 2 sweep jobs failed (each says why in its "
                                                    f"failed.json and above): {', '.join(jobs)}")


def test_a_trial_that_crashes_is_counted_as_failed(tmp_path, monkeypatch):
    """A review: a trial raising an error that is no bad input (CUDA out of memory) was marked FAIL by the Optuna
    sweeper, which goes on (``max_failure_rate: 1.0``); it left no failed.json, so the search exited 0 and the report
    took the trial for an unfinished one. Now its folder says why and the search ends with exit 2 naming it."""
    import engine.fit

    real, calls = engine.fit.train_and_test, []

    def first_crashes(cfg):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(cfg)

    monkeypatch.setattr(engine.fit, "train_and_test", first_crashes)
    sweep = tmp_path / "sweep"
    proc = _search(tmp_path, sweep, *TINY, "debug=fdr", "hydra.sweeper.n_trials=2", f"paths.data_dir={tmp_path / 'd'}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    (failed,) = sweep.rglob("failed.json")
    assert json.loads(failed.read_text())["error"].startswith("RuntimeError: CUDA out of memory")
    assert len(list(sweep.rglob("metrics.json"))) == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 of 2 sweep jobs failed")


def test_a_misspelt_optuna_direction_is_one_line(tmp_path):
    """Found by a walkthrough: ``hydra.sweeper.direction=maximise`` was Optuna's ValueError traceback, exit 1."""
    sweep = tmp_path / "sweep"
    proc = _search(tmp_path, sweep, *TINY, "hydra.sweeper.direction=maximise")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["error: hydra.sweeper.direction=maximise is not an Optuna direction: use minimize or maximize "
                     "(a list of them for several objectives)"], proc.stderr[-3000:]
    assert not sweep.exists()


@pytest.mark.parametrize("mode", ["search", "run"])
def test_a_test_metric_as_objective_is_refused_before_any_trial(tmp_path, mode):
    """Found by a walkthrough: ``optimized_metric=test/dice`` ran the search and selected on the test set
    (docs and engine/objective.py: never a test metric). Now one line naming it, exit 2, nothing trained."""
    from tests.cli import run_in_process

    out = tmp_path / "out"
    if mode == "search":
        proc = _search(tmp_path, out, *TINY, "optimized_metric=test/dice")
    else:
        proc = run_in_process("experiments.run", [*TINY, "optimized_metric=test/dice", f"hydra.run.dir={out}"],
                              tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: optimized_metric=test/dice is a test metric"), lines
    assert not out.exists()


def test_optimized_value_refuses_a_test_metric(tmp_path):
    from engine.objective import test_objective_line

    cfg = compose_run(["+exp=lits_dnet", "hparams_search=lits_dnet_optuna"], tmp_path)
    assert test_objective_line(cfg) is None
    cfg.optimized_metric = "test/dice"
    with pytest.raises(ConfigError, match="optimized_metric=test/dice is a test metric"):
        optimized_value(cfg, {"test/dice": 0.9, "val/dice_best": 0.7})


def test_a_direction_against_the_objectives_goal_is_said(tmp_path, caplog):
    """A review: ``optimized_metric=val/loss_best`` with the shipped ``direction: maximize`` selected the worst
    trials without a word. The direction is compared with the metric's goal (by name): a warning."""
    import logging

    from experiments.optuna_checks import sweep_config_line

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from engine.resolvers import register_resolvers
    from tests.hydra_helpers import CONFIG_DIR

    def with_sweeper(*overrides):
        register_resolvers()
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("train", overrides=["+exp=lits_dnet", "hparams_search=lits_dnet_optuna", *overrides],
                           return_hydra_config=True)

    with caplog.at_level(logging.WARNING, logger="experiments.optuna_checks"):
        assert sweep_config_line(with_sweeper("optimized_metric=val/loss_best")) is None
    assert "hydra.sweeper.direction=maximize but optimized_metric=val/loss_best improves the other way" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="experiments.optuna_checks"):
        sweep_config_line(with_sweeper())
        sweep_config_line(with_sweeper("optimized_metric=val/loss_best", "hydra.sweeper.direction=minimize"))
    assert "improves the other way" not in caplog.text
