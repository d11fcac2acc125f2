"""Classification task names: MedMNIST's four task types (paper 002, Table 1; ``medmnist/info.py``) and the
aliases accepted for them (MedMNIST's own ``binary-class`` and ``multi-label, binary-class`` among them).
Here, below the datamodules, so the classification module and the datamodules share one definition."""
from __future__ import annotations

__all__ = ["TASKS", "normalize_task"]

TASKS = ("multi-class", "binary", "multi-label", "ordinal-regression")
_TASK_ALIASES = {
    "binary-class": "binary",
    "multi-label, binary-class": "multi-label",
    "multilabel": "multi-label",
    "multiclass": "multi-class",
    "ordinal": "ordinal-regression",
}


def normalize_task(task: str) -> str:
    """Canonical task name (one of :data:`TASKS`); ``ValueError`` naming the valid ones otherwise."""
    name = _TASK_ALIASES.get(str(task).strip().lower(), str(task).strip().lower())
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return name
