"""``init_weights=<file>``: the net a run trains starts from these weights, with a fresh optimiser, schedule, epoch
count and best-of values (fine-tuning, transfer to another data set, a federation started from a pre-trained
model). ``ckpt_path=... train=true`` instead continues the earlier run's training state, and ``resume`` continues
this run's own.

The file is data, never code: it is read with ``torch.load(weights_only=True)``
(:func:`lightning_modules.safe_load.load_checkpoint`). It may be a run's Lightning checkpoint (``best.ckpt``,
``last.ckpt``: its ``net.*`` weights; a distillation run's: its student), a deployable export (``student.pt``,
``best_student.pt``: ``{"state_dict", "net"}``) or a bare state dict of the net (a federation's
``global_final.pt``). ``init_weights_strict=true`` (default) loads every tensor or refuses the file in one line
naming the first key or shape that differs; ``false`` loads the tensors whose name and shape match and keeps the
fresh initialisation of the rest (a head for another number of classes, as nnU-Net's ``-pretrained_weights``
does), saying how many of each there were.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict
from torch import nn

from lightning_modules.checkpoints import load_strict, net_state
from lightning_modules.errors import CheckpointError, ConfigError
from lightning_modules.safe_load import load_checkpoint

log = logging.getLogger("engine.init_weights")

KEY = "init_weights"


def check_init_weights(cfg: DictConfig) -> None:
    """Before anything is built: ``init_weights`` names an existing file and goes with a run that trains a new
    net from it; one :class:`ConfigError` naming the key otherwise. The path is made absolute in ``cfg``."""
    path = cfg.get(KEY)
    if path in (None, ""):
        return
    if not (given := Path(str(path)).expanduser()).is_file():
        raise ConfigError(f"{KEY}={path}: no such file (a run's checkpoints/best.ckpt, a student.pt or a "
                          f"global_final.pt)")
    if not cfg.get("train", True):
        raise ConfigError(f"{KEY}={path} starts training from weights, but train=false only tests: test a "
                          f"checkpoint with ckpt_path=")
    if cfg.get("ckpt_path"):
        raise ConfigError(f"{KEY}={path} and ckpt_path={cfg.ckpt_path} both given: ckpt_path= continues that "
                          f"run's training (optimiser, epoch, schedule); {KEY}= starts a new one from its weights; "
                          f"give one")
    if (cfg.get("distill") or {}).get("method") == "teacher":
        raise ConfigError(f"{KEY}={path} initialises a distillation's student (distill.method=none or a KD method); "
                          f"distill=teacher trains or reuses the cached teacher of these data and model settings")
    if cfg.get("fed_distill") is not None:
        raise ConfigError(f"{KEY}={path}: a federated distillation trains its teacher and students from their "
                          f"fresh initialisation; it does not take init_weights")
    load_checkpoint(given, KEY, lazy=True)  # a file that is no checkpoint, or not only data, before the data is read
    with open_dict(cfg):  # config.yaml records where it was; a Flower ServerApp or Ray driver elsewhere finds it
        cfg[KEY] = os.path.abspath(given)


def file_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The net's state dict in ``path`` (any of the forms the module docstring lists)."""
    ckpt = load_checkpoint(path, KEY)
    if "state_dict" in ckpt and "hyper_parameters" not in ckpt and "net" in ckpt:  # lightning_modules save_net
        state = ckpt["state_dict"]
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{KEY} {path}: its 'state_dict' is not a state dict")
        return dict(state)
    state, _ = net_state(ckpt, path, what=KEY)
    return state


def load_init_weights(net: nn.Module, path: str | Path, strict: bool = True) -> dict[str, int]:
    """Load ``path`` into ``net`` (strict, or by matching name and shape); returns the counts of tensors loaded,
    kept at their fresh initialisation, and unused in the file. Non-finite weights are refused (a diverged run)."""
    state = file_state(path)
    own = net.state_dict()
    source = f"{KEY} {path}"
    if strict:
        load_strict(net, state, f"{source} holds another net than model= builds (init_weights_strict=false loads "
                                f"the tensors that match)", source=source)
        return {"loaded": len(state), "kept": 0, "unused": 0}
    match = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not any(not k.endswith("num_batches_tracked") for k in match):
        raise CheckpointError(f"{source}: none of its {len(state)} tensors matches one of the net's by name and "
                              f"shape (another architecture?)")
    load_strict(net, {**own, **match}, f"{source} does not load", source=source)
    kept = [k for k in own if k not in match]
    counts = {"loaded": len(match), "kept": len(kept), "unused": len(state) - len(match)}
    if kept or counts["unused"]:
        first = f" (first: {kept[0]}{_shapes(kept[0], state, own)})" if kept else ""
        log.warning("%s: loaded %d of the net's %d tensors; %d keep their fresh initialisation%s; %d of the file's "
                    "are unused", source, counts["loaded"], len(own), counts["kept"], first, counts["unused"])
    return counts


def _shapes(key: str, state: Mapping[str, Any], own: Mapping[str, Any]) -> str:
    if key in state:
        return f": {list(state[key].shape)} in the file, {list(own[key].shape)} here"
    return ": not in the file"


def init_from_config(cfg: DictConfig, net: nn.Module) -> dict[str, int] | None:
    """Load ``cfg.init_weights`` into ``net`` when set (the run starts from it); None when not set."""
    path = cfg.get(KEY)
    if path in (None, ""):
        return None
    counts = load_init_weights(net, str(path), strict=bool(cfg.get("init_weights_strict", True)))
    log.info("%s: the net starts from %s (%d tensors)", KEY, path, counts["loaded"])
    return counts
