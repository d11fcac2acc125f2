"""The ``debug=`` modes (lightning-hydra-template's ``debug/`` group) applied to a composed config.

``+exp=<name>`` appends the experiment after every entry of ``train.yaml``'s defaults list, so a debug
config selected there could not override what the experiment sets (``trainer.max_epochs: 6``). The debug
configs therefore put their settings under ``debug:`` and :func:`apply_debug` writes them into the config
after composition: ``trainer.*`` always; other keys (``federation.rounds``, ``distill.teacher.max_epochs``,
``data.num_workers``) only where the run has them, so one mode fits centralised, distillation and federated
runs. A key given on the command line (``trainer.max_epochs=3``) keeps the user's value.

``++trainer.fast_dev_run=true`` alone (no ``debug=``) is one batch per fit, but a federation's rounds are ours,
not Lightning's: :func:`fast_dev_rounds` makes it one round too (as ``debug=fdr`` does), unless the command
line sets the rounds.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("engine.debug")
_ABSENT = object()


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys and values of ``node``; a mapping with ``_target_`` (a profiler) is one value."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig) and "_target_" not in value:
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def command_line_keys() -> set[str]:
    """Dotted keys the user set on the command line (``a.b=1``, ``+a.b=1``, ``++a.b=1``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError):  # no Hydra context (a config built in code)
        return set()
    return {o.lstrip("+~").split("=", 1)[0] for o in task if "=" in o and "/" not in o.split("=", 1)[0]}


def _follows(cfg: DictConfig, key: str, given: set[str]) -> bool:
    """Whether ``key`` is an interpolation of a key the user gave (``distill.teacher.max_epochs:
    ${trainer.max_epochs}``): the user's value reaches it, as without a debug mode (a walkthrough: ``debug=limit
    trainer.max_epochs=1`` still trained a 3-epoch teacher)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in node:
        return False
    raw = node._get_node(leaf)._value()
    return isinstance(raw, str) and raw.strip() in {f"${{{k}}}" for k in given}


def as_run(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with the debug mode's and fast_dev_run's settings applied, as :func:`dispatch` runs
    it: what the run folder's ``config.yaml`` holds and what a resume is compared with (a review: under
    ``debug=limit`` config.yaml said ``limit_train_batches: 1.0`` where 3 batches ran and W&B said 3)."""
    import copy

    ran = copy.deepcopy(cfg)
    apply_debug(ran, quiet=True)
    fast_dev_rounds(ran, quiet=True)
    return ran


def apply_debug(cfg: DictConfig, quiet: bool = False) -> dict[str, Any]:
    """Write ``cfg.debug``'s settings into ``cfg`` (see the module docstring); returns what was set."""
    debug = cfg.get("debug")
    if not isinstance(debug, DictConfig):
        return {}
    given = command_line_keys()
    applied: dict[str, Any] = {}
    with open_dict(cfg):
        for key, value in _leaves(debug):
            if key == "mode" or key in given or _follows(cfg, key, given):
                continue
            if not key.startswith("trainer.") and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
                continue  # e.g. federation.rounds in a centralised run
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
            applied[key] = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
    if not quiet:
        log.info("debug=%s: %s", debug.get("mode"), ", ".join(f"{k}={v}" for k, v in applied.items()))
    return applied


#: the round counts a fast_dev_run federation sets to 1 (where the run has them)
_ROUND_KEYS = ("federation.rounds", "fed_distill.student_rounds")


def fast_dev_rounds(cfg: DictConfig, quiet: bool = False) -> dict[str, Any]:
    """With ``trainer.fast_dev_run`` set, a federation runs one round (see the module docstring); returns
    what was set."""
    if not (cfg.get("trainer") or {}).get("fast_dev_run"):
        return {}
    given = command_line_keys()
    applied: dict[str, Any] = {}
    with open_dict(cfg):
        for key in _ROUND_KEYS:
            value = OmegaConf.select(cfg, key, default=None)
            if key not in given and value not in (None, 1):
                OmegaConf.update(cfg, key, 1, merge=False)
                applied[key] = 1
    if applied and not quiet:
        log.info("trainer.fast_dev_run: %s (one batch per client, one round)", ", ".join(f"{k}=1" for k in applied))
    return applied
