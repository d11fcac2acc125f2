"""Checkpoint paths restored from a checkpoint are confined to this run's checkpoint folder.

Lightning's ``ModelCheckpoint`` restores ``best_model_path``, ``last_model_path``, ``kth_best_model_path``
and ``best_k_models`` from the file it resumes from, and later *deletes* the previous one with
``fs.rm(recursive=True)``. Its own check (``_should_remove_checkpoint``) treats ``local://...`` as remote
and does not normalise ``..``, so a crafted checkpoint naming ``local:///home/you`` or
``<run>/checkpoints/../../data`` deleted that folder one epoch after ``resume=`` or ``train=true ckpt_path=``
(found by a security audit). :func:`engine.builders.build_trainer` gives every trainer this callback: before
any callback loads its state, each such path that is not a plain local path inside the folder of the
``ModelCheckpoint`` that restores it is dropped (a warning names it), so Lightning never sees it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger("callbacks.checkpoint_paths")

#: what ModelCheckpoint.load_state_dict restores that names a file it may later delete
PATH_KEYS = ("best_model_path", "last_model_path", "kth_best_model_path")


def inside(path: Any, folder: str | Path | None) -> bool:
    """``path`` is a plain local path (no ``scheme://``) that, links and ``..`` resolved, lies in ``folder``."""
    if folder is None or not isinstance(path, str) or "://" in path or "://" in str(folder):
        return False
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError, ValueError):
        return False


def confine_state(state: dict[str, Any], folder: str | Path | None, where: str) -> list[str]:
    """Drop from one ``ModelCheckpoint`` state every restored path outside ``folder``; returns those dropped."""
    dropped: list[str] = []
    for key in PATH_KEYS:
        value = state.get(key)
        if value and not inside(value, folder):
            dropped.append(f"{key}={value!r}")
            state[key] = ""
    best_k = state.get("best_k_models")
    if isinstance(best_k, dict):
        outside = [p for p in best_k if not inside(p, folder)]
        for p in outside:
            dropped.append(f"best_k_models[{p!r}]")
            best_k.pop(p)
    if dropped:
        log.warning("%s: dropped checkpoint paths outside %s (never deleted nor loaded): %s", where, folder,
                    ", ".join(dropped))
    return dropped


def rebase_moved(state: dict[str, Any], folder: str | Path | None) -> bool:
    """A run folder moved (or copied) since the checkpoint was written: each restored path that named a file of
    the old ``dirpath`` names the file of that name in ``folder`` when it is there, and ``dirpath`` becomes
    ``folder``, so Lightning restores the best score instead of starting over (a review: the first epoch after
    the resume was the "best", saved as ``best-v1.ckpt`` and tested). True when it rebased."""
    old = state.get("dirpath")
    if folder is None or not isinstance(old, str) or "://" in old or Path(old) == Path(folder):
        return False
    def moved(value: Any) -> str | None:
        if not isinstance(value, str) or not value or "://" in value or Path(value).parent != Path(old):
            return None
        there = Path(folder) / Path(value).name
        return str(there) if there.is_file() else None
    best = moved(state.get("best_model_path"))
    if best is None:  # another run's checkpoint (ckpt_path=): its bests are not this run's
        return False
    for key in PATH_KEYS:
        if state.get(key):
            state[key] = moved(state[key]) or ""
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {moved(p): v for p, v in state["best_k_models"].items() if moved(p)}
    state["dirpath"] = str(folder)
    log.info("checkpoint paths of %s restored in its new folder %s", old, folder)
    return True


class ConfineCheckpointPaths(pl.Callback):
    """At ``on_load_checkpoint`` (Lightning calls every callback's before any ``load_state_dict``) each restored
    ``ModelCheckpoint`` state keeps only paths inside that callback's ``dirpath``; a state no callback of
    this trainer restores loses all its paths."""

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("callbacks")
        if not isinstance(states, dict):
            return
        folders = {cb.state_key: cb.dirpath for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)}
        elsewhere = False
        for key, state in states.items():
            if isinstance(state, dict) and any(k in state for k in (*PATH_KEYS, "best_k_models")):
                folder = folders.get(key)
                if not rebase_moved(state, folder) and state.get("best_model_path") and folder is not None \
                        and str(state.get("dirpath")) != str(folder):
                    elsewhere = True
                confine_state(state, folder, f"checkpoint callback state {key}")
        if elsewhere:  # another run's checkpoint (ckpt_path=): its best-of values are not this run's best.ckpt's
            for key in [k for k in states if str(k).split("{", 1)[0] == "BestMetric"]:
                states.pop(key)
                log.warning("ckpt_path from another run's folder: its val/*_best values are not carried over "
                            "(this run's best checkpoint starts afresh)")
