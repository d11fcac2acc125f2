"""What a run's command line says: the overrides the user typed, the keys a sweep varies, those that change the
method, and the suffixes a run folder's name takes from them (:mod:`engine.wandb_tracking` names W&B runs with
them, :mod:`experiments.run` names folders)."""
from __future__ import annotations

import math
import os
import re
from typing import Iterable

#: groups the name already holds (``data`` when the command line chose it), and keys that say nothing about the method
_IN_NAME = {"exp", "model", "data", "distill", "seed", "federation/strategy", "federation/partition"}
NOT_METHOD = ("paths.", "hydra.", "hydra/", "logger", "debug", "hparams_search", "print_per_case", "resume")


def _task_overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except (ValueError, ImportError):
        return []


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _is_sweep(value: str) -> bool:
    """A command-line sweep value: ``a,b``, ``choice(...)``, ``range(...)``, ``interval(...)``, ``glob(...)``."""
    depth, comma = 0, False
    for ch in value:
        depth += ch in "[({"
        depth -= ch in "])}"
        comma |= ch == "," and depth == 0
    return comma or value.startswith(("choice(", "range(", "interval(", "glob(", "tag("))


#: the command line the user typed, kept in the environment by :func:`experiments.hydra_checks.run_cli`: a
#: sweep job's ``sys.argv`` is its own command once :func:`experiments.ddp_job.job_command` has run (and
#: submitit's in a submitit job), so it no longer says which keys the sweep varies
COMMAND_ENV = "FEDMED_COMMAND_ARGV"


def typed_command() -> list[str]:
    """The overrides the user typed (the sweep's, with its ``a,b`` values, in every job of a sweep)."""
    import json
    import sys

    try:
        argv = json.loads(os.environ.get(COMMAND_ENV) or "null")
    except ValueError:
        argv = None
    return [str(a) for a in argv] if isinstance(argv, list) else sys.argv[1:]


def swept_keys() -> set[str]:
    """Keys a sweep varies: the sweeper's ``params`` (Optuna, config sweeps) unless the command line fixes them,
    and the command line's sweeps."""
    typed = {override_key(a): a.split("=", 1)[1] for a in typed_command() if "=" in a}
    keys = {k for k, v in typed.items() if _is_sweep(v)}
    try:
        from hydra.core.hydra_config import HydraConfig

        params = {str(k) for k in (HydraConfig.get().sweeper.get("params") or {})}
        keys |= {k for k in params if k not in typed or _is_sweep(typed[k])}
    except (ValueError, ImportError, AttributeError):
        pass
    return keys


def method_overrides(overrides: Iterable[str] | None = None) -> list[str]:
    """The job's overrides that change the method (not paths, logging, launcher, debug, the exp)."""
    task = _task_overrides() if overrides is None else list(overrides)
    keys = [override_key(o) for o in task]
    return [o.lstrip("+") for o, k in zip(task, keys) if k not in _IN_NAME and not k.startswith(NOT_METHOD)]


def short_override(override: str) -> str:
    """``key=value`` with a float value to 4 significant digits (an Optuna trial's ``lr=0.000341234567``), for
    names and tags; ``config.run.overrides`` keeps the exact value."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return override if value.lstrip("+-").isdigit() or not math.isfinite(number) else f"{key}={number:.4g}"


def swept_suffix(limit: int = 80) -> str:
    """``_key-value`` for each value this sweep job takes of what the sweep varies (the key's last part), the
    seed and the model left out (the folder's name holds them): ``3_resnet18_student_s0_distill-hlfd_lr-0.01``.
    Only characters a folder name and an unquoted Hydra override both take (a ``=`` in a path broke
    ``predict ckpt=<job>/...`` and ``resume=<job>``); ``""`` outside a sweep job."""
    try:
        from hydra.core.hydra_config import HydraConfig

        task = list(HydraConfig.get().overrides.task)
    except (ValueError, ImportError, AttributeError):
        return ""
    varied = swept_keys() - {"seed", "model"}
    parts = []
    for o in task:
        if override_key(o) in varied:
            key, _, value = short_override(o.lstrip("+~")).partition("=")
            parts.append(re.sub(r"[^A-Za-z0-9._+-]", "-", f"{re.split(r'[./]', key)[-1]}-{value}"))
    return ("_" + "_".join(parts))[:limit] if parts else ""


def method_suffix() -> str:
    """``_<strategy>`` of a federation (``_fedbn``) or ``_<method>`` of a distillation (``_hlfd``), as the user
    chose the config group, for a run folder's name (``..._dnet_fedbn_s0_...``): runs of one experiment that
    differ only in these were told apart by their config.yaml alone. ``""`` for other runs."""
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
    except (ValueError, ImportError, AttributeError):
        return ""
    for group, key in (("federation", "federation/strategy"), ("distill", "distill")):
        if choices.get(group) is not None and choices.get(key):
            return "_" + re.sub(r"[^A-Za-z0-9._+-]", "-", str(choices[key]).rsplit("/", 1)[-1])
    return ""
