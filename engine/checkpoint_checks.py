"""Checks on a Lightning checkpoint before a run uses it, and what a run takes from one: the load with
``weights_only`` (:func:`checked_ckpt`), the trainer and datamodule states training continues from
(:func:`check_trainer_state`, :func:`check_data_states`, :func:`optimised_count`), the config a test-only run
builds its net from (:func:`test_only_cfg`), the CT statistics a tested datamodule restores
(:func:`restore_data_state`), ``train=false`` without a checkpoint (:func:`refuse_untrained_test`) and the state
dict Lightning loads into a module (:func:`as_loaded`). :func:`engine.fit.train_and_test` and
:mod:`engine.distill` call them before any training or test; predict checks its datamodule states here too.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from datamodules.errors import DataError
from datamodules.intensity import checked_ct_stats
from datamodules.segmentation import checked_source_classes
from engine.run_match import TEST_ONLY, TEST_SPLIT, differences, same_data_root, saved_config
from lightning_modules.checkpoints import load_checkpoint, stored_net_cfg
from lightning_modules.errors import CheckpointError, ConfigError
from lightning_modules.targets import check_targets

log = logging.getLogger("engine.fit")  # the run's logger, as before these checks left engine/fit.py


def checked_ckpt(path: str | Path | None, what: str = "ckpt_path", lazy: bool = False) -> dict[str, Any] | None:
    """Load ``path`` with ``weights_only=True`` before Lightning sees it: a crafted pickle, a truncated
    file or a missing one is one :class:`CheckpointError` naming it, and nothing in it runs. ``lazy``: for
    a check only (the tensors are memory-mapped, not read; Lightning then reads the file itself)."""
    if not path:
        return None
    ckpt = load_checkpoint(path, what, lazy=lazy)
    if "state_dict" not in ckpt:
        raise CheckpointError(f"{what} {path} is not a Lightning checkpoint of this framework (no 'state_dict')")
    return ckpt


#: what Lightning restores when it continues training from a checkpoint, and the type each must have
TRAINER_STATE = {"pytorch-lightning_version": str, "epoch": int, "global_step": int, "optimizer_states": list,
                 "lr_schedulers": list, "loops": dict, "callbacks": dict}


def check_trainer_state(ckpt: dict[str, Any], path: str | Path) -> None:
    """A checkpoint that training continues from (``resume``, ``ckpt_path`` with ``train=true``) must hold
    Lightning's trainer state with the types Lightning expects: one :class:`CheckpointError` naming the key,
    not a ``KeyError`` from inside Lightning's restore."""
    if not isinstance(ckpt.get("pytorch-lightning_version"), str):
        raise CheckpointError(f"ckpt_path {path} holds weights without trainer state (no 'pytorch-lightning_version'):"
                              f" training cannot continue from it; test it with train=false")
    for key, kind in TRAINER_STATE.items():
        if key in ckpt and not isinstance(ckpt[key], kind):
            raise CheckpointError(f"ckpt_path {path}: '{key}' holds {type(ckpt[key]).__name__}, expected "
                                  f"{kind.__name__} (not a checkpoint Lightning wrote)")
    check_data_states(ckpt, path)


def check_data_states(ckpt: Mapping[str, Any], path: str | Path) -> None:
    """The datamodule states a checkpoint carries (Lightning keeps each under the class name; ours holds CT
    normalisation statistics) are checked before a datamodule or predict takes them: one
    :class:`CheckpointError` naming the file and the key, not a ``ValueError`` from inside Lightning's restore."""
    for key, state in ckpt.items():
        if isinstance(state, Mapping) and ("ct_stats" in state or "source_classes" in state):
            try:
                if "ct_stats" in state:
                    checked_ct_stats(state["ct_stats"], f"{key}.ct_stats")
                if "source_classes" in state:
                    checked_source_classes(state["source_classes"], f"{key}.source_classes")
            except DataError as err:
                raise CheckpointError(f"checkpoint {path}: {err}") from err


def optimised_count(ckpt: Mapping[str, Any]) -> int | None:
    """How many parameters the checkpoint's single optimiser state covers (None: not one optimiser, or unreadable)."""
    states = ckpt.get("optimizer_states")
    if not isinstance(states, list) or len(states) != 1 or not isinstance(states[0], Mapping):
        return None
    groups = states[0].get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, Mapping) and isinstance(g.get("params"), list)
                                               for g in groups):
        return None
    return sum(len(g["params"]) for g in groups)


def restore_data_state(datamodule: Any, ckpt: Mapping[str, Any]) -> None:
    """Give ``datamodule`` the CT statistics a checkpoint keeps of its training data (under the datamodule's class
    name; checked by :func:`check_data_states`): how training normalised. Not its ``source_classes``: the tested
    site's own dataset.json says what its label values are (a review)."""
    state = ckpt.get(type(datamodule).__qualname__)
    if isinstance(state, Mapping) and state.get("ct_stats") is not None \
            and callable(getattr(datamodule, "load_state_dict", None)):
        datamodule.load_state_dict({"ct_stats": state["ct_stats"]})


def test_only_cfg(cfg: DictConfig, ckpt: dict[str, Any], path: str) -> DictConfig:
    """Test-only runs (``train=false ckpt_path=...``) build the net from the checkpoint's own (allow-listed)
    net config, as predict does, not from the command line's default model."""
    stored = stored_net_cfg(ckpt, path, "checkpoint")
    if not isinstance(stored, Mapping):
        return cfg
    try:
        check_targets(stored, f"checkpoint {path} net")
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    declared = (cfg.get("data") or {}).get("num_classes")
    for key in ("classes", "num_classes", "out_channels"):
        if stored.get(key) is None:
            continue
        if isinstance(stored[key], bool) or not isinstance(stored[key], int):  # a security review: a traceback
            raise CheckpointError(f"ckpt_path {path}: its net's {key}={stored[key]!r} is not a whole number")
        if declared is not None and int(stored[key]) != int(declared):
            raise CheckpointError(f"ckpt_path {path} predicts {key}={stored[key]} but data.num_classes={declared}")
    trained = saved_config(Path(path).resolve().parent.parent)  # <run>/checkpoints/<name>.ckpt
    diffs = differences(trained, cfg, TEST_ONLY) if trained is not None else []
    if diffs:
        raise CheckpointError(f"ckpt_path {path} was trained with other data settings than this run composes: "
                              f"{'; '.join(diffs)}; set them as the run had them (its config.yaml)")
    root = same_data_root(trained, cfg) if trained is not None else None
    split = differences(trained, cfg, TEST_SPLIT) if root is not None else []
    if split:
        raise CheckpointError(f"ckpt_path {path} was trained on data.root={root} split otherwise: {'; '.join(split)}; "
                              f"its test cases would include ones it trained or validated on: set them as the run "
                              f"had them (its config.yaml), or test on other data")
    composed = OmegaConf.select(cfg, "model._target_", default=None)
    if composed is not None and composed != stored.get("_target_"):  # the folder's name came from model=
        log.warning("ckpt_path %s holds a %s, not the %s that model= composes: this run tests the checkpoint's "
                    "net (config.yaml and W&B say so), though its folder is named after model=",
                    path, str(stored.get("_target_")).rsplit(".", 1)[-1], str(composed).rsplit(".", 1)[-1])
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.module.net = OmegaConf.create(dict(stored))
        cfg.model = OmegaConf.create(dict(stored))  # config.yaml's model: is the net tested, as module.net
    return cfg


def refuse_untrained_test() -> None:
    """``train=false`` without a checkpoint is one line (a review: it tested the untrained net and wrote its
    metrics as a result)."""
    raise ConfigError("train=false tests a checkpoint: give ckpt_path=<run>/checkpoints/best.ckpt (resume=<run "
                      "dir> train=false tests its last.ckpt); without one the untrained net would be tested")


def as_loaded(module: pl.LightningModule, state: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict Lightning loads into ``module`` from a checkpoint holding ``state``: after the module's own
    ``on_load_checkpoint`` (the distillation module's checkpoints leave the frozen teacher out and it refills it
    there). A review: comparing the file's keys with ``module.state_dict()`` refused every distillation resume."""
    probe = {"state_dict": dict(state)}
    module.on_load_checkpoint(probe)
    return probe["state_dict"]
