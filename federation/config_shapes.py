"""What each ``federation.*`` node must be before anything reads it: the config groups (strategy, partition,
executor) chosen as configs, the settings that hold settings mappings, and ``federation.*`` only on a federation
(checked first by :func:`federation.plan.check_federation_config` and the federated distillation's checks)."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from federation.errors import FederationError

__all__ = ["check_federation_shapes", "check_is_federation", "FEDERATION_GROUPS", "FEDERATION_MAPPINGS"]

#: the ``federation/*`` config groups: each a mapping (a ``_target_`` config) once chosen; a null executor is the
#: sequential one
FEDERATION_GROUPS = ("strategy", "partition", "executor")
#: default.yaml's other settings that hold settings of their own: a mapping, or null for their defaults
FEDERATION_MAPPINGS = ("early_stopping", "matrix", "client_module", "partial_labels")
CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs"



def _config_names(folder: str) -> list[str]:
    """The configs of a group folder under ``experiments/configs`` (none where the checkout has no configs)."""
    return sorted(p.stem for p in (CONFIGS / folder).glob("*.yaml"))


def _federated_exps() -> list[str]:
    """The experiments that are federations: the fed_* ones and any whose defaults compose /federation (segviz)."""
    def composes(path: Path) -> bool:
        return any(isinstance(d, Mapping) and "/federation" in d for d in OmegaConf.load(path).get("defaults") or [])

    return [p.stem for p in sorted((CONFIGS / "exp").glob("*.yaml")) if p.stem.startswith("fed_") or composes(p)]


def _hydra_choice(group: str) -> str | None:
    """The command's choice for a config group, where Hydra composed this process's config."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def check_is_federation(fed: Any) -> None:
    """A walkthrough: ``+exp=lits_dnet +federation/strategy=fedprox`` (a centralised experiment given a federation
    group) said ``federation.rounds=None``; ``federation/default.yaml``, which every fed_* experiment composes and
    which sets ``rounds`` and ``local_epochs``, was not in the config."""
    if "rounds" in fed and "local_epochs" in fed:
        return
    exp, feds = _hydra_choice("exp"), _federated_exps()
    if exp in feds:  # a federation without one of them (~federation.rounds): the checks below name it
        return
    given = ", ".join(f"federation.{k}" for k in fed) or "federation"
    raise FederationError(f"{f'+exp={exp}' if exp else 'this experiment'} is not a federation ({given} given): "
                          f"federation/* groups and federation.* settings need a federated experiment ("
                          + (", ".join(f"+exp={name}" for name in feds) or "+exp=fed_...") + ")")


def _shown(value: Any) -> str:
    """A value as the command line writes it: null, true, 'text', 3."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, str) else str(value)


def check_federation_shapes(fed: Any) -> None:
    """A walkthrough: ``federation.strategy=fedprox`` (``.`` for ``/``) replaced the group's config with its name, and
    a check far on failed on the string (an AttributeError or a TypeError, exit 1); each node that holds settings is
    checked here, once, before anything reads it."""
    for key in FEDERATION_GROUPS:
        value = fed.get(key)
        if isinstance(value, Mapping) or (value is None and key == "executor"):
            continue
        names = _config_names(f"federation/{key}")
        if isinstance(value, str) and value:
            known = "" if not names or value in names else f" (federation/{key} is one of {', '.join(names)})"
            raise FederationError(f"federation.{key}={_shown(value)} is a name, not a config: choose the group with "
                                  f"federation/{key}={value}{known}")
        raise FederationError(f"federation.{key}={_shown(value)} is no config: choose one with federation/{key}=<name>"
                              + (f" ({', '.join(names)})" if names else ""))
    for key in FEDERATION_MAPPINGS:
        value = fed.get(key)
        if value is not None and not isinstance(value, Mapping):
            raise FederationError(f"federation.{key}={_shown(value)} must hold settings "
                                  f"(federation.{key}.<setting>=...) or be null")
