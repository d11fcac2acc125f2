"""Build the three pieces of every run — datamodule, LightningModule, Trainer — from a composed config.

Centralised, distillation and federated runs all call these, so a federated client is built exactly as a
centralised run is (DESIGN.md: one data path, one training path).
"""
from __future__ import annotations

import inspect
import logging
import re
import warnings
from collections.abc import Iterable
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import get_class, get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelSummary, ProgressBar

from callbacks.checkpoint_paths import ConfineCheckpointPaths
from callbacks.epoch_seeding import EpochSeeding
from callbacks.fit_time import FitTime
from callbacks.model_summary import FirstBatchModelSummary
from engine.artifacts import is_terminal
from engine.checkpoint_io import AtomicCheckpointIO
from lightning_modules.hints import argument_hint
from lightning_modules.base import instantiate_with_args_checked, is_argument_error
from lightning_modules.errors import ConfigError, UserError, one_line

#: Keys a data config carries for interpolation by the model/module configs (``${data.num_classes}``);
#: they are checked against the built datamodule, and passed to its constructor only where it takes them.
DATA_META_KEYS = ("in_channels", "num_classes", "class_names")


def _takes(target: Any, key: str) -> bool:
    """Whether the class ``target`` names has a constructor argument ``key`` (``FolderSegmentationDataModule``
    takes ``class_names``: dropping it named a 2D folder's tumour class "liver" and capped it at 2 classes)."""
    try:
        return key in inspect.signature(get_class(str(target))).parameters
    except Exception:  # noqa: BLE001 - an unknown target is reported by the instantiation itself
        return False


def _null_required(given: dict) -> str | None:
    """The first constructor argument of ``given['_target_']`` without a default that ``given`` sets to null."""
    try:
        params = inspect.signature(get_class(str(given.get("_target_")))).parameters
    except Exception:  # noqa: BLE001 - an unknown target is reported by the instantiation itself
        return None
    return next((k for k, p in params.items() if p.default is inspect.Parameter.empty and k in given
                 and given[k] is None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)), None)


def build_datamodule(data_cfg: DictConfig, **overrides: Any) -> pl.LightningDataModule:
    """Instantiate ``cfg.data``; its meta keys go to the constructor only where it takes them;
    ``overrides`` replace constructor arguments."""
    plain = OmegaConf.to_container(data_cfg, resolve=True)
    meta = {k: plain[k] if _takes(plain.get("_target_"), k) else plain.pop(k) for k in DATA_META_KEYS if k in plain}
    plain.update(overrides)
    from datamodules.augmentation_checks import check_augmentations

    check_augmentations(plain)  # a typo in a class or argument: one line, not Hydra's
    null = _null_required(plain)
    if null:  # a walkthrough: data.root=null was Hydra's "Error in call to target ... TypeError", naming no key
        raise ConfigError(f"data.{null} is null but {str(plain.get('_target_')).rsplit('.', 1)[-1]} needs it "
                          f"(e.g. data.{null}=<folder>)")
    dm = instantiate_with_args_checked(plain, "data")
    dm._declared_meta = meta  # checked after setup(), when the datamodule knows its classes
    return dm


def check_datamodule(dm: pl.LightningDataModule) -> None:
    """After ``setup()``: the declared ``data.num_classes``/``in_channels`` must match the data."""
    for key, declared in getattr(dm, "_declared_meta", {}).items():
        actual = getattr(dm, key, None)
        if key == "class_names" or actual is None or declared is None:
            continue
        if int(actual) != int(declared):
            raise ConfigError(f"data.{key}={declared} but the data has {key}={actual}; set data.{key}={actual}")


def check_dimensions(cfg: DictConfig, choices: dict[str, Any] | None = None) -> None:
    """A 3D net (``model.spatial_dims=3``) needs 3D patch data (``data.patch_size``) and a 2D net slice
    data: else one line naming the experiment of the other kind (the exp's ``exp_3d`` / ``exp_2d`` key).
    Read before anything is resolved (the 3D model configs interpolate ``${data.patch_size}``)."""
    model, data = cfg.get("model"), cfg.get("data")
    if not isinstance(model, DictConfig) or not isinstance(data, DictConfig) or "_target_" not in model:
        return
    net_3d = OmegaConf.select(model, "spatial_dims", default=2, throw_on_resolution_failure=False) == 3
    data_3d = "patch_size" in data
    if net_3d == data_3d:
        return
    names = choices or {}
    net, dat = names.get("model") or model._target_.rsplit(".", 1)[-1], names.get("data") or "the data"
    other = cfg.get("exp_3d" if net_3d else "exp_2d")
    hint = f"use +exp={other}" if other else (
        "use a 2D net (e.g. model=dnet) or 3D patch data (a data config with patch_size)" if net_3d
        else "use a 3D net (model=unet3d or model=segresnet_vae) or 2D slice data")
    raise ConfigError(f"model={net} is a {'3D' if net_3d else '2D'} net but data={dat} gives "
                      f"{'2D slices (no data.patch_size)' if net_3d else '3D patches'}: {hint}")


#: net ``_target_`` prefixes of each task, for :func:`check_task` (a net elsewhere, e.g. a user's, is not judged)
_CLASSIFIERS = ("lightning_modules.nets.classifiers.",)
_SEGMENTERS = ("segmentation_models_pytorch.", "monai.networks.", "lightning_modules.nets.dnet.",
               "lightning_modules.nets.unet3plus.", "lightning_modules.nets.nested_unet.",
               "lightning_modules.nets.attention_unet.", "lightning_modules.nets.student.",
               "lightning_modules.nets.monai3d.")


def check_task(cfg: DictConfig, choices: dict[str, Any] | None = None) -> None:
    """A classifier given to a segmentation module, or a segmenter to a classification one, is one line before
    anything trains (a walkthrough: ``+exp=lits_dnet model=small_cnn`` ended in a tensor-size traceback, exit 1,
    no failed.json; ``+exp=medmnist_breast model=dnet`` in a TypeError)."""
    model, module = cfg.get("model"), cfg.get("module")
    if not isinstance(model, DictConfig) or not isinstance(module, DictConfig):
        return
    net, kind = str(model.get("_target_", "")), str(module.get("_target_", ""))
    classifying = kind.endswith("ClassificationModule")
    wrong = net.startswith(_SEGMENTERS) if classifying else net.startswith(_CLASSIFIERS)
    if not wrong or not kind:
        return
    names = choices or {}
    name = names.get("model") or net.rsplit(".", 1)[-1]
    raise ConfigError(f"model={name} is a {'segmentation' if classifying else 'classification'} net but "
                      f"module={names.get('module') or kind.rsplit('.', 1)[-1]} "
                      f"{'classifies images' if classifying else 'segments them'}: use "
                      f"{'a classifier (model=resnet18, resnet50 or small_cnn)' if classifying else 'a segmentation net (e.g. model=dnet)'}"
                      f" or an experiment of that task")


def instantiate_config(node: Any, what: str, values: bool = True, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)`` of a config group the user sets (``trainer``, ``module``, a logger or a
    callback); a constructor given an argument it does not take (``++trainer.fast_dev_rn=true``) or, with
    ``values``, a value it refuses (``ValueError``/``TypeError``: ``fast_dev_run=ture``) is one
    :class:`ConfigError` naming ``what`` and the class, not Hydra's multi-line InstantiationException with exit
    1 (a walkthrough: ``model``/``data`` mistakes were one line, these were not)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if cause is None or isinstance(cause, UserError):
            raise
        from lightning_fabric.utilities.exceptions import MisconfigurationException

        target = node.get("_target_") if hasattr(node, "get") else None
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else one_line(cause)
        if isinstance(cause, MisconfigurationException) and what == "trainer":
            # a walkthrough: trainer=gpu on a machine without one said "No supported gpu backend found!" only
            chosen = ", ".join(f"trainer.{k}={node.get(k)}" for k in ("accelerator", "devices", "strategy")
                               if hasattr(node, "get") and node.get(k) is not None)
            raise ConfigError(f"{what}: {message}" + (f" ({chosen})" if chosen else "")) from err
        if is_argument_error(cause) or (values and isinstance(cause, (ValueError, TypeError))):
            hint = argument_hint(target, cause, f"{what}.")  # ++trainer.fast_dev_rn: did you mean trainer.fast_dev_run?
            raise ConfigError(f"{what} ({target}): {message}{_value_named(node, what, message)}{hint}") from err
        raise


def _value_named(node: Any, what: str, message: str) -> str:
    """`` (trainer.fast_dev_run='ture')``: the key whose value a constructor's message quotes (a verification
    walkthrough: ``invalid literal for int() with base 10: 'ture'`` named no key); empty when none matches."""
    quoted = set(re.findall(r"'([^']*)'", message))
    keys = [k for k, v in (node.items() if hasattr(node, "items") else ()) if isinstance(v, str) and v in quoted]
    return f" ({what}.{keys[0]}={node[keys[0]]!r})" if len(keys) == 1 else ""


def build_module(cfg: DictConfig) -> pl.LightningModule:
    """Instantiate ``cfg.module`` (``_recursive_: false``: the module builds its net/loss from config); only
    argument errors are the config's here: a ValueError inside a module's constructor may be a bug. On 3D patch
    data the module's sliding window is set here (``check_volumetric``: ``module.roi_size`` defaults to
    ``data.patch_size``), not only in ``setup`` from the trainer's datamodule: a review found a federation's
    modules, evaluated through loaders with no datamodule, feeding whole volumes to the net."""
    module = instantiate_config(cfg.module, "module", values=False)
    patch = (cfg.get("data") or {}).get("patch_size")
    if patch is not None and hasattr(module, "check_volumetric"):
        module.check_volumetric([int(p) for p in patch])
    return module


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """``cfg.callbacks``' Lightning callbacks; an entry that builds anything else is one line naming it (an
    audit: ``+callbacks.x._target_=os.makedirs`` ran, then failed in Lightning with an AttributeError)."""
    out = []
    for name, c in (cfg.get("callbacks") or {}).items():
        if c is None or "_target_" not in c:
            continue
        cls = _resolved(c._target_)
        if inspect.isclass(cls) and not issubclass(cls, pl.Callback):  # refused before it is called
            raise ConfigError(f"callbacks.{name}: {c._target_} is a {cls.__name__}, not a Lightning callback")
        cb = instantiate_config(c, f"callbacks.{name}")
        if not isinstance(cb, pl.Callback):
            raise ConfigError(f"callbacks.{name}: {c._target_} gave a {type(cb).__name__}, not a Lightning callback")
        out.append(cb)
    return out


def check_monitors(cfg: DictConfig, module: pl.LightningModule, where: Iterable[str] | None = None) -> None:
    """Each monitor setting in ``where`` (default: ``module.monitor`` and every ``callbacks.<name>.monitor``) that
    names a ``val/`` key is one ``module`` logs (its ``val_metric_keys()``), else one line listing them. A
    walkthrough: ``module.monitor=val/acuc`` trained a whole epoch before Lightning's "could not find the monitored
    key" (sanity validation is off); a federation trained a whole round before saying so."""
    keys = module.val_metric_keys() if callable(getattr(module, "val_metric_keys", None)) else None
    if not keys:
        return
    if where is None:
        where = ["module.monitor", *(f"callbacks.{name}.monitor" for name, c in (cfg.get("callbacks") or {}).items()
                                     if isinstance(c, DictConfig) and "monitor" in c)]
    for key in [*where, "optimized_metric"]:
        value = OmegaConf.select(cfg, key, default=None)
        if key == "optimized_metric":  # a search's val/<key>_best: the best of a logged key (a trial trained, then
            value = value[:-len("_best")] if isinstance(value, str) and value.endswith("_best") else None  # failed)
        if isinstance(value, str) and value.startswith("val/") and value not in keys:
            given = OmegaConf.select(cfg, key, default=None)
            raise ConfigError(f"{key}={given}: {type(module).__name__} logs no such key; its validation keys are "
                              f"{', '.join(keys)}")


def _resolved(target: Any) -> Any:
    """What a ``_target_`` names, or None when it does not resolve (instantiate then says why, as for any)."""
    try:
        return get_object(str(target))
    except Exception:  # noqa: BLE001
        return None


class _NoProductTip(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing litlogger" line, printed by every Trainer it builds
    without a LitLogger (an advertisement for a cloud service, not a statement about the run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def quiet_library_notices() -> None:
    """Lightning's product tip (above), and the deprecation torch 2.14 raises inside Lightning's own
    ``_pytree`` (``isinstance(treespec, LeafSpec)``), which a user can do nothing about. Idempotent: every
    :func:`build_trainer` calls it (a filter already in place is not added twice)."""
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoProductTip) for f in logger.filters):
            logger.addFilter(_NoProductTip())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def _bar_off(cfg: DictConfig, overrides: dict[str, Any]) -> bool:
    """No progress bar when stdout is no terminal (a SLURM log, ``> run.log``), unless
    ``trainer.enable_progress_bar`` is set: a bar's frames in a file are fragments (a live display cannot
    redraw there) between the log lines."""
    if "enable_progress_bar" in overrides or cfg.trainer.get("enable_progress_bar") is not None:
        return False
    return not is_terminal()


def build_trainer(cfg: DictConfig, callbacks: list | None = None, logger: Any = None, **overrides: Any) -> pl.Trainer:
    """``cfg.trainer`` with ``callbacks`` and loggers; checkpoints are saved atomically beside their target
    (:class:`engine.checkpoint_io.AtomicCheckpointIO`) unless ``trainer.plugins`` names other plugins; every
    trainer re-seeds the model's draws per epoch (:class:`callbacks.epoch_seeding.EpochSeeding`) and keeps
    only checkpoint paths inside its checkpoint folder from a resumed file
    (:class:`callbacks.checkpoint_paths.ConfineCheckpointPaths`)."""
    quiet_library_notices()
    if cfg.trainer.get("plugins") is None and "plugins" not in overrides:
        overrides["plugins"] = [AtomicCheckpointIO()]
    callbacks = list(callbacks or [])
    if _bar_off(cfg, overrides):  # a log file, not a terminal: EpochLog's line per epoch says what a bar would
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        overrides["enable_progress_bar"] = False
    elif overrides.get("enable_progress_bar", cfg.trainer.get("enable_progress_bar")) is False:
        # asked off: Lightning refuses a progress-bar callback beside it (a review: every default run stopped)
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not any(isinstance(c, EpochSeeding) for c in callbacks):
        callbacks.append(EpochSeeding())
    if not any(isinstance(c, ConfineCheckpointPaths) for c in callbacks):
        callbacks.append(ConfineCheckpointPaths())
    if not any(isinstance(c, FitTime) for c in callbacks):
        callbacks.append(FitTime())  # fit_seconds across resumes (engine.fit)
    summary = overrides.get("enable_model_summary", cfg.trainer.get("enable_model_summary"))
    if summary is not False and not any(isinstance(c, ModelSummary) for c in callbacks):
        callbacks.append(FirstBatchModelSummary())  # Lightning's, with an input: FLOPs and sizes, not "FLOPs: 0"
        overrides["enable_model_summary"] = False  # so Lightning adds no summary of its own at fit start
    return instantiate_config(cfg.trainer, "trainer", callbacks=callbacks, logger=logger if logger is not None else False,
                              **overrides)
