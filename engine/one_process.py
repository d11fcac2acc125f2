"""Runs that must train in one process: a federation's clients, a federated distillation's stages.

For several devices Lightning starts the whole command again once per rank; inside a federation every rank
would then run its own federation over the same client store (found by running ``trainer=ddp`` on one: a
``KeyError`` in the store after both ranks committed the same round, and a rank left running). Refused
before any work, with where several GPUs do go: one per client.
"""
from __future__ import annotations

import re
from typing import Any

from omegaconf import OmegaConf

from lightning_modules.errors import ConfigError

#: strategies that run several processes (Lightning's ddp, ddp_spawn, fsdp, deepspeed_stage_2, xla, ...)
MULTI_PROCESS = ("ddp", "fsdp", "deepspeed", "xla")


def single_device(devices: Any) -> int | list[int] | None:
    """``devices`` naming one device, in Lightning's form: ``1``, or one index as ``[i]`` (from ``[i]``,
    ``"[i]"`` or ``"i,"``); None for anything else (several devices, ``-1``, ``auto``)."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return [int(devices[0])] if len(devices) == 1 else None
    text = str(devices).strip()
    if text == "1":
        return 1
    match = re.fullmatch(r"\[\s*(\d+)\s*\]|(\d+)\s*,", text)
    return [int(match.group(1) or match.group(2))] if match else None


def one_device(devices: Any, accelerator: Any) -> bool:
    """``trainer.devices`` that Lightning runs in one process: one device, or ``auto`` on CPU."""
    return single_device(devices) is not None or (str(devices).strip() == "auto" and str(accelerator) == "cpu")


def check_one_process_trainer(trainer: Any, run: str = "a federation") -> None:
    """One line naming each ``trainer.*`` value that would start several processes for ``run``."""
    strategy = trainer.get("strategy", "auto")
    name = strategy.get("_target_", "") if isinstance(strategy, dict) or OmegaConf.is_dict(strategy) else strategy
    bad = [f"trainer.strategy={name}"] if any(k in str(name).lower() for k in MULTI_PROCESS) else []
    if not one_device(trainer.get("devices", 1), trainer.get("accelerator", "auto")):
        bad.append(f"trainer.devices={trainer.get('devices')}")
    if trainer.get("num_nodes", 1) not in (1, None):
        bad.append(f"trainer.num_nodes={trainer.get('num_nodes')}")
    if bad:
        raise ConfigError(f"{', '.join(bad)}: {run} trains each client in one process on one device; for several "
                          "GPUs give each client its own (federation/executor=ray with federation.executor."
                          "gpus_per_client, or one Flower SuperNode per GPU; docs/federation.md)")
