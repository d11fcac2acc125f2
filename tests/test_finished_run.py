"""When a resumed run counts as finished (engine.finished_run): nothing is trained or tested again then."""
from __future__ import annotations

import json
import os

import yaml
from omegaconf import OmegaConf

from engine.finished_run import finished_line, finished_metrics


def _run(tmp_path, epochs: int, arms=("none",)):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"trainer": {"max_epochs": epochs},
                                                          "fed_distill": {"arms": list(arms)}}))
    (tmp_path / "metrics.json").write_text(json.dumps({"test/dice": 0.5}))
    return tmp_path


def _cfg(epochs: int, arms=("none",), **extra):
    return OmegaConf.create({"resume": True, "trainer": {"max_epochs": epochs}, "fed_distill": {"arms": list(arms)},
                             **extra})


def _age(path, seconds: float) -> None:
    """``path`` written ``seconds`` ago."""
    t = path.stat().st_mtime - seconds
    os.utime(path, (t, t))


def test_a_finished_run_resumed_as_it_ran_is_finished_and_one_that_does_more_is_not(tmp_path):
    run = _run(tmp_path, 5)
    _age(run / "config.yaml", 10)
    assert finished_metrics(run, _cfg(5)) == {"test/dice": 0.5}
    assert finished_metrics(run, _cfg(10)) is None  # trains on
    assert finished_metrics(run, _cfg(5, arms=("none", "hlfd"))) is None  # a review: an arm added was a no-op
    assert finished_metrics(run, _cfg(5, train=False)) is None  # tests
    assert finished_metrics(run, OmegaConf.create({"resume": None})) is None


def test_a_resume_that_trained_on_and_stopped_is_not_finished(tmp_path):
    """A review: resumed with ``trainer.max_epochs=10`` (config.yaml rewritten) and stopped, a run kept its 5-epoch
    metrics.json and was then taken for finished; its metrics.json is older than the config.yaml of its last start."""
    run = _run(tmp_path, 10)
    _age(run / "metrics.json", 10)
    assert finished_metrics(run, _cfg(10)) is None


def test_a_failed_json_newer_than_the_results_is_a_failure_and_an_older_one_is_not(tmp_path):
    run = _run(tmp_path, 5)
    _age(run / "config.yaml", 20)
    (run / "failed.json").write_text("{}")
    assert finished_metrics(run, _cfg(5)) is None  # an Optuna trial refused for its objective after it tested
    _age(run / "failed.json", 10)  # a failure the run was resumed past
    assert finished_metrics(run, _cfg(5)) == {"test/dice": 0.5}


def test_the_line_says_how_to_test_the_best_weights_again(tmp_path):
    """A review: ``resume=... train=false`` tests last.ckpt, where the run tested its best."""
    assert "train=false" not in finished_line(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"")
    line = finished_line(tmp_path)
    assert f"train=false ckpt_path={tmp_path / 'checkpoints' / 'best.ckpt'} without resume=" in line
