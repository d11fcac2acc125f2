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
