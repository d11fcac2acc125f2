"""The nets ``experiments.predict`` runs, and the training run's config that preprocesses for them.

Two kinds of weights load: a segmentation run's Lightning checkpoint (``<run>/checkpoints/best.ckpt``; its
net config and classes in its hyper-parameters, the run config at ``<run>/config.yaml``), and a federation's
global model (``<run>/global_best.pt`` / ``global_final.pt``: a bare state dict, whose net, classes and
preprocessing are the run config's ``module`` and ``data`` beside it). Everything is loaded with
``weights_only=True`` and every ``_target_`` is allow-listed before it is built: these files are data.

A run whose data is a :class:`~datamodules.multisite.MultiSiteDataModule` (a federation, or a pooled run over
sites) preprocesses as one of its sites: ``site=<name>``, or, with ``site=null``, the sites when they
preprocess alike (they differ only in where their data is and how it is split).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from datamodules.multisite import sites_of
from engine.checkpoint_checks import check_data_states
from engine.run_files import MAX_RUN_FILE_BYTES, load_yaml_data
from lightning_modules.base import build
from lightning_modules.checkpoints import (CheckpointError, file_net_cfg, load_checkpoint, load_strict, net_state,
                                          one_line)
from lightning_modules.errors import ConfigError
from lightning_modules.kinds import is_number, is_whole
from lightning_modules.targets import check_data_target, check_targets

#: ``(weights file, its state, the run config, the run folder it came from) -> state`` with what the file lacks
FillWeights = Callable[[Path, dict, DictConfig, Path], dict]
#: data keys that say where the data is, how it is split and how training samples it, not how an image is
#: preprocessed (two sites, or two ensemble members, that differ only in these prepare an input alike)
SITE_ONLY_KEYS = {"root", "synthetic", "seed", "batch_size", "num_workers", "val_fraction", "test_fraction",
                  "cache_dir", "split_file", "split_dir", "pin_memory", "persistent_workers", "augment",
                  "train_cases", "train_slices", "samples_per_volume", "pos", "neg", "case_shard", "image_dir",
                  "mask_dir", "case_pattern", "partial_labels"}
#: what predict reads of a module's hyper-parameters; a federation's global weights take them from the run config
HPARAM_KEYS = ("num_classes", "class_names", "fg_threshold", "eval_slices", "overlap", "roi_size", "nsd_tolerance_mm")

log = logging.getLogger(__name__)


@dataclass
class Models:
    """The loaded ensemble: nets, the first checkpoint's run config and hyper-parameters."""

    nets: list[torch.nn.Module]
    run_cfg: object
    hparams: dict
    spatial_dims: int = 2
    paths: list[Path] = field(default_factory=list)
    data_state: dict = field(default_factory=dict)
    data_key: str = "data"

    def data_overrides(self) -> dict:
        """Datamodule arguments the checkpoint fixes: the training set's CT statistics (``normalization=ct``).
        Without them anywhere, one line: the datamodule would compute them from the training data the run
        config names, reading that folder and writing its cache where the (handed-over) config says (audit)."""
        stats = self.data_state.get("ct_stats")
        if stats is None and self.run_cfg.data.get("normalization") == "ct" and self.run_cfg.data.get("ct_stats") is None:
            raise CheckpointError(f"checkpoint {self.paths[0]} holds no CT statistics and its run config says "
                                  f"{self.data_key}.normalization=ct: set {self.data_key}.ct_stats=[lo, hi, mean, "
                                  f"std] in the run config (the training run printed them); predict never computes "
                                  f"them from a data folder")
        out = {} if stats is None or self.run_cfg.data.get("ct_stats") is not None else {"ct_stats": list(stats)}
        classes = self.data_state.get("source_classes")  # an msd / nnU-Net run's labels: no dataset.json needed
        if classes and self.run_cfg.data.get("layout") in ("msd", "nnunet"):
            out["source_classes"] = dict(classes)
        return out


def read_run_config(path: Path) -> DictConfig:
    """The training run's ``config.yaml``, its interpolations and data ``_target_`` checked before any value is
    read (reading resolves it: ``${oc.env:...}`` would read the environment; audit)."""
    if not path.is_file():
        raise CheckpointError(f"no run config at {path}; pass run_config=<training run>/config.yaml")
    if path.stat().st_size > MAX_RUN_FILE_BYTES:
        raise CheckpointError(f"run config {path} is over {MAX_RUN_FILE_BYTES >> 20} MB: not a run's config.yaml")
    try:  # data only, no aliases (a verification: OmegaConf.load expanded a crafted alias bomb out of memory)
        run_cfg = OmegaConf.create(load_yaml_data(path.read_text()))
    except Exception as err:  # noqa: BLE001 - a YAML or OmegaConf error: the file is bad, not the program
        raise CheckpointError(f"run config {path} does not parse ({one_line(err)})") from err
    if isinstance(run_cfg, DictConfig):
        check_targets(run_cfg, f"run config {path}", check=lambda target, what: None)  # interpolations
    if not isinstance(run_cfg, DictConfig) or not isinstance(run_cfg.get("data"), DictConfig) \
            or "_target_" not in run_cfg.data:
        raise CheckpointError(f"run config {path} holds no data config (data._target_); pass "
                              f"run_config=<training run>/config.yaml")
    check_targets(run_cfg.data, "run config data", check_data_target)  # a file's config is data, not code
    return run_cfg


def site_data(run_cfg: DictConfig, path: Path, site: str | None) -> tuple[DictConfig, str]:
    """``(run config whose data is one site's, its key)`` for multi-site data; the run config as it is else."""
    data = run_cfg.data
    if not str(data._target_).endswith(".MultiSiteDataModule"):
        if site is not None:
            raise ConfigError(f"site={site!r} but run config {path} has one data set, not sites")
        return run_cfg, "data"
    sites = data.get("sites")
    if not isinstance(sites, DictConfig) or not sites:
        raise CheckpointError(f"run config {path} has multi-site data with no data.sites")
    plain = OmegaConf.to_container(data, resolve=True)
    full = sites_of(plain)
    names = list(full)
    if site is None:
        first = full[names[0]]
        for other in names[1:]:
            cfg = full[other]
            differ = sorted(k for k in set(first) | set(cfg) if k not in SITE_ONLY_KEYS and first.get(k) != cfg.get(k))
            if differ:
                raise ConfigError(f"the sites of run config {path} preprocess differently ({differ[0]}: "
                                  f"{names[0]} {first.get(differ[0])!r} vs {other} {cfg.get(differ[0])!r}): "
                                  f"pass site=<one of {names}> to preprocess as that site does")
        site = names[0]
    if site not in names:
        raise ConfigError(f"site={site!r} is not a site of run config {path}; its sites: {names}")
    chosen = dict(full[site])
    for key in ("class_names", "num_classes", "in_channels"):  # the sites' shared keys, kept by the site
        if key in plain and key not in chosen:
            chosen[key] = plain[key]
    out = OmegaConf.create(OmegaConf.to_container(run_cfg, resolve=True))
    out.data = chosen
    return out, f"data.sites.{site}"


def _weights_net(run_cfg: DictConfig, path: Path, run_cfg_path: Path) -> tuple[dict, dict]:
    """``(net config, hyper-parameters)`` of a bare state dict (a federation's global weights) from the run
    config beside it: its segmentation ``module`` (the net the federation trained, its classes)."""
    module = run_cfg.get("module")
    if not isinstance(module, DictConfig) or not isinstance(module.get("net"), DictConfig) \
            or "eval_slices" not in module:
        raise CheckpointError(f"{path} holds weights only and run config {run_cfg_path} has no segmentation "
                              f"module.net to build them into (predict needs a segmentation run's weights)")
    container = OmegaConf.to_container(module, resolve=True)
    # built offline, as a checkpoint's stored net is (an audit: checkpoint_path or a Hub encoder named in a
    # handed-over config.yaml read a local file or reached the network)
    net = file_net_cfg(container["net"], f"run config {run_cfg_path} module.net")
    return net, {k: container[k] for k in HPARAM_KEYS if k in container}


def _config_of(weights: Path, bare: bool, run_config: str | Path | None) -> Path:
    """The run config of ``weights``: ``run_config`` when given, else the run folder's (a Lightning checkpoint
    sits in ``<run>/checkpoints/``, a federation's global weights in ``<run>/`` itself)."""
    here = Path(weights).resolve().parent
    return Path(run_config) if run_config else (here if bare else here.parent) / "config.yaml"


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _preprocessing(data: DictConfig) -> dict[str, object]:
    """A run's data config as dotted keys, less what says where its data is and how it is split (also of
    each site's)."""
    flat = _flat(OmegaConf.to_container(data, resolve=True))
    return {k: v for k, v in flat.items() if not set(k.split(".")) & SITE_ONLY_KEYS}


def _same_preprocessing(cfg: DictConfig, path: Path, first: DictConfig, first_path: Path,
                        why: str = "ensemble members preprocess differently",
                        remedy: str = "an ensemble needs one preprocessing") -> DictConfig:
    """``cfg`` when its data preprocesses as ``first``'s does: an ensemble's members see one input, prepared
    once (the first run's way), so members trained on another window or size would be fed what they never saw."""
    a, b = _preprocessing(first.data), _preprocessing(cfg.data)
    differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if differ:
        raise CheckpointError(f"{why}: data.{differ[0]} is {a.get(differ[0])!r} in {first_path} but "
                              f"{b.get(differ[0])!r} in {path}; {remedy}")
    return cfg


def _check_given_config(weights: Path, bare: bool, run_config: str | Path | None, given: DictConfig,
                        given_path: Path) -> None:
    """A warning when an explicit ``run_config=`` does not preprocess as the config beside the weights does (the
    weights still in their run folder): weights given another run's config were fed another window or size
    without a word (a weights file carries no config; a net of the same shape loads). A warning, not a refusal:
    predicting with an edited preprocessing on purpose (an ablation) stays possible."""
    beside = _config_of(weights, bare, None)
    if run_config is None or not beside.is_file() or beside.resolve() == given_path.resolve():
        return
    try:
        _same_preprocessing(read_run_config(beside), beside, given, given_path,
                            why=f"run_config={given_path} does not preprocess as the run of {weights} did",
                            remedy="predicting with the run_config's; pass that run's own config (or none: "
                                   "the one beside the weights) unless this is meant")
    except CheckpointError as exc:
        log.warning("%s", exc)


def _plain_value(value):
    """A hyper-parameter as plain data for comparison (a ListConfig or tuple of names as a list)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return [str(v) for v in value]


#: the hyper-parameters predict reads from a checkpoint, and what each must be (None: not stored)
_HPARAM_CHECKS: dict[str, tuple[str, Any]] = {
    "num_classes": ("an int >= 1", lambda v: is_whole(v) and v >= 1),
    "class_names": ("a list of names", lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)),
    "fg_threshold": ("a number in [0, 1]", lambda v: is_number(v) and 0 <= v <= 1),
    "eval_slices": ("a string", lambda v: isinstance(v, str)),
    "overlap": ("a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1),
    "nsd_tolerance_mm": ("a number >= 0", lambda v: is_number(v) and v >= 0),
    "roi_size": ("a list of sizes >= 1", lambda v: isinstance(v, (list, tuple)) and all(is_whole(x) and x >= 1 for x in v)),
}


def check_trained_settings(hp: Mapping[str, Any], path: Path, where: str = "checkpoint {path}: hyper_parameters") -> None:
    """Each hyper-parameter predict reads from a checkpoint (or a run config's ``module``: ``where``) is of its kind,
    else one line naming file and key (a trust review: ``overlap: "abc"`` or ``fg_threshold: "abc"`` were
    tracebacks, ``num_classes: "abc"`` passed)."""
    for key, (kind, ok) in _HPARAM_CHECKS.items():
        value = hp.get(key)
        if value is not None and not ok(value):
            raise CheckpointError(f"{where.format(path=path)}.{key}={str(value)[:60]!r} is not {kind}")


def load_models(ckpts: Sequence[str | Path], run_config: str | Path | None = None, site: str | None = None,
                fill_weights: FillWeights | None = None) -> Models:
    """Load every checkpoint (``weights_only``; the net built from its allow-listed config), refusing
    classification checkpoints and ensembles whose members predict different classes. ``fill_weights``
    completes a bare state dict before it is loaded (a FedBN federation's site-local entries:
    :func:`federation.deploy.deployed_state`, passed by ``experiments.predict``; engine knows no federation)."""
    loaded, data_states = [], []
    for path in map(Path, ckpts):
        ckpt = load_checkpoint(path)
        # Lightning keeps the datamodule's state_dict() under its class name (CT normalisation statistics)
        data_states.append({k: dict(v) for k, v in ckpt.items()
                            if isinstance(v, dict) and ("ct_stats" in v or "source_classes" in v)})
        check_data_states(ckpt, path)
        hp = dict(ckpt.get("hyper_parameters") or {})
        check_trained_settings(hp, path)
        if "hyper_parameters" not in ckpt and isinstance(ckpt.get("net"), dict) and "state_dict" in ckpt:
            # a walkthrough: a distillation's student.pt was refused as "not trained with module=segmentation"
            raise CheckpointError(f"{path} is a bare net file (a distillation's student.pt, for load_student in "
                                  f"Python); predict reads the run's checkpoint of the same student: "
                                  f"ckpt={path.parent / 'checkpoints' / 'best.ckpt'}")
        if "task" in hp or ("state_dict" in ckpt and "eval_slices" not in hp):
            raise CheckpointError(f"checkpoint {path} is not a segmentation checkpoint"
                                  f"{' (task=' + str(hp['task']) + ')' if 'task' in hp else ''}; "
                                  "predict needs one trained with module=segmentation")
        loaded.append((path, hp, *net_state(ckpt, path)))
    run_cfg_path = _config_of(loaded[0][0], loaded[0][3] is None, run_config)
    first_cfg = read_run_config(run_cfg_path)
    run_cfg, data_key = site_data(first_cfg, run_cfg_path, site)
    nets, first_hp, dims = [], None, set()
    for path, hp, state, net_cfg in loaded:
        member_path, member_cfg = run_cfg_path, run_cfg
        own = _config_of(path, net_cfg is None, run_config)
        _check_given_config(path, net_cfg is None, run_config, first_cfg, run_cfg_path)
        if own.resolve() != run_cfg_path.resolve() and (net_cfg is None or own.is_file()):
            member_path, member_cfg = own, _same_preprocessing(read_run_config(own), own, first_cfg, run_cfg_path)
        if net_cfg is None:  # a bare state dict: a federation's global weights, built from its own run's config
            net_cfg, hp = _weights_net(member_cfg, path, member_path)
            check_trained_settings(hp, member_path, "run config {path}: module")  # its window, tolerance (a review)
            if fill_weights is not None:
                state = fill_weights(Path(path), state, member_cfg, member_path.resolve().parent)
        if not isinstance(net_cfg, dict):
            raise CheckpointError(f"checkpoint {path} stores no net config (not a framework segmentation checkpoint)")
        try:
            net = build(net_cfg, what=f"checkpoint {path} net")
        except (ConfigError, CheckpointError):
            raise  # one line already
        except (InstantiationException, TypeError, ValueError) as err:  # a trust review: width "abc" was Hydra's
            cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err  # multi-line
            raise CheckpointError(f"checkpoint {path}: its net config does not build ({one_line(cause)[:200]})") \
                from err
        load_strict(net, state, f"checkpoint {path} does not match its net config", source=f"checkpoint {path}")
        if first_hp is not None and hp.get("num_classes") != first_hp.get("num_classes"):
            raise CheckpointError(f"checkpoint {path} predicts {hp.get('num_classes')} classes but "
                                  f"{ckpts[0]} predicts {first_hp.get('num_classes')}: an ensemble needs the same classes")
        for key in ("class_names", "fg_threshold"):  # a review: taken from the first, so the order decided
            theirs, ours = _plain_value(hp.get(key)), _plain_value((first_hp or hp).get(key))
            named = key == "fg_threshold" or (theirs is not None and ours is not None)  # names may be unstored
            if first_hp is not None and named and theirs != ours:
                raise CheckpointError(f"checkpoint {path} has {key}={theirs} but {ckpts[0]} has {ours}: an ensemble "
                                      f"needs the same (experiments.ensemble refuses them too)")
        first_hp = first_hp or hp
        dims.add(int(net_cfg.get("spatial_dims", 2)))
        nets.append(net.eval())
    if len(dims) > 1:
        raise CheckpointError(f"checkpoints {list(map(str, ckpts))} mix 2D and 3D nets")
    dm_key = str(OmegaConf.select(run_cfg, "data._target_", default="") or "").rsplit(".", 1)[-1]
    states = [s.get(dm_key, {}) for s in data_states]
    for path, st in zip(ckpts[1:], states[1:]):
        if st.get("ct_stats") != states[0].get("ct_stats"):
            raise CheckpointError(f"checkpoint {path} was trained with CT statistics {st.get('ct_stats')} but "
                                  f"{ckpts[0]} with {states[0].get('ct_stats')}: an ensemble needs one preprocessing")
    return Models(nets, run_cfg, first_hp, dims.pop(), [Path(c) for c in ckpts], states[0], data_key)
