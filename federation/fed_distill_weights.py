"""Which weights file a federated distillation (:mod:`federation.fed_distill`) hands a site: a federation's
global weights (:func:`global_weights`) or, for strategies that keep entries local (FedBN's batch norm), the
global weights plus the site's own entries (:func:`site_teacher`, :func:`site_student`). Stage 2 and the
cross-site evaluation (:mod:`federation.fed_distill_eval`) both read them from here.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from engine.fit import output_dir
from federation.deploy import deployed_state, keeps_local
from federation.fed_distill_config import WEIGHTS
from lightning_modules.atomic import save_torch
from lightning_modules.checkpoints import CheckpointError, load_checkpoint

__all__ = ["TEACHER_DIR", "global_weights", "site_weights", "save_state", "site_teacher", "site_student"]

log = logging.getLogger("federation.fed_distill")

TEACHER_DIR = "teacher"


def global_weights(cfg: DictConfig, fed_dir: Path, what: str) -> Path:
    """``global_best.pt`` or ``global_final.pt`` of the federation in ``fed_dir`` (``fed_distill.teacher_weights``)."""
    choice = str(cfg.fed_distill.get("teacher_weights", "best"))
    path = fed_dir / WEIGHTS[choice]
    if not path.is_file() and choice == "best":
        path = fed_dir / WEIGHTS["final"]  # no server validation round finished (e.g. fast_dev_run)
        if path.is_file() and not cfg.get("trainer", {}).get("fast_dev_run"):  # a review: it changed silently
            log.warning("%s: no server validation round chose a best global model (fed_distill.teacher_weights="
                        "best), so its final weights are used: %s", what, path)
    if not path.is_file():
        raise CheckpointError(f"{what} wrote no global weights in {fed_dir} ({', '.join(WEIGHTS.values())})")
    return path.resolve()


def site_weights(cfg: DictConfig, global_path: Path, fed_dir: Path, site: str, out: Path) -> Path:
    """A site's weights from the federation in ``fed_dir``: ``global_path``, or with FedBN the global
    weights + the site's own local entries of the same round (:func:`federation.deploy.deployed_state`, as
    predict and the server deploy them), written once to ``out``."""
    if not keeps_local(cfg.federation):
        return global_path
    if out.is_file():
        return out
    state, filled = deployed_state(global_path, fed_dir, cfg, load_checkpoint(global_path, "global weights"), site)
    if not filled:
        raise CheckpointError(f"{fed_dir} holds no local entries of {site}: cannot personalise the site's weights")
    return save_state(state, out)


def save_state(state: dict[str, torch.Tensor], path: Path) -> Path:
    """A bare net state dict, atomically (the format of the federation's global weights)."""
    save_torch({k: v.detach().cpu() for k, v in state.items()}, path)
    return path


def site_teacher(cfg: DictConfig, global_path: Path, site: str) -> Path:
    """The teacher weights a site receives: the global ones, plus - for strategies that keep entries
    local (FedBN's batch norm) - the site's own local entries from the federation's client store."""
    return site_weights(cfg, global_path, output_dir(cfg) / TEACHER_DIR, site,
                        output_dir(cfg) / "sites" / site / "teacher_fed.pt")


def site_student(cfg: DictConfig, fed_dir: Path, site: str) -> Path:
    """The weights of a federated student at ``site`` (global; FedBN: + the site's own BN entries)."""
    return site_weights(cfg, global_weights(cfg, fed_dir, fed_dir.name), fed_dir, site,
                        output_dir(cfg) / "sites" / site / f"{fed_dir.name}.pt")
