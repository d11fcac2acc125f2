"""What a site's node may build from the run config it receives over the network (a Flower ClientApp).

The server's client config is data from the wire, so before anything is built:

* every ``_target_`` must be of the kind a client run builds, judged on the resolved object, not the
  string: a datamodule class of ``datamodules``, an albumentations transform (``data.augmentation``;
  :func:`lightning_modules.targets.is_augmentation`), a LightningModule class of ``lightning_modules``, a
  net/loss/optimiser/scheduler class (:func:`lightning_modules.targets.check_target`'s rule), a
  :class:`~federation.core.strategies.Strategy` class, one of the partition functions of
  :data:`~federation.core.partition.PARTITIONERS`, or Lightning's ``Trainer``. Any other function or
  class of the project (a file writer, a process launcher) is refused;
* no string may hold an interpolation (``${...}``): the server sends resolved configs, and resolving one
  on the node could build a hidden ``_target_`` (``oc.create``) or read the node's environment (``oc.env``)
  (:func:`lightning_modules.targets.check_targets` refuses them);
* no positional ``_args_`` (a value's parameter must be named to be checked) and no ``teacher_ckpt`` but
  ``module.teacher_ckpt`` and ``federation.client_module.<site>.teacher_ckpt``, the two places a node pins
  to its own teacher file (:func:`federation.transports.flower.node.pin_teacher`);
* the keys a node decides for itself are replaced or dropped: ``federation.executor`` (a node runs no
  executor) and every ``cache_dir`` (the preprocessing cache stays under the node's own data folder);
* once a node names its data folder (``data-root``), :func:`pin_data_paths` keeps every other path the
  server chose for the data (``image_dir``, ``split_dir``, ``split_file``, a site's ``root``, ...) inside it:
  such a path must be relative, without ``..``. Otherwise the server could point the node's training (and
  so the weights it sends back) at any folder the node's process can read.
"""
from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Mapping, MutableMapping
from pathlib import PureWindowsPath
from typing import Any

from hydra.utils import get_object

from lightning_modules.errors import ConfigError
from lightning_modules.targets import (LIBRARY_PACKAGES, PROJECT_PACKAGES, check_target, check_targets,
                                       extra_prefixes, is_augmentation, no_downloads, under_prefixes)

__all__ = ["check_received_config", "check_received_target", "check_server_target", "pin_data_paths", "TEACHER_KEYS"]

TRAINERS = ("pytorch_lightning.Trainer", "lightning.pytorch.Trainer")


def _kinds() -> tuple[tuple[type, ...], tuple[Any, ...]]:
    """(allowed base classes, allowed functions); imported here so a node pays for them only when asked."""
    import pytorch_lightning as pl

    from federation.core.partition import PARTITIONERS
    from federation.core.strategies.base import Strategy

    return (pl.LightningDataModule, pl.LightningModule, Strategy), tuple(PARTITIONERS.values())


def check_received_target(target: Any, what: str = "received config") -> None:
    """One line naming ``target`` unless it is of a kind a client run builds (see the module docstring)."""
    if isinstance(target, str) and target in TRAINERS:
        return
    if is_augmentation(target, what):  # a slice datamodule's data.augmentation
        return
    refused = (f"{what} _target_ {target!r} refused: a config received from elsewhere may only build datamodules, "
               f"albumentations transforms, LightningModules, nets/losses/optimisers, strategies, partitioners or "
               f"Lightning's Trainer")
    extra = extra_prefixes()  # allow_targets adds packages, not a way around the kinds (a security audit)
    if not (isinstance(target, str) and under_prefixes(target, PROJECT_PACKAGES + LIBRARY_PACKAGES + extra)):
        raise ConfigError(refused)
    try:
        obj = get_object(target)
    except Exception as err:  # noqa: BLE001 - an unresolvable name is a bad config
        raise ConfigError(f"{what} _target_ {target!r} does not resolve ({type(err).__name__})") from err
    bases, functions = _kinds()
    module = getattr(obj, "__module__", "") or ""
    if any(obj is fn for fn in functions):
        return
    if inspect.isclass(obj) and under_prefixes(module, PROJECT_PACKAGES + extra) and issubclass(obj, bases):
        return
    try:
        check_target(target, what)  # nets, losses, optimisers, schedulers (project or libraries)
    except ConfigError:
        raise ConfigError(refused) from None


def check_server_target(target: Any, what: str = "cfg-path") -> None:
    """The Flower ServerApp's ``cfg-path`` file is data too (a trust review: a strategy ``subprocess.Popen`` in a
    crafted one ran a shell command on the server): what a client may build (:func:`check_received_target`), plus
    Lightning callbacks, loggers and profilers (classes of the project or Lightning) and the federation's executors
    (:data:`federation.transports.EXECUTORS`)."""
    from federation.transports import EXECUTORS

    try:
        check_received_target(target, what)
        return
    except ConfigError as err:
        refused = err
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import Logger
    from pytorch_lightning.profilers import Profiler

    packages = (*PROJECT_PACKAGES, "pytorch_lightning", *extra_prefixes())
    try:
        obj = get_object(target) if isinstance(target, str) and under_prefixes(target, packages) else None
    except Exception:  # noqa: BLE001 - unresolvable: refused as it was
        obj = None
    if inspect.isclass(obj) and under_prefixes(getattr(obj, "__module__", "") or "", packages) and (
            issubclass(obj, (pl.Callback, Logger, Profiler))
            or f"{obj.__module__}.{obj.__qualname__}" in EXECUTORS.values()):
        return
    raise ConfigError(f"{what} _target_ {target!r} refused: the ServerApp's config may only build what a client "
                      f"builds, Lightning callbacks, loggers and profilers, and the federation's executors (your own "
                      f"packages: FEDMED_ALLOW_TARGETS=<prefix> on the server host)") from refused


def _drop_cache_dirs(node: Any) -> None:
    if isinstance(node, dict):
        node.pop("cache_dir", None)
        for value in node.values():
            _drop_cache_dirs(value)
    elif isinstance(node, list):
        for value in node:
            _drop_cache_dirs(value)


#: where a received config may name the teacher checkpoint: the node replaces or refuses it there
#: (:func:`federation.transports.flower.node.pin_teacher`); anywhere else it would be loaded unseen
TEACHER_KEYS = ("module.teacher_ckpt", "federation.client_module.*.teacher_ckpt")


def _at(path: tuple[str, ...], pattern: str) -> bool:
    """``path`` is ``pattern``, a ``*`` standing for exactly one key (a site id)."""
    want = pattern.split(".")
    return len(path) == len(want) and all(w in ("*", p) for p, w in zip(path, want))


def _refuse_hidden_arguments(node: Any, what: str, path: tuple[str, ...] = ()) -> None:
    """No positional ``_args_`` (they hide which parameter a value sets: a teacher path passed as the 7th
    argument of ``DistillationModule`` got past the teacher pin) and no ``teacher_ckpt`` outside
    :data:`TEACHER_KEYS` (a nested LightningModule's would be loaded with no pin)."""
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        here = (*path, str(k) if isinstance(node, Mapping) else f"[{k}]")
        if k == "_args_":
            raise ConfigError(f"{what}: {'.'.join(here)} refused: a received config names each argument")
        if k == "teacher_ckpt" and not any(_at(here, p) for p in TEACHER_KEYS):
            raise ConfigError(f"{what}: {'.'.join(here)} refused: a teacher checkpoint is named only as "
                              f"{' or '.join(TEACHER_KEYS)}")
        _refuse_hidden_arguments(v, what, here)


def check_received_config(ccfg: Mapping[str, Any], what: str = "client config from the server") -> dict[str, Any]:
    """A checked copy of ``ccfg``: every ``_target_`` and string checked, no positional ``_args_`` nor stray
    ``teacher_ckpt``, node-owned keys removed."""
    if not isinstance(ccfg, Mapping):
        raise ConfigError(f"{what} is not a mapping ({type(ccfg).__name__})")
    cfg = copy.deepcopy(dict(ccfg))
    _refuse_hidden_arguments(cfg, what)
    if isinstance(cfg.get("federation"), dict):
        cfg["federation"].pop("executor", None)
    _drop_cache_dirs(cfg.get("data"))
    check_targets(cfg, what, check_received_target)
    if isinstance(cfg.get("module"), Mapping):  # the weights come from the server: nothing is fetched here
        cfg["module"] = no_downloads(cfg["module"], f"{what}: module")
        net = cfg["module"].get("net")
        if isinstance(net, Mapping) and net.get("_partial_"):  # a partial, not a net: a traceback on the node
            raise ConfigError(f"{what}: module.net._partial_={net['_partial_']!r} refused: the net config builds a "
                              f"network, not a partial")
    per_client = cfg["federation"].get("client_module") if isinstance(cfg.get("federation"), Mapping) else None
    if isinstance(per_client, Mapping):  # merged over ``module`` on the node (a review: a teacher set here was
        cfg["federation"]["client_module"] = {  # built unchecked: Hub weights, a timm checkpoint_path)
            site: no_downloads(over, f"{what}: federation.client_module.{site}") if isinstance(over, Mapping)
            else over for site, over in per_client.items()}
    return cfg


def _escapes(value: str) -> bool:
    """True for a string that names a place outside a folder it is joined to: absolute, ``~``, or ``..``."""
    parts = value.replace("\\", "/").split("/")
    return value.startswith(("/", "~", "\\")) or PureWindowsPath(value).drive != "" or ".." in parts


def pin_data_paths(data: MutableMapping[str, Any], root: str, what: str = "client config from the server") -> None:
    """Set ``data.root`` to the node's own ``root`` and refuse any other path the server chose outside it.

    Every string of ``data`` (nested site configs included, ``_target_`` and ``layout`` excepted) must be
    relative without ``..``: the datamodules join their folder keys to their root, and a relative
    ``split_file`` and a nested site's ``root`` and ``split_file`` are joined here (elsewhere they are read from the working
    directory). A string that is no
    path (a case regex, a class name) has no leading ``/`` or ``..`` part and passes unchanged.
    """
    def visit(node: Any, key: str) -> None:
        if isinstance(node, MutableMapping):
            for k, v in node.items():
                if k not in ("_target_", "layout"):
                    visit(v, f"{key}.{k}")
                if k in ("root", "split_file") and isinstance(v, str) and v:  # a site's own (data.sites.<s>.*):
                    node[k] = os.path.join(str(root), v)  # under this node's root, not the working folder (audits)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                visit(v, f"{key}[{i}]")
        elif isinstance(node, str) and _escapes(node):
            raise ConfigError(f"{what}: {key}={node!r} refused: this node reads only under its own data-root "
                              f"{root!r} (a path from the server must be relative, without '..')")

    if not isinstance(data, MutableMapping):
        raise ConfigError(f"{what}: data is not a mapping ({type(data).__name__})")
    visit({k: v for k, v in data.items() if k != "root"}, "data")
    data["root"] = str(root)
    if data.get("split_file"):
        data["split_file"] = os.path.join(str(root), str(data["split_file"]))
