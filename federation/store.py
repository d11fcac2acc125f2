"""Per-client persistent state on disk (FedBN local BN tensors, best local checkpoint state,
allocated shared indices, local metrics history).

One file per client (``<root>/<quoted id>.pt``, a dict key -> object), written atomically (temp file
in the same directory + ``os.replace``) and read with ``torch.load(..., weights_only=True)``. Nothing
is cached in memory, so the server's memory does not grow with the number of clients. Numpy arrays
are stored as tensors with a marker and come back as numpy arrays; numpy scalars become Python
numbers. Other values must be what ``weights_only`` accepts: tensors, str/int/float/bool/None and
lists/tuples/dicts of them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import torch

from lightning_modules.atomic import atomic_output

__all__ = ["ClientStore"]

_SUFFIX = ".pt"
_ND = "__ndarray__"


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {_ND: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_encode(v) for v in obj)
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ND}:
            return obj[_ND].numpy()
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode(v) for v in obj)
    return obj


class ClientStore:
    """Disk-backed ``client_id -> {key: object}`` store; see the module docstring."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, client_id: str) -> Path:
        return self.root / (quote(str(client_id), safe="") + _SUFFIX)

    def index(self) -> list[str]:
        """Client ids that have state on disk (sorted)."""
        return sorted(unquote(p.name[: -len(_SUFFIX)]) for p in self.root.glob("*" + _SUFFIX))

    def _read(self, client_id: str) -> dict[str, Any]:
        p = self.path(client_id)
        if not p.exists():
            return {}
        return torch.load(p, map_location="cpu", weights_only=True)

    def _write(self, client_id: str, data: dict[str, Any]) -> None:
        with atomic_output(self.path(client_id)) as tmp:
            torch.save(data, tmp)

    def save(self, client_id: str, key: str, obj: Any) -> None:
        """Set ``key`` of the client's state to ``obj`` (tensors moved to CPU) and rewrite the file."""
        data = self._read(client_id)
        data[key] = _encode(obj)
        self._write(client_id, data)

    def update(self, client_id: str, values: dict[str, Any]) -> None:
        """Set several keys at once: one read and one atomic write (a client's end of round)."""
        data = self._read(client_id)
        data.update({k: _encode(v) for k, v in values.items()})
        self._write(client_id, data)

    def load(self, client_id: str, key: str, default: Any = None) -> Any:
        """The stored object, or ``default`` when the client or key is absent."""
        data = self._read(client_id)
        return _decode(data[key]) if key in data else default

    def load_all(self, client_id: str) -> dict[str, Any]:
        return _decode(self._read(client_id))

    def keys(self, client_id: str) -> list[str]:
        return sorted(self._read(client_id))

    def delete(self, client_id: str, key: str | None = None) -> None:
        """Remove one key, or the client's whole file when ``key`` is None."""
        if key is None:
            self.path(client_id).unlink(missing_ok=True)
            return
        data = self._read(client_id)
        if key in data:
            del data[key]
            self._write(client_id, data)
