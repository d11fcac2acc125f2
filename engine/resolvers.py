"""The OmegaConf resolvers the shipped configs use (``${fedmed_goal:...}``, ``${medmnist:...}``), registered by
one explicit call from each entry that composes a config or builds from one (``experiments.run``, the builders a
federation's workers call, the tests' composer): no module registers one as a side effect of being imported."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from omegaconf import OmegaConf


def library_resolvers() -> dict[str, Callable[..., Any]]:
    """The library's resolvers by name: a checkpoint's ``mode`` follows its monitor; MedMNIST's table values."""
    from callbacks.metric_goal import goal
    from datamodules.medmnist import table_value

    return {"fedmed_goal": goal, "medmnist": table_value}


def register_resolvers(extra: Mapping[str, Callable[..., Any]] | None = None) -> None:
    """Register :func:`library_resolvers` and ``extra`` (an entry's own, such as the run folder's names) where
    not yet registered; a second call is a no-op."""
    for name, fn in {**library_resolvers(), **(extra or {})}.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
