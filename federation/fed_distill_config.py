"""What a federated distillation (:mod:`federation.fed_distill`) is configured with: the arms it can run, the
checks that refuse a config it cannot run with one line before stage 1 (:func:`check_config`, and
:func:`check_kd_pair` on the teacher-student pair the KD arms build), the sites of ``cfg.data``
(:func:`site_names`), and the centralised config of one arm at one site (:func:`site_cfg`), which the pair
check, stage 2 and the cross-site evaluation (:mod:`federation.fed_distill_eval`) build.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from datamodules.multisite import site_configs, sites_of
from engine.builders import ConfigError, build_module
from engine.distill import check_padding_before_the_teacher
from engine.fit import output_dir
from engine.one_process import check_one_process_trainer
from federation.deploy import keeps_local

LOCAL_ARMS = ("none", "teacher_local", "hlfd_local", "hlfd_fed")
FED_ARMS = ("fed_none", "fed_hlfd")  # students trained by the federation (stage 2, federated)
KD_ARMS = ("hlfd_local", "hlfd_fed", "fed_hlfd")  # the arms that distil (with distill.method: HLFD by default)
ARMS = LOCAL_ARMS + FED_ARMS
WEIGHTS = {"best": "global_best.pt", "final": "global_final.pt"}
META_KEYS = ("in_channels", "num_classes", "class_names")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def site_names(cfg: DictConfig) -> list[str]:
    sites = cfg.data.get("sites")
    if not sites:
        raise ConfigError("fed_distill needs data.sites (a multi-site data config, e.g. data=multisite_kits)")
    return list(site_configs(sites))  # one line for a null site


def check_kd_pair(cfg: DictConfig, arms: list[str]) -> None:
    """Before stage 1: the teacher-student pair the KD arms build (``distill.taps`` found in both nets, the KD
    loss's adapters, both nets padding each site's ``image_size`` alike), with a randomly initialised teacher.
    A review: a misspelt tap or a site size the pair cannot share failed after the federated teacher had
    trained, and the corrected ``distill.taps`` could not resume the run."""
    kd = [a for a in arms if a in KD_ARMS]
    if not kd:
        return
    for site in site_names(cfg):
        try:
            check_padding_before_the_teacher(site_cfg(cfg, site, kd[0]))
        except ConfigError as err:
            raise ConfigError(f"data.sites.{site}: {err}") from None
    build_module(site_cfg(cfg, site_names(cfg)[0], kd[0]))


def check_config(cfg: DictConfig) -> list[str]:
    """The arms to run; one-line errors for a config this experiment cannot run."""
    fd = cfg.fed_distill
    check_one_process_trainer(cfg.trainer, "a federated distillation")
    given = fd.get("arms")
    if isinstance(given, str):  # a review: arms=hlfd_fed was read letter by letter
        raise ConfigError(f"fed_distill.arms={given}: a list of arms, e.g. 'fed_distill.arms=[{given}]'")
    arms = [str(a) for a in (ARMS if given is None else given)]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:  # a walkthrough: [] ran every arm
        raise ConfigError(f"fed_distill.arms has {bad or 'no arm'}; valid: {list(ARMS)} (null: all of them)")
    rounds = fd.get("student_rounds")
    if rounds is not None and (isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1):
        raise ConfigError(f"fed_distill.student_rounds={rounds!r}: a whole number of rounds >= 1, or null for "
                          f"federation.rounds")  # a walkthrough: -1 failed after stage 1, naming federation.rounds
    given_teacher = OmegaConf.select(cfg, "distill.teacher.ckpt", default=None)
    if given_teacher:  # a walkthrough: it was overwritten by stage 1's teacher without a word
        raise ConfigError(f"distill.teacher.ckpt={given_teacher!r}: a federated distillation trains its teachers "
                          f"itself (stage 1 by federation, teacher_local at each site) and reads no teacher file; "
                          f"remove it (a finished stage 1 in the run folder is reused with resume=<run dir>)")
    if OmegaConf.select(cfg, "distill.teacher.data", default=None):  # a review: ignored here without a word
        raise ConfigError("distill.teacher.data: a federated distillation's teachers (stage 1 and teacher_local) "
                          "train on each site's training split as its students do; give a site's budget as "
                          "data.sites.<site>.train_cases (it applies to every arm) and remove distill.teacher.data")
    if cfg.get("federation") is not None:  # a name given with "." for "/": before any stage is built
        from federation.config_shapes import check_federation_shapes

        check_federation_shapes(cfg.federation)
    target = str(OmegaConf.select(cfg, "federation.strategy._target_", default="") or "")
    if target.rsplit(".", 1)[-1] == "DataSharing":  # its pool sends samples to the sites: not the stated boundary
        raise ConfigError("federation/strategy=datashare sends shared samples to the sites; a federated distillation "
                          "moves weights only (docs/distillation.md, privacy boundary): use fedavg, fedprox or fedbn")
    needs = [a for a in arms if a in ("hlfd_fed", *FED_ARMS)]
    if cfg.get("federation") is None and needs:
        raise ConfigError(f"fed_distill: arms {needs} need a federation config (add /federation: default)")
    partition = OmegaConf.select(cfg, "federation.partition", default=None)
    if needs and isinstance(partition, DictConfig) and partition.get("_target_") and not _per_site(partition):
        raise ConfigError(f"federation.partition={partition._target_}: a federated distillation's teachers and "
                          f"students are scored per site, so its federation has one client per site: use "
                          f"federation/partition=by_site (a review: mixed clients ran, and FedBN failed after stage 1)")
    if cfg.get("distill") is None or cfg.distill.get("loss") is None:
        raise ConfigError("fed_distill needs distill=<a KD method> (e.g. distill=hlfd)")
    if not isinstance(fd.get("keep_last_ckpt", False), bool):
        raise ConfigError(f"fed_distill.keep_last_ckpt={fd.get('keep_last_ckpt')!r}: true or false")
    if str(fd.get("teacher_weights", "best")) not in WEIGHTS:
        raise ConfigError(f"fed_distill.teacher_weights={fd.get('teacher_weights')!r}; valid: {list(WEIGHTS)}")
    personal = [a for a in arms if a in ("hlfd_fed", "fed_hlfd")]
    if personal and _real_deployment(cfg) and keeps_local(cfg.federation):
        raise ConfigError(f"fed_distill.arms {personal} with {cfg.federation.strategy._target_.rsplit('.', 1)[-1]} "
                          f"and a real SuperLink (federation.executor.launch=false): each site's teacher needs the "
                          f"batch norm that site kept in its own store, which this server never sees; leave these "
                          f"arms out here and distil at each site (docs/distillation.md), or use a strategy that "
                          f"keeps nothing local")
    site_names(cfg)
    return arms


def _per_site(partition: DictConfig) -> bool:
    """Whether the partitioner names its clients after the data's sites (an unknown ``_target_``: the federation's
    own check names it)."""
    from federation.plan import names_its_clients

    try:
        return names_its_clients(partition)
    except Exception:  # noqa: BLE001
        return True


def _real_deployment(cfg: DictConfig) -> bool:
    """The federated stages go to a real SuperLink: the sites' stores are on their own hosts."""
    from federation.transports.flower import launches

    return launches(cfg) and OmegaConf.select(cfg, "federation.executor.launch", default=True) is False


def in_experiment_group(new: DictConfig, cfg: DictConfig, job_type: str | None = None) -> None:
    """A stage's W&B run in the experiment's group (``logger.wandb.group``, which follows ``exp_name``, renamed per
    stage): a walkthrough found each stage and site arm a group of its own, so ``group = fed_kits_hlfd`` found
    nothing; ``job_type`` tells a teacher stage from the students'. Call it inside ``open_dict(new)``."""
    from engine.wandb_tracking import job_type_given

    wandb = OmegaConf.select(new, "logger.wandb", default=None)
    if isinstance(wandb, DictConfig):  # the experiment's group, or one the command line gave (a review)
        given = OmegaConf.select(cfg, "logger.wandb.group", default=None)  # ${exp_name}: the parent's name
        wandb.group = str(given or cfg.get("exp_name", "fed_distill"))
        if job_type and not job_type_given():
            wandb.job_type = job_type


def site_cfg(cfg: DictConfig, site: str, arm: str, teacher_ckpt: Path | None = None) -> DictConfig:
    """A centralised distillation config on ``site``'s data only, writing into ``<run>/sites/<site>/<arm>``."""
    new = copy.deepcopy(cfg)
    plain = _plain(cfg.data)
    data = sites_of(plain)[site]
    data.update({k: _plain(cfg.data[k]) for k in META_KEYS if k in cfg.data})
    with open_dict(new):
        for key in ("federation", "fed_distill"):
            new.pop(key, None)
        new.data = data
        new.paths.output_dir = str(output_dir(cfg) / "sites" / site / arm)
        new.exp_name = f"{cfg.get('exp_name', 'fed_distill')}_{site}_{arm}"
        in_experiment_group(new, cfg, "teacher" if arm == "teacher_local" else None)
        new.distill.method = "none" if arm == "none" else ("teacher" if arm == "teacher_local"
                                                            else str(cfg.distill.method))
        new.distill.teacher.ckpt = str(teacher_ckpt) if teacher_ckpt is not None else None
        new.distill.arm, new.distill.site = arm, site  # in metrics.json: an arm is no seed of kd_report's methods
        new.print_per_case = False
    return new
