"""Which ``_target_``s :func:`lightning_modules.base.build` may instantiate: configs read from files are data.

A checkpoint stores its net, loss, optimiser and scheduler as ``_target_`` configs so that it can rebuild the
run; a crafted checkpoint could name ``shutil.copyfile`` or ``builtins.open`` instead. Every ``_target_``
(nested ones included) must therefore *resolve* to a class defined in the project's packages, a well-known
net library or ``torch.nn`` / ``torch.optim`` (the string alone is not enough: ``engine.distill.shutil.copyfile``
resolves to :func:`shutil.copyfile`), and be a network, loss, optimiser or scheduler class. Prefixes given
in the config key ``allow_targets`` (or ``FEDMED_ALLOW_TARGETS``, comma separated) add packages to that rule,
not a way around it: a name under one must still resolve to a class *defined* under one, of an allowed kind
(a security audit: ``allow_targets=[mylab]`` let a checkpoint name ``mylab.nets.torch.hub.load``, reached
through the ``import torch`` of ``mylab/nets.py``, and run a hub folder's code).
"""
from __future__ import annotations

import inspect
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from lightning_modules.errors import ConfigError, one_line

#: the project's own packages
PROJECT_PACKAGES = ("lightning_modules", "datamodules", "callbacks", "federation", "engine")
#: well-known network libraries and torch's building blocks (losses, optimisers, schedulers)
LIBRARY_PACKAGES = ("segmentation_models_pytorch", "monai.networks.nets", "torchvision.models", "torch.nn",
                    "torch.optim")
#: what an allowed class must be: a network/loss, an optimiser or a learning-rate scheduler
ALLOWED_BASES: tuple[type, ...] = (nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
                                   torch.optim.lr_scheduler.ReduceLROnPlateau)

ENV = "FEDMED_ALLOW_TARGETS"


def allow(prefixes: Iterable[str] | None) -> None:
    """Add these module prefixes to the allowed packages (the ``allow_targets`` config key). Kept in the environment so
    worker processes (Ray clients, DDP ranks) apply the same list."""
    extra = [str(p).strip() for p in (prefixes or []) if str(p).strip()]
    if extra:
        os.environ[ENV] = ",".join(dict.fromkeys([*extra_prefixes(), *extra]))


def extra_prefixes() -> tuple[str, ...]:
    """The module prefixes trusted by `allow_targets` / FEDMED_ALLOW_TARGETS."""
    return tuple(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())


def under_prefixes(name: str, prefixes: Iterable[str]) -> bool:
    """Whether the dotted ``name`` is one of ``prefixes`` or lies below one."""
    return any(name == p.rstrip(".") or name.startswith(p.rstrip(".") + ".") for p in prefixes)


_QUIET = threading.Lock()


def _resolve(target: str) -> Any:
    """``hydra.utils.get_object`` without its own ERROR log line: a name that does not resolve is our one line
    (a walkthrough saw Hydra's three lines printed before it)."""
    hydra_log = logging.getLogger("hydra.utils")
    with _QUIET:  # one thread at a time: two interleaved could leave the logger off for good (a review)
        was, hydra_log.disabled = hydra_log.disabled, True
        try:
            return get_object(target)
        finally:
            hydra_log.disabled = was


def _why(err: BaseException) -> str:
    """Why a name did not resolve, in one line: what Hydra's "Error loading 'x.Y'" was raised from (a walkthrough:
    the type alone, ``ImportError``, hid a broken net folder that every ``model=`` choice failed on)."""
    return one_line(err.__cause__ or err)[:300]


def check_target(target: Any, what: str = "object") -> None:
    """Raise :class:`ConfigError` (one line naming ``target``) unless ``target`` may be instantiated."""
    if not isinstance(target, str):
        raise ConfigError(f"{what} _target_ {target!r} is not a dotted name; refused")
    allowed = PROJECT_PACKAGES + LIBRARY_PACKAGES + extra_prefixes()
    refused = (f"{what} _target_ {target!r} refused: only net/loss/optimiser/scheduler classes of the project, "
               f"smp, monai.networks.nets, torchvision.models or torch.nn/optim are built (trust more with "
               f"allow_targets=[prefix])")
    if not under_prefixes(target, allowed):
        raise ConfigError(refused)
    try:
        obj = _resolve(target)
    except Exception as err:  # noqa: BLE001 - an unresolvable name is a bad config
        raise ConfigError(f"{what} _target_ {target!r} does not resolve ({_why(err)})") from err
    module = getattr(obj, "__module__", None) or ""
    if not (inspect.isclass(obj) and under_prefixes(module, allowed) and issubclass(obj, ALLOWED_BASES)):
        raise ConfigError(refused)
    import pytorch_lightning as pl

    if issubclass(obj, pl.LightningModule):  # an nn.Module, but a whole run: a security review's checkpoint net,
        raise ConfigError(refused)  # DistillationModule(teacher_ckpt=<any file>), opened and parsed that file


#: the library whose 2D transforms a data config may build (``data.augmentation``, a slice datamodule's pipeline)
AUGMENTATION_PACKAGE = "albumentations"


def is_augmentation(target: Any, what: str = "data") -> bool:
    """Whether ``target`` names an albumentations transform (or compose) class; its ``Lambda`` left out, whose
    point is to call whatever it is handed. Raises :class:`ConfigError` for a name under albumentations that
    does not resolve (a typo is one line, not a refusal)."""
    if not (isinstance(target, str) and under_prefixes(target, (AUGMENTATION_PACKAGE,))):
        return False
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import asks pypi.org otherwise (datamodules/)
    import albumentations as A

    try:
        obj = _resolve(target)
    except Exception as err:  # noqa: BLE001 - an unresolvable name is a bad config
        raise ConfigError(f"{what} _target_ {target!r} does not resolve ({_why(err)})") from err
    return (inspect.isclass(obj) and under_prefixes(getattr(obj, "__module__", "") or "", (AUGMENTATION_PACKAGE,))
            and issubclass(obj, (A.BasicTransform, A.BaseCompose)) and not issubclass(obj, A.Lambda))


def check_data_target(target: Any, what: str = "data") -> None:
    """A data config read from a file (a run's ``config.yaml`` beside a checkpoint) may only build classes
    of the project's ``datamodules`` package, and albumentations transforms (:func:`is_augmentation`): one line
    naming ``target`` otherwise."""
    if is_augmentation(target, what):
        return
    packages = ("datamodules", *extra_prefixes())  # allow_targets adds packages, not a way around the rule
    try:
        obj = _resolve(target) if isinstance(target, str) and under_prefixes(target, packages) else None
    except Exception as err:  # noqa: BLE001 - an unresolvable name is a bad config
        raise ConfigError(f"{what} _target_ {target!r} does not resolve ({_why(err)})") from err
    import pytorch_lightning as pl

    if not (inspect.isclass(obj) and under_prefixes(getattr(obj, "__module__", "") or "", packages)
            and issubclass(obj, pl.LightningDataModule)):
        raise ConfigError(f"{what} _target_ {target!r} refused: a data config read from a file may only build "
                          f"classes of the project's datamodules package or albumentations transforms (trust more "
                          f"with allow_targets=[prefix])")


def check_targets(cfg: Any, what: str = "object", check: Any = None) -> None:
    """:func:`check_target` (or ``check``) on every ``_target_`` in ``cfg``, however deeply nested, and no
    string may hold an interpolation: ``instantiate`` would resolve ``${oc.create:{_target_: ...}}`` into a
    ``_target_`` this check never saw (and ``${oc.env:...}`` would read the environment). Configs of our own
    Hydra composition are resolved before they get here (:func:`lightning_modules.base.build`); configs read
    from a checkpoint, a run folder or the network are stored resolved, so a ``${`` in them is crafted."""
    check = check or check_target
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, str) and "${" in cfg:
        raise ConfigError(f"{what}={cfg!r} refused: an interpolation in a config that is built here "
                          f"(configs read from files or the network are stored resolved)")
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            if isinstance(key, str) and "${" in key:
                raise ConfigError(f"{what} key {key!r} refused: an interpolation in a config that is built here")
            if key == "_target_":
                if isinstance(value, str) and "${" in value:
                    raise ConfigError(f"{what}._target_={value!r} refused: an interpolation in a config that is "
                                      f"built here (configs read from files or the network are stored resolved)")
                check(value, what)
            else:
                check_targets(value, f"{what}.{key}", check)
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            check_targets(value, f"{what}[{i}]", check)


#: net arguments that make a constructor fetch weights from the network, and their offline values
DOWNLOAD_KEYS = {"encoder_weights": None, "pretrained": False, "weights": None, "weights_backbone": None}
#: timm's model sources (``timm.models._factory._MODEL_SOURCES``): a Hub repo (``tu-hf-hub:org/name`` in smp)
#: or a local folder whose config.json names the constructor's arguments (``local-dir:``; a second audit)
HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:", "local_dir:")
#: net arguments naming a file or a place to load weights or code from, refused when set: MONAI's
#: ``HoVerNet(pretrained_url=)`` and ``Transchex(path_or_repo_id=)``, timm's ``checkpoint_path`` (torch.load of a
#: file the config chooses) and ``pretrained_cfg`` / ``pretrained_cfg_overlay`` (a url, file or Hub id), reached
#: through ``smp.Unet(encoder_name="tu-...", **kwargs)`` (security audit), and MONAI's
#: ``CellSamWrapper(checkpoint=)`` and ``from_pretrained(pretrained_model_name_or_path=)`` (a second audit). Our
#: ``teacher_ckpt`` is not one: a received client config carries it (pinned by the node), and a file's net may not be
#: the LightningModule that takes it (:func:`check_target`)
FETCH_KEY = re.compile(r"(^|_)(url|uri)$|^checkpoint(_path|_file)?$|repo_id$|^pretrained_(cfg|path|file|model)")


def _downloading_defaults(target: Any) -> list[str]:
    """The :data:`DOWNLOAD_KEYS` parameters of an allowed ``target`` whose default would fetch weights (a
    non-empty string or ``True``). Only names under the allowed prefixes are imported, as in
    :func:`check_target`; anything else is left for it to refuse."""
    if not isinstance(target, str) or not under_prefixes(target, PROJECT_PACKAGES + LIBRARY_PACKAGES + extra_prefixes()):
        return []
    try:
        params = inspect.signature(get_object(target)).parameters
    except Exception:  # noqa: BLE001 - unresolvable or no signature: check_target has the last word
        return []
    return [k for k in DOWNLOAD_KEYS if k in params and isinstance(params[k].default, (str, bool))
            and params[k].default]


def _fetching_defaults(target: Any) -> dict[str, str]:
    """The :data:`FETCH_KEY` parameters of an allowed ``target`` whose default names a place to fetch from
    (MONAI's ``Transchex(path_or_repo_id="bert-base-uncased")``), with those defaults."""
    if not isinstance(target, str) or not under_prefixes(target, PROJECT_PACKAGES + LIBRARY_PACKAGES + extra_prefixes()):
        return {}
    try:
        params = inspect.signature(get_object(target)).parameters
    except Exception:  # noqa: BLE001 - unresolvable or no signature: check_target has the last word
        return {}
    return {k: p.default for k, p in params.items()
            if FETCH_KEY.search(k) and isinstance(p.default, str) and p.default}


def _downloads(key: str, value: Any) -> bool:
    """Whether ``key=value`` makes a net fetch weights: a :data:`DOWNLOAD_KEYS` key set to anything true
    (``1`` and ``1.0`` fetch as ``True`` does; an audit), ``weights`` set to a name."""
    if key not in DOWNLOAD_KEYS or not value:
        return False
    # pretrained / encoder_weights / weights_backbone name nothing but weights: any true value ([true] and
    # {a: 1} fetched too: a second audit); weights may also be a loss's class weights, so only a name there
    return key != "weights" or isinstance(value, (str, bool))


def no_downloads(cfg: Any, what: str = "net") -> Any:
    """A copy of a net config read from a checkpoint or received from the network that builds without
    touching the network: ``encoder_weights`` / ``weights`` -> ``None`` and ``pretrained`` -> ``False``
    (the weights come from the checkpoint or the server, so nothing is lost), and a Hugging Face Hub
    model name is refused with one line (its architecture itself is fetched, from a repo the file names), and
    so are positional ``_args_``, a URL anywhere and a :data:`FETCH_KEY` argument that is set."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        cfg = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(cfg, str) and any(p in cfg.lower() for p in HUB_PREFIXES):
        raise ConfigError(f"{what}={cfg!r} refused: a config read from a file or the network may not name a "
                          f"Hugging Face Hub model or a local model folder (the architecture would be read from "
                          f"a repo or folder the file chooses)")
    if isinstance(cfg, str) and "://" in cfg:
        raise ConfigError(f"{what}={cfg!r} refused: a config read from a file or the network may not name a URL "
                          f"(a net built from it would fetch from a place the file chooses)")
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            if FETCH_KEY.search(str(key)) and value not in (None, "", False, {}):
                raise ConfigError(f"{what}.{key}={value!r} refused: a config read from a file or the network may "
                                  f"not name a file or a place to load weights or code from (the weights come "
                                  f"from the checkpoint or the server)")
        for key, default in _fetching_defaults(cfg.get("_target_")).items():
            if key not in cfg:  # left out, the class fetches its default when it is built
                raise ConfigError(f"{what}: {cfg['_target_']} refused: its {key} defaults to {default!r}, which it "
                                  f"fetches when built; a config read from a file or the network builds offline")
        if "_args_" in cfg:  # smp.Unet(name, depth, "imagenet"): a positional argument escapes every key check
            raise ConfigError(f"{what}._args_ refused: a config read from a file or the network names each "
                              f"argument (positional arguments hide which parameter a value sets)")
        out = {k: (DOWNLOAD_KEYS[k] if _downloads(k, v) else no_downloads(v, f"{what}.{k}")) for k, v in cfg.items()}
        for key in _downloading_defaults(cfg.get("_target_")):  # smp.Unet: encoder_weights="imagenet" if unset
            out.setdefault(key, DOWNLOAD_KEYS[key])
        return out
    if isinstance(cfg, (list, tuple)):
        return [no_downloads(v, f"{what}[{i}]") for i, v in enumerate(cfg)]
    return cfg
