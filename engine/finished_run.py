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
#: what else a resume may add to a finished run: a federated distillation's arms and evaluation (its finished
#: stages are reused, the new ones trained; a review found those resumes turned into no-ops)
MORE_WORK = ("fed_distill.arms", "fed_distill.evaluate")


def holds_result(out: Path) -> bool:
    """Whether ``out``'s ``metrics.json`` was written after its ``config.yaml``, which every start that trains or
    tests rewrites: the run finished since it last started. A review: a finished run resumed to train longer and
    stopped there kept its first ``metrics.json``, and was then taken for finished."""
    return _newer(out / "metrics.json", out / "config.yaml")


def finished_metrics(out: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The ``metrics.json`` of the finished run in ``out`` (:func:`holds_result`, no newer ``failed.json``) when
    ``cfg`` resumes it as it ran (every :data:`LENGTH` and :data:`MORE_WORK` setting as its ``config.yaml`` says;
    ``train=false``, which tests, is not such a resume); else None."""
    if not cfg.get("resume") or cfg.get("train", True) is False or not holds_result(out):
        return None
    metrics = run_json(out / "metrics.json", out)  # read as data, bounded, no link followed
    if not isinstance(metrics, dict) or metrics.get("fed_distill/pending") or failed_last(out):
        return None  # an Optuna trial refused for its objective after it tested: failed, not finished
    saved = saved_config(out)
    if saved is None or differences(saved, cfg, LENGTH + MORE_WORK):
        return None
    return metrics


def failed_last(d: Path) -> bool:
    """Whether ``d``'s ``failed.json`` is its last word: one at least as new as its ``metrics.json`` (or one with no
    ``metrics.json``). A walkthrough: an Optuna trial tested, wrote ``metrics.json``, then failed on an
    ``optimized_metric`` it lacks and wrote ``failed.json``; the report showed it as a finished row while the sweep
    said the job failed. A failed run resumed to its end keeps its older ``failed.json``, which is stale. The one
    rule for the report, the distillation table and a finished run's resume."""
    if not (d / "failed.json").is_file():
        return False
    return not (d / "metrics.json").is_file() or _newer(d / "failed.json", d / "metrics.json")


def _newer(a: Path, b: Path) -> bool:
    """Whether file ``a`` is at least as new as file ``b`` (False when either is missing)."""
    try:
        return a.stat().st_mtime_ns >= b.stat().st_mtime_ns
    except OSError:
        return False


def finished_line(out: Path) -> str:
    """What the console says of a finished run resumed: nothing to do, and how to do more. Not ``resume=...
    train=false``, which would test ``last.ckpt`` where the run tested its best (a review)."""
    best = out / "checkpoints" / "best.ckpt"
    again = (f"; to test it again, train=false ckpt_path={best} without resume= (a new run folder)"
             if best.is_file() else "")
    return (f"{out} has finished (its metrics.json): nothing to continue. To train it longer, raise "
            f"trainer.max_epochs (a federation: federation.rounds){again}")
