"""The values of ``federation.executor`` checked before any data is built or any process starts, for every executor.

A walkthrough found ``timeout_s=abc`` (sequential) and Ray's bad numbers ending in Hydra's multi-line
traceback from the executor's constructor, and ``timeout_s=-5`` training every client of a round before
failing it; only the Flower executor's values were checked (:mod:`.flower.privacy`). Each refusal is one
``ConfigError`` line naming the key.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from federation.transports import EXECUTORS, executor_kind
from federation.transports.flower.privacy import _number, check_flower_privacy
from lightning_modules.errors import ConfigError

__all__ = ["check_executor_config", "check_executor_values"]

KEY = "federation.executor"


def check_executor_config(fed: Any) -> None:
    """Everything :func:`federation.plan.check_federation_config` asks of the executor: ``federation.privacy``
    (a walkthrough found privacy=secagg ignored off the Flower executor), the executor's values, and Ray's
    address (a malformed one ended in Hydra's traceback). The one place that knows each executor's checks."""
    check_flower_privacy(fed)
    check_executor_values(fed)
    if executor_kind(fed) == "ray":
        from federation.transports.ray import check_address

        check_address(OmegaConf.select(fed, "executor.address", default=None))


def check_executor_values(fed: Any) -> None:
    """``federation.executor``'s keys and values (see the module docstring); no executor: nothing to check."""
    ex = fed.get("executor")
    if not ex:
        return
    target = str(ex.get("_target_") or "")
    _known_keys(ex, target)
    _number(f"{KEY}.timeout_s", ex.get("timeout_s"), 0, allow_none=True)
    if executor_kind(fed) == "ray":
        _ray_values(ex)


def _known_keys(ex: Any, target: str) -> None:
    """A key the executor's constructor does not take (one with ``**kwargs`` takes any, as Flower's does: its
    launcher reads keys of its own; not imported here, which would import Flower)."""
    if target == EXECUTORS["flower"]:
        return
    try:
        params = inspect.signature(get_class(target)).parameters
    except Exception:  # noqa: BLE001 - a target that does not load: Hydra's instantiate names it
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(str(k) for k in ex if not str(k).startswith("_") and str(k) not in params)
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(params), n=1)
        hint = f"did you mean {KEY}.{close[0]}?" if close else f"it takes: {', '.join(params) or 'nothing'}"
        raise ConfigError(f"{KEY}.{unknown[0]} is no setting of {target.rsplit('.', 1)[-1]} ({hint})")


def _ray_values(ex: Any) -> None:
    """The Ray pool's sizes and resources (the address: :func:`.ray_cluster.check_address`)."""
    workers = ex.get("num_workers", 2)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"{KEY}.num_workers={workers}: must be an integer >= 1")
    _number(f"{KEY}.cpus_per_client", ex.get("cpus_per_client", 1.0), 0, low_ok=True)
    _number(f"{KEY}.gpus_per_client", ex.get("gpus_per_client", 1.0), 0, low_ok=True, allow_none=True)
    name = ex.get("gpu_resource", "GPU")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{KEY}.gpu_resource={name}: must be the name of a Ray resource (GPU, or a custom one)")
    _resources(ex.get("local_resources"))
    ship = ex.get("ship_code", False)
    if not isinstance(ship, bool):
        raise ConfigError(f"{KEY}.ship_code={ship}: must be true or false")


def _resources(value: Any) -> None:
    """``local_resources``: null, or {resource name: amount >= 0}."""
    if value is None:
        return
    plain = OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
    if not isinstance(plain, Mapping):
        raise ConfigError(f"{KEY}.local_resources={value}: must be a mapping {{resource: amount}}, e.g. {{fake_gpu: 1}}")
    for name, amount in plain.items():
        _number(f"{KEY}.local_resources.{name}", amount, 0, low_ok=True)
