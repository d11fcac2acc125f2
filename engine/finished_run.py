"""A resume of a run that has finished: nothing is trained or tested again (a walkthrough repeated a stopped run's
"continue with" command after it had finished, and the run was tested again, its ``metrics.json`` rewritten without
the last epoch's ``val/*`` and its CSV log without the ``perf/*`` row; a SLURM requeue of a finished job did the
same)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from engine.run_files import run_json
from engine.run_match import differences, saved_config

#: the settings that train a finished run longer when a resume raises them (anything else is as the run had it,
#: or refused by the resume's own checks)
LENGTH = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.min_epochs", "federation.rounds",
          "fed_distill.student_rounds", "distill.teacher.max_epochs")


def finished_metrics(out: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The ``metrics.json`` of the finished run in ``out`` when ``cfg`` resumes it as it ran (every :data:`LENGTH`
    setting as its ``config.yaml`` says; ``train=false``, which tests it again, is not such a resume); else None."""
    if not cfg.get("resume") or cfg.get("train", True) is False:
        return None
    metrics = run_json(out / "metrics.json", out)  # read as data, bounded, no link followed
    if not isinstance(metrics, dict) or metrics.get("fed_distill/pending") or _failed_since(out):
        return None
    saved = saved_config(out)
    if saved is None or differences(saved, cfg, LENGTH):
        return None
    return metrics


def _failed_since(out: Path) -> bool:
    """Whether the run's ``failed.json`` is at least as new as its ``metrics.json`` (an Optuna trial refused for its
    objective after testing); an older one is a failure the run was resumed past (as the report judges it)."""
    try:
        return (out / "failed.json").stat().st_mtime_ns >= (out / "metrics.json").stat().st_mtime_ns
    except OSError:
        return False


def finished_line(out: Path) -> str:
    """What the console says of a finished run resumed: nothing to do, and how to do more."""
    return (f"{out} has finished (its metrics.json): nothing to continue. Raise trainer.max_epochs (a federation's "
            f"federation.rounds) to train it longer, or add train=false to test it again")
