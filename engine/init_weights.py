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
does), saying how many of each there were. ``init_weights_module=<dotted path>`` loads the file into that sub-module
of the net instead (``encoder``: an ImageNet-style backbone the user saved, keys ``conv1.weight``, ``layer1.0...``),
with the same strict or matching rules against that sub-module's tensors.
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

from lightning_modules.atomic import file_sha256
from lightning_modules.checkpoints import load_strict, net_state, state_mismatch
from lightning_modules.errors import CheckpointError, ConfigError
from lightning_modules.safe_load import load_checkpoint

log = logging.getLogger("engine.init_weights")

KEY = "init_weights"
STRICT = "init_weights_strict"
MODULE = "init_weights_module"
#: the file's SHA-256, recorded beside its path in ``config.yaml`` (and W&B's config): which weights, not only where
SHA = "init_weights_sha256"


def check_init_weights(cfg: DictConfig) -> None:
    """Before any data is read: ``init_weights`` names a file that loads into the net this run builds (keys,
    shapes, finite values: a distillation's teacher does not train first for a student the file does not fit) and
    goes with a run that trains a new net from it; one error naming the key otherwise. The path is made absolute
    in ``cfg`` (``config.yaml`` says where it was; a Flower ServerApp or a Ray driver elsewhere finds it) and the
    file's SHA-256 is recorded beside it (``init_weights_sha256``: a file replaced at the same path is told apart)."""
    path = cfg.get(KEY)
    strict = cfg.get(STRICT, True)
    if not isinstance(strict, bool):
        raise ConfigError(f"{STRICT}={strict!r} must be true or false")
    module = _module(cfg)
    if path in (None, ""):
        if module is not None:
            raise ConfigError(f"{MODULE}={module} names where the file's tensors load, but no {KEY}= file is given")
        return
    given = Path(str(path)).expanduser()
    if not given.exists() and not given.is_symlink():
        where = "" if given.is_absolute() else f" (relative to the working directory {Path.cwd()})"
        raise ConfigError(f"{KEY}={path}: no such file{where}; a run's checkpoints/best.ckpt, a student.pt or a "
                          f"global_final.pt")
    if given.is_dir():  # a walkthrough: a run's folder or its checkpoints/ gave an IsADirectoryError traceback
        inside = [str(given / name) for name in ("checkpoints/best.ckpt", "best.ckpt", "student.pt", "global_final.pt")
                  if (given / name).is_file()]
        hint = f": name the file in it, e.g. {KEY}={inside[0]}" if inside else (
            ": name a file, a run's checkpoints/best.ckpt, a student.pt or a global_final.pt")
        raise ConfigError(f"{KEY}={path} is a folder{hint}")
    if not given.is_file():  # before it is hashed: a FIFO blocked the run for ever, /dev/zero read for ever (a review)
        what = "a link to nothing" if not given.exists() else "not a regular file (a FIFO, socket or device)"
        raise ConfigError(f"{KEY}={path} is {what}; a run's checkpoints/best.ckpt, a student.pt or a global_final.pt")
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
    with open_dict(cfg):
        cfg[KEY] = os.path.abspath(given)
        cfg[SHA] = file_sha256(cfg[KEY])
    if (cfg.get("module") or {}).get("net") is not None or cfg.get("model") is not None:  # else: at the load itself
        load_init_weights(trained_net(cfg), cfg[KEY], strict, quiet=True, module=module)  # data: nothing in it runs


def trained_net(cfg: DictConfig) -> nn.Module:
    """A fresh copy of the net the run trains (``module.net``, wrapped by ``module.regulariser`` when set): the
    student of a distillation, the global model of a federation."""
    from lightning_modules.base import build_net

    module = cfg.get("module") or {}
    node = module.get("net") if module.get("net") is not None else cfg.get("model")
    return build_net(node, module.get("regulariser"))


def file_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The net's state dict in ``path`` (any of the forms the module docstring lists)."""
    ckpt = load_checkpoint(path, KEY)
    if "state_dict" in ckpt and "hyper_parameters" not in ckpt and "net" in ckpt:  # lightning_modules save_net
        state = ckpt["state_dict"]
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{KEY} {path}: its 'state_dict' is not a state dict")
        return dict(state)
    if "state_dict" not in ckpt and not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise CheckpointError(f"{KEY} {path} holds no net's weights (a server.pt or a client store file?): give a "
                              f"run's checkpoints/best.ckpt, a student.pt or a federation's global_final.pt")
    state, _ = net_state(ckpt, path, what=KEY)
    return state


def target(net: nn.Module, state: Mapping[str, Any]) -> nn.Module:
    """``net``, or the net a regulariser wraps (``net.net``, paper 003's VAE branch) when the file's tensors are
    that inner net's: a run's checkpoint keeps the inner net's (``net_state`` leaves the branch out), a federation's
    ``global_final.pt`` of a regularised net the whole wrapper's (a review: a regularised run loaded no file)."""
    inner = getattr(net, "net", None)
    if not isinstance(inner, nn.Module):
        return net
    return inner if len(set(state) & set(inner.state_dict())) > len(set(state) & set(net.state_dict())) else net


def submodule(net: nn.Module, path: str) -> nn.Module:
    """The sub-module ``path`` (dotted, as ``get_submodule`` takes it) of the net a regulariser wraps when it has
    one there, else of ``net`` itself (``net.encoder`` of the wrapper reaches the same); a path naming none is one
    :class:`ConfigError` listing the net's top-level children, so a typo shows what there is."""
    inner = getattr(net, "net", None)
    bases = [inner, net] if isinstance(inner, nn.Module) else [net]
    for base in bases:
        try:
            return base.get_submodule(path)
        except AttributeError:
            continue
    names = ", ".join(name for name, _ in bases[0].named_children()) or "none"
    raise ConfigError(f"{MODULE}={path} names no sub-module of the net ({type(bases[0]).__name__}); its top-level "
                      f"children: {names}")


def load_init_weights(net: nn.Module, path: str | Path, strict: bool = True, quiet: bool = False,
                      module: str | None = None) -> dict[str, int]:
    """Load ``path`` into ``net`` (strict, or by matching name and shape), or into its sub-module ``module``
    (:func:`submodule`); returns the counts of tensors loaded, kept at their fresh initialisation (of the net, or
    of that sub-module), and unused in the file. Non-finite weights are refused (a diverged run). ``quiet``: a
    check only (:func:`check_init_weights`), the warning is for the load that counts."""
    state = file_state(path)
    net = target(net, state) if module is None else submodule(net, module)
    own = net.state_dict()
    source = f"{KEY} {path}"  # as load_checkpoint names it
    if strict:
        into = "net than the run builds" if module is None else f"module than the net's {MODULE}={module}"
        error = f"{source} holds another {into} ({STRICT}=false loads the tensors that match)"
        why = state_mismatch(own, state)  # compared here: smp's ResNet encoder drops a file's fc.* in its own
        if why:  # load_state_dict, so a classifier's file loaded "strictly" with two tensors unused
            raise CheckpointError(f"{error}: {why}")
        load_strict(net, state, error, source=source)
        return {"loaded": len(state), "kept": 0, "unused": 0}
    match = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not any(not k.endswith("num_batches_tracked") for k in match):
        raise CheckpointError(f"{source}: none of its {len(state)} tensors matches one of the net's by name and "
                              f"shape (another architecture?)")
    load_strict(net, {**own, **match}, f"{source} does not load", source=source)
    kept = [k for k in own if k not in match]
    counts = {"loaded": len(match), "kept": len(kept), "unused": len(state) - len(match)}
    if (kept or counts["unused"]) and not quiet:
        first = f" (first: {kept[0]}{_shapes(kept[0], state, own)})" if kept else ""
        into = "the net's" if module is None else f"{module}'s"  # the counts are of that sub-module's tensors
        log.warning("%s: loaded %d of %s %d tensors; %d keep their fresh initialisation%s; %d of the file's "
                    "are unused", source, counts["loaded"], into, len(own), counts["kept"], first, counts["unused"])
    return counts


def _shapes(key: str, state: Mapping[str, Any], own: Mapping[str, Any]) -> str:
    if key in state:
        return f": {list(state[key].shape)} in the file, {list(own[key].shape)} here"
    return ": not in the file"


def _module(cfg: Any) -> str | None:
    value = cfg.get(MODULE)
    return None if value in (None, "") else str(value)


def init_from_config(cfg: DictConfig, net: nn.Module, quiet: bool = False) -> dict[str, int] | None:
    """Load ``cfg.init_weights`` into ``net`` (or its ``init_weights_module``) when set (the run starts from it);
    None when not set. ``quiet``: only the counts are wanted (a resumed run, whose weights are its checkpoint's)."""
    path = cfg.get(KEY)
    if path in (None, ""):
        return None
    module = _module(cfg)
    recorded = cfg.get(SHA)
    if recorded:  # a review: a distillation's teacher trains for hours between the check and this load, and a
        now = file_sha256(path)  # Flower ServerApp loads when `flwr run` is typed: the weights loaded are those
        if now != str(recorded):  # config.yaml records, or none
            raise ConfigError(f"{KEY}={path} changed since the run recorded it (sha256 {now[:12]}... now, "
                              f"{str(recorded)[:12]}... in its config.yaml): it would train from other weights than "
                              f"it records; start the run again")
    counts = load_init_weights(net, str(path), strict=bool(cfg.get(STRICT, True)), quiet=quiet, module=module)
    if not quiet:
        log.info("%s: the %s starts from %s (%d tensors)", KEY, "net" if module is None else f"net's {module}",
                 path, counts["loaded"])
    return counts


def init_metrics(counts: Mapping[str, int] | None) -> dict[str, int]:
    """``init_weights/loaded``, ``/kept``, ``/unused`` for a run's ``metrics.json`` (none without a file): what
    the log said once, kept with the run's results so a partial load is seen where they are read."""
    return {f"{KEY}/{k}": int(v) for k, v in (counts or {}).items()}


def _as_given(path: Any) -> str | None:
    """An ``init_weights`` value made absolute (``~`` expanded) but not resolved: the path a message shows."""
    return None if path in (None, "") else os.path.abspath(os.path.expanduser(str(path)))


def _absolute(path: Any) -> str | None:
    """An ``init_weights`` value as a resolved absolute path (``~`` expanded, symlinks followed), None when unset: how
    a resume compares them (a link to the file the run started from is that file; its bytes are checked apart)."""
    return None if path in (None, "") else os.path.realpath(_as_given(path))


def resume_difference(saved: Mapping[str, Any], cfg: Any) -> list[str]:
    """A resumed run keeps the weights it started from: ``init_weights`` (compared as resolved absolute paths),
    ``init_weights_strict`` and ``init_weights_module`` as its ``config.yaml`` has them (a review: a resume without
    them rewrote config.yaml with none, and a federation's matrix baselines then trained from a fresh
    initialisation)."""
    out = []
    for key in (KEY, STRICT, MODULE):
        if key not in saved and (key != MODULE or KEY not in saved):  # a run from before init_weights existed
            continue  # (one from before init_weights_module had none: compared as none)
        old, new = saved.get(key), cfg.get(key, True if key == STRICT else None)
        if key == KEY:  # compared resolved, printed as given made absolute (the link a user named)
            differ = _absolute(old) != _absolute(new)
            old, new = _as_given(old), _as_given(new)
        else:
            if key == MODULE:
                old, new = (None if v in (None, "") else str(v) for v in (old, new))
            differ = old != new
        if differ:
            out.append(f"{key}={new!r} (the run's {old!r})")
    return out


def started_file_problem(saved: Mapping[str, Any], cfg: Any) -> str | None:
    """Why a resume cannot go on with the ``init_weights`` file the run started from, or None: the file is gone, or
    holds other bytes than its recorded SHA-256 (a retrained model saved over it). A resumed federation sends its
    local layers and scores its baselines from that file, and a single run counts what it gave (``metrics.json``),
    so a resume needs it as it was. Checked with the other resume checks, before Hydra writes into the run's folder
    (a walkthrough: a deleted file was found only after, and the finished run's folder got a ``failed.json``)."""
    path, old = saved.get(KEY), saved.get(SHA)
    if not isinstance(path, str) or not path:
        return None
    if _absolute(cfg.get(KEY)) != _absolute(path):
        return None  # another path, or none: resume_difference names it
    then = f" (sha256 {str(old)[:12]}... when it started)" if old else ""
    if not os.path.isfile(path):
        return f"{KEY}={path}, the file this run started from, is gone{then}: put it back to resume the run"
    if not old:
        return None  # a run from before the checksum was kept
    new = file_sha256(path)
    if new == str(old):  # config.yaml is data: whatever it holds is compared as text
        return None
    return (f"{KEY}={path} holds other weights than when the run started (sha256 {new[:12]}... now, "
            f"{str(old)[:12]}... then): put back the file it started from to resume the run")
