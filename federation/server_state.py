"""What the server checkpoints besides weights: atomic ``torch.save`` and the process RNG states.

``server.pt`` must never be half-written (a killed run resumes from it), and ``resume=true`` must end with
the same weights as an uninterrupted run, so the Python, NumPy and torch generator states travel with it
as tensors and plain numbers (loadable with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from lightning_modules.atomic import save_torch
from lightning_modules.kinds import is_whole
from federation.resume_checks import check_server_state

__all__ = ["save_atomic", "load_server_state", "load_global_weights", "rng_state", "set_rng_state"]

SERVER_KEYS = ("round", "global", "strategy", "history", "best", "store_index", "client_ids", "rng")


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through a temp file renamed over ``path``: readers see the old or the new file."""
    save_torch(obj, path)


def _read(path: Path, kind: str) -> Any:
    """``torch.load(weights_only=True)`` of a federation file; a file that does not load is one line naming it."""
    from federation.errors import FederationError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a zip, a pickle with code, ...
        raise FederationError(f"{path} is not a readable {kind} ({type(exc).__name__}); delete it, or the run dir, "
                              f"to start the federation afresh") from exc


def load_server_state(path: Path) -> dict[str, Any]:
    """``server.pt`` (``weights_only``); a file that does not load, lacks the server's keys or holds what the server
    never writes (:func:`~federation.resume_checks.check_server_state`) is a one-line
    :class:`~federation.errors.FederationError` naming it (delete it, or the run dir, to start afresh)."""
    from federation.errors import FederationError

    state = _read(path, "server checkpoint")
    missing = [k for k in SERVER_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise FederationError(f"{path} is not a server checkpoint (missing {missing}); delete it to start afresh")
    wrong = [k for k, ok in _SERVER_TYPES.items() if not ok(state[k])]
    if wrong:
        raise FederationError(f"{path} is not a server checkpoint this framework wrote ({', '.join(wrong)} of the "
                              f"wrong type); delete it to start afresh")
    check_server_state(state, path)  # what the entries hold: one line naming the key (a crafted file is data)
    return state


def _tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values())


#: what each server.pt entry must be before the server uses it (a crafted file is one line, not a TypeError)
_SERVER_TYPES = {
    "round": lambda v: is_whole(v) and v >= 0,
    "global": lambda v: _tensor_dict(v) and bool(v),
    "strategy": lambda v: isinstance(v, dict),
    "history": lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
    "best": lambda v: isinstance(v, dict),
    "store_index": lambda v: isinstance(v, (list, tuple, dict)),
    "client_ids": lambda v: isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v),
    "rng": lambda v: isinstance(v, dict) and {"python", "numpy", "torch"} <= set(v)
    and isinstance(v["torch"], torch.Tensor),
}


def load_global_weights(path: Path) -> dict[str, torch.Tensor]:
    """A saved global model (``global_best.pt``, ``global_final.pt``; ``weights_only``): one-line
    :class:`~federation.errors.FederationError` naming the file when it does not load or holds no weights."""
    from federation.errors import FederationError

    state = _read(path, "model state")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FederationError(f"{path} is not a model state (a dict of tensors); delete it to start afresh")
    return state


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch CPU generator states, as tensors/numbers (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"python": [int(py_state[0]), torch.tensor(py_state[1], dtype=torch.int64),
                       None if py_state[2] is None else float(py_state[2])],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                      int(np_state[3]), float(np_state[4])],
            "torch": torch.get_rng_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(int(v) for v in py[1].tolist()), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy().astype(np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(state["torch"])
