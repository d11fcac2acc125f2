"""Loading and saving nets with their configs: framework checkpoints and deployable ``*.pt`` exports.

Shared by prediction (``experiments/predict.py``) and distillation (teacher loading, student export), so
"which net is in this file, does it match what I expect, load it safely" is answered in one place.
Every load uses ``torch.load(weights_only=True)``: our checkpoints hold tensors and plain configs only.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_modules.atomic import save_torch
from lightning_modules.base import build
from lightning_modules.errors import CheckpointError, ConfigError, one_line
from lightning_modules.safe_load import load_checkpoint
from lightning_modules.targets import no_downloads

#: net hyper-parameters compared between a checkpoint's stored net config and an expected one.
ARCH_KEYS = ("_target_", "in_channels", "classes", "preset", "width", "filters", "encoder_name", "decoder")


def state_mismatch(expected: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """What keeps the state dict ``given`` from loading strictly into a model whose state is ``expected``,
    in one line (torch's own message puts every key on lines of its own after a colon)."""
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]  # torch lets it be
    unexpected = [k for k in given if k not in expected]
    reshaped = [k for k in expected if k in given and hasattr(given[k], "shape")
                and tuple(given[k].shape) != tuple(expected[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} key(s) missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape (first: {k}, {list(given[k].shape)} in the file, "
                     f"{list(expected[k].shape)} here)")
    return "; ".join(parts)


def load_strict(module: nn.Module, state: Mapping[str, Any], error: str, source: str | None = None) -> None:
    """``module.load_state_dict(state)`` (strict); a mismatch is one :class:`CheckpointError`: ``error``, then
    :func:`state_mismatch` (torch's own first line when no key or shape differs). ``source`` (the file, as the
    user named it): weights that are not finite are refused naming it (a trust review: a checkpoint of NaN
    weights predicted an all-background mask, exit 0)."""
    if source is not None:
        bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
               and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{source} holds non-finite (NaN or inf) weights in {len(bad)} tensor(s) (first: "
                                  f"{bad[0]}): a run that diverged, or a damaged file")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        why = state_mismatch(module.state_dict(), state) or one_line(err)
        raise CheckpointError(f"{error}: {why}") from err


def stored_net_cfg(ckpt: Mapping[str, Any], path: str | Path, what: str = "checkpoint") -> Any:
    """The net config a checkpoint stores (``hyper_parameters.net``), made to build offline
    (:func:`lightning_modules.targets.no_downloads`); a Hub model name is a :class:`CheckpointError`."""
    stored = (ckpt.get("hyper_parameters") or {}).get("net")
    if not isinstance(stored, Mapping):
        return stored
    return file_net_cfg(stored, f"{what} {path} net")


def file_net_cfg(stored: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A net config read from a file, made to build offline, and building a net: ``_partial_`` would give a
    ``functools.partial`` that failed later in a traceback (security audit)."""
    if stored.get("_partial_"):
        raise CheckpointError(f"{what}._partial_={stored['_partial_']!r} refused: a stored net config builds a "
                              f"network, not a partial")
    try:
        return no_downloads(stored, what)
    except ConfigError as err:
        raise CheckpointError(str(err)) from err


def net_state(ckpt: Mapping[str, Any], path: str | Path, expected: Mapping | None = None,
              what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], Mapping | None]:
    """``(net state dict, stored net config)`` of a framework module checkpoint or a bare state dict.

    Raises :class:`CheckpointError` naming ``path`` when the stored net config differs from ``expected``
    in ``_target_`` or an architecture hyper-parameter (:data:`ARCH_KEYS`).
    """
    if "state_dict" not in ckpt:
        if not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise CheckpointError(f"{what} {path} has no 'state_dict' and is not a state dict")
        return dict(ckpt), None
    stored = stored_net_cfg(ckpt, path, what)
    if isinstance(stored, Mapping) and isinstance(expected, Mapping):
        diffs = [f"{k}: checkpoint {stored.get(k)!r} vs config {expected.get(k)!r}"
                 for k in ARCH_KEYS if k in stored and k in expected and stored.get(k) != expected.get(k)]
        if diffs:
            raise CheckpointError(f"{what} {path} is another architecture ({'; '.join(diffs)})")
    # a net trained under a regulariser branch (paper 003's VAE) deploys without it: keep the inner net
    prefix = "net.net." if (ckpt.get("hyper_parameters") or {}).get("regulariser") else "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise CheckpointError(f"{what} {path} has no 'net.*' weights (not a framework module checkpoint?)")
    return state, stored


def net_from_checkpoint(path: str | Path, expected: Mapping | None = None, what: str = "checkpoint") -> nn.Module:
    """Rebuild a net from a framework checkpoint's own net config and load its weights strictly."""
    ckpt = load_checkpoint(path, what)
    state, stored = net_state(ckpt, path, expected, what)
    cfg = stored if isinstance(stored, Mapping) else expected
    if not isinstance(cfg, Mapping):
        raise CheckpointError(f"{what} {path} stores no net config; give the model config explicitly")
    net = build(dict(cfg), what=f"{what} {path} net")
    load_strict(net, state, f"{what} {path} does not match its net config", source=f"{what} {path}")
    return net


def save_net(path: str | Path, net: nn.Module, net_cfg: Mapping | None, **meta: Any) -> Path:
    """Write a deployable ``{"state_dict", "net" (its _target_ config), **meta}`` atomically."""
    payload = {"state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
               "net": dict(net_cfg) if net_cfg is not None else None, **meta}
    save_torch(payload, path)
    return Path(path)


def load_net(path: str | Path) -> nn.Module:
    """Rebuild a net written by :func:`save_net` (``weights_only=True``)."""
    payload = load_checkpoint(path, "net file")
    if not isinstance(payload.get("net"), Mapping):
        raise CheckpointError(f"net file {path} stores no net config")
    cfg = file_net_cfg(payload["net"], f"net file {path} net")
    try:
        net = build(cfg, what="net")
    except ConfigError as err:
        raise CheckpointError(str(err)) from err
    net.load_state_dict(payload["state_dict"])
    return net
