"""Federated distillation (issue 15): ``python -m experiments.run +exp=fed_kits_hlfd``.

Stage 1 - the federated teacher: the teacher net (``distill.teacher.model``, a CPU-sized UNet++ by
default) is trained by the federation in ``cfg.federation`` (FedAvg / FedProx / FedBN, any executor or
transport: the stage-1 config is handed unchanged to the ``federate`` callable, which is
``experiments.run.dispatch``) over the sites of ``cfg.data`` (a :class:`~datamodules.multisite.
MultiSiteDataModule`, one client per site). It writes into ``<run dir>/teacher`` (``global_best.pt``,
``global_final.pt``, ``metrics.json``). Only weights, sample counts and metrics cross sites.

Stage 2 - local distillation: each site, on its own data only (``data.sites.<site>``), trains the arms
in ``fed_distill.arms`` into ``<run dir>/sites/<site>/<arm>``:

* ``none``          - the student (``model``, paper 001's ResNet-18) with L_seg only;
* ``teacher_local`` - the teacher net trained on the site's data alone (the local teacher);
* ``hlfd_local``    - the student + HLFD (paper 001, Eq. 5) from the local teacher;
* ``hlfd_fed``      - the student + HLFD from the federated teacher: the only thing that reaches the site
  from outside is the teacher's weights (with FedBN: the global weights + the site's own BN entries).

Stage 2 - federated students (after stage 1, into ``<run dir>/<arm>``): one student for all sites, trained
by the same federation (strategy, executor, transport) as the teacher:

* ``fed_none`` - the student with L_seg only (a plain federated segmentation run of ``model``);
* ``fed_hlfd`` - the student with L_seg + HLFD against the frozen federated teacher in every client's loss
  (:class:`~lightning_modules.distillation.DistillationModule`): the federated state is the module's
  ``net``, the student, alone; the teacher is loaded at each client from ``module.teacher_ckpt`` (FedBN:
  the site's own teacher, via ``federation.client_module``) and never averaged or sent; the KD adapters
  stay in each client's store. Crossing sites: the teacher's weights down (once), the student's weights
  both ways each round.

Resume: a finished stage is skipped - the teacher when ``<run>/teacher/metrics.json`` exists, a site arm
when the file it hands on (``student.pt``, or ``teacher.pt`` for the local teacher) exists, a federated
student when ``<run>/<arm>/metrics.json`` exists; an interrupted federation continues from its ``server.pt``. Evaluation (every
model on every site's test set, one table + one figure) is :mod:`federation.fed_distill_eval`; the weights a site
receives (global, or FedBN's personalised) are picked in :mod:`federation.fed_distill_weights`.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from engine import artifacts
from engine.builders import ConfigError, build_module
from engine.distill import run_distillation, segmentation_cfg, teacher_loss
from engine.fit import output_dir, train_and_test
from engine.wandb_tracking import TEACHER_STAGE, debug_mode
from federation.deploy import keeps_local
from federation.fed_distill_config import (FED_ARMS, LOCAL_ARMS, check_config, check_kd_pair, in_experiment_group,
                                           site_cfg, site_names)
from federation.fed_distill_eval import evaluate_run
from federation.fed_distill_weights import TEACHER_DIR, global_weights, save_state, site_teacher

log = logging.getLogger("federation.fed_distill")

DONE = "metrics.json"


# ------------------------------------------------------------------------------------------ stage 1
def teacher_stage_cfg(cfg: DictConfig) -> DictConfig:
    """The stage-1 config: a plain federated segmentation run of the teacher net, everything else
    (federation, data, trainer, seed, logger) passed through unchanged, writing into ``<run>/teacher``."""
    out = output_dir(cfg) / TEACHER_DIR
    tcfg = segmentation_cfg(cfg, cfg.distill.teacher.model, teacher_loss(cfg), out)
    with open_dict(tcfg):
        del tcfg["fed_distill"]  # the student's KD settings are not the teacher's; its stage is (W&B tag, job type,
        tcfg.distill = {"method": TEACHER_STAGE}  # as the centralised teacher stage's; a session found it untagged)
        tcfg.exp_name = f"{cfg.get('exp_name', 'fed_distill')}_teacher"
        in_experiment_group(tcfg, cfg, "teacher")
        tcfg.module.scheduler = cfg.fed_distill.get("teacher_scheduler")  # rounds restart local optimisers
        if (out / "server.pt").is_file():
            tcfg.resume = True  # an interrupted federation continues after its last completed round
    return tcfg


def federated_teacher(cfg: DictConfig, federate: Callable[[DictConfig], dict]) -> Path:
    """Stage 1 (reused when ``<run>/teacher/metrics.json`` exists): the global teacher weights file."""
    out = output_dir(cfg) / TEACHER_DIR
    if (out / DONE).is_file():
        artifacts.console.print(f"[bold]stage 1:[/bold] reusing the federated teacher in {out}")
    else:
        artifacts.console.print(f"[bold]stage 1:[/bold] federated teacher -> {out}")
        _federate_stage(federate, teacher_stage_cfg(cfg), out, "stage 1 (the federated teacher)")
    return global_weights(cfg, out, "stage 1")


# ------------------------------------------------------------------------------------------ stage 2
def train_local_teacher(cfg: DictConfig) -> dict[str, Any]:
    """The teacher net on the site's data alone; its weights -> ``teacher.pt`` (a bare state dict, so
    it loads as ``distill.teacher.ckpt`` even when no Lightning checkpoint is written, as in fast_dev_run)."""
    out = output_dir(cfg)
    tcfg = segmentation_cfg(cfg, cfg.distill.teacher.model, teacher_loss(cfg), out, cfg.distill.teacher.get("max_epochs"))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    module = build_module(tcfg)
    metrics = train_and_test(tcfg, module=module, extra_metrics={
        "distill/method": "teacher_local", "distill/arm": "teacher_local", "distill/site": str(cfg.distill.get("site", ""))})
    save_state(module.net.state_dict(), out / "teacher.pt")
    return metrics


def run_site_arm(cfg: DictConfig, site: str, arm: str, fed_teacher: Path | None) -> Path:
    """One arm at one site (skipped when its ``metrics.json`` exists); returns the arm's run dir."""
    root = output_dir(cfg) / "sites" / site
    out = root / arm
    if (out / ("teacher.pt" if arm == "teacher_local" else "student.pt")).is_file():  # written last
        log.info("site %s arm %s: done already (%s)", site, arm, out)
        return out
    artifacts.console.print(f"[bold]stage 2:[/bold] site {site}, {arm} -> {out}")
    if arm == "teacher_local":
        train_local_teacher(site_cfg(cfg, site, arm))
    elif arm == "hlfd_local":
        local = root / "teacher_local" / "teacher.pt"
        if not local.is_file():
            run_site_arm(cfg, site, "teacher_local", fed_teacher)
        run_distillation(site_cfg(cfg, site, arm, local))
    elif arm == "hlfd_fed":
        run_distillation(site_cfg(cfg, site, arm, site_teacher(cfg, fed_teacher, site)))
    else:
        run_distillation(site_cfg(cfg, site, arm))
    if not cfg.fed_distill.get("keep_last_ckpt", False):
        drop_resume_state(out)
    return out


def drop_resume_state(arm_dir: Path) -> None:
    """Remove a finished arm's ``checkpoints/last.ckpt``: it only serves to resume the arm, and a finished arm
    (its handed-on file written) is never resumed. With nine student arms this halves a run's disk use (a
    ResNet-18 checkpoint with its Adam moments is 134 MB); nnU-Net likewise deletes ``checkpoint_latest`` at
    the end of training. ``best.ckpt`` (the tested weights, for ``experiments.predict``) stays;
    ``fed_distill.keep_last_ckpt=true`` keeps ``last.ckpt`` too."""
    last = arm_dir / "checkpoints" / "last.ckpt"
    if last.is_file() and (arm_dir / "checkpoints" / "best.ckpt").is_file():
        last.unlink()
        log.info("%s: finished, removed its last.ckpt (fed_distill.keep_last_ckpt=true keeps it)", arm_dir)


# ------------------------------------------------------------------------------------------ stage 2, federated
def student_stage_cfg(cfg: DictConfig, arm: str, fed_teacher: Path | None) -> DictConfig:
    """A federated run of the student (``fed_none``: L_seg only; ``fed_hlfd``: the distillation module with
    the frozen federated teacher, per site with FedBN) with stage 1's federation, into ``<run>/<arm>``."""
    out = output_dir(cfg) / arm
    if arm == "fed_none":
        scfg = segmentation_cfg(cfg, cfg.model, cfg.module.loss, out)
        with open_dict(scfg):  # a walkthrough: its W&B run had no distill: tag nor config.run.distill
            scfg.distill.method = "none"  # as the local none arm's and a centralised distill=none run's
    else:
        scfg = copy.deepcopy(cfg)
        with open_dict(scfg):
            scfg.paths.output_dir = str(out)
            scfg.distill.teacher.ckpt = str(fed_teacher)  # the server's template; clients: module.teacher_ckpt
            if keeps_local(cfg.federation):
                scfg.federation.client_module = {s: {"teacher_ckpt": str(site_teacher(cfg, fed_teacher, s).resolve())}
                                                 for s in site_names(cfg)}
    with open_dict(scfg):
        del scfg["fed_distill"]
        scfg.exp_name = f"{cfg.get('exp_name', 'fed_distill')}_{arm}"
        in_experiment_group(scfg, cfg)
        scfg.module.scheduler = cfg.fed_distill.get("student_scheduler")  # rounds restart local optimisers
        if cfg.fed_distill.get("student_rounds") is not None:
            scfg.federation.rounds = int(cfg.fed_distill.student_rounds)
        if (out / "server.pt").is_file():
            scfg.resume = True
    return scfg


def federated_student(cfg: DictConfig, arm: str, fed_teacher: Path | None,
                      federate: Callable[[DictConfig], dict]) -> Path:
    """One federated student (reused when ``<run>/<arm>/metrics.json`` exists); returns its run dir."""
    out = output_dir(cfg) / arm
    if (out / DONE).is_file():
        log.info("federated student %s: done already (%s)", arm, out)
        return out
    if arm == "fed_hlfd" and fed_teacher is None:
        raise ConfigError("fed_distill: arm fed_hlfd needs the federated teacher (stage 1)")
    artifacts.console.print(f"[bold]stage 2:[/bold] federated student {arm} -> {out}")
    _federate_stage(federate, student_stage_cfg(cfg, arm, fed_teacher), out, f"stage 2 (the federated student {arm})")
    return out


class StagePending(Exception):
    """A federated stage was written for a real Flower deployment (``federation.executor.launch=false``) and has
    not run here: the experiment pauses until the deployment has finished it."""

    def __init__(self, what: str, out: Path) -> None:
        super().__init__(what)
        self.what, self.out = what, out


def _federate_stage(federate: Callable[[DictConfig], dict], stage_cfg: DictConfig, out: Path, what: str) -> None:
    """Run one federated stage; a stage only prepared for a SuperLink (its ``flower/config`` returned, no
    ``metrics.json`` yet) raises :class:`StagePending`."""
    result = federate(_with_config(stage_cfg, out))
    if isinstance(result, dict) and "flower/config" in result and not (out / DONE).is_file():
        raise StagePending(what, out)


def _with_config(stage_cfg: DictConfig, out: Path) -> DictConfig:
    """``stage_cfg``, its resolved copy written to ``<out>/config.yaml`` as every run folder has one: predict
    then segments with the stage's global weights (``experiments.predict ckpt=<run>/teacher/global_best.pt``)."""
    out.mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(stage_cfg, resolve=True))
    return stage_cfg


def _paused(pending: StagePending, run: Path) -> dict[str, Any]:
    """What a paused run says (the finished stages stay; the run's ``metrics.json`` is not written)."""
    if (pending.out / "server.pt").is_file():  # submitted before: running there now, or stopped mid-way
        todo = (f"has started on the deployment ({pending.out / 'server.pt'}): while it runs there, wait (a second "
                f"submission would write into the same folder); if it stopped, submit it again with the flwr run "
                f"command above (it continues after its last round)")
    else:
        todo = "has not run: submit it with the flwr run command above"
    line = (f"{pending.what} is written for your SuperLink and {todo}. Once it has finished ({pending.out / DONE} "
            f"written), run this experiment again with the same overrides and resume={run} to go on.")
    artifacts.console.print(f"[bold]paused:[/bold] {line}", soft_wrap=True)  # unwrapped: paths stay whole
    log.info("paused: %s", line)  # run.log says why the run has no results yet
    return {"fed_distill/pending": pending.what, "fed_distill/pending_dir": str(pending.out)}


# ------------------------------------------------------------------------------------------ entry
def run_fed_distill(cfg: DictConfig, federate: Callable[[DictConfig], dict]) -> dict[str, Any]:
    """Both stages, then the cross-site evaluation; returns (and writes) the run's ``metrics.json``."""
    arms = check_config(cfg)
    check_kd_pair(cfg, arms)
    out = output_dir(cfg)
    try:
        fed_teacher = federated_teacher(cfg, federate) if cfg.get("federation") is not None else None
        runs = {site: {arm: run_site_arm(cfg, site, arm, fed_teacher) for arm in arms if arm in LOCAL_ARMS}
                for site in site_names(cfg)}
        fed_runs = {arm: federated_student(cfg, arm, fed_teacher, federate) for arm in arms if arm in FED_ARMS}
    except StagePending as pending:
        return _paused(pending, out)
    metrics: dict[str, Any] = {"fed_distill/arms": arms, "fed_distill/sites": site_names(cfg),
                               "fed_distill/teacher_weights": str(fed_teacher) if fed_teacher else None}
    if cfg.fed_distill.get("evaluate", True):
        metrics.update(evaluate_run(cfg, runs, fed_teacher, fed_runs))
    if debug_mode(cfg):  # any debug= mode
        metrics["debug"] = True  # fast_dev_run: experiments.report and kd_report leave it out
    artifacts.write_json(out / DONE, metrics)
    artifacts.console.print(artifacts.artefacts_line(out))
    return metrics
