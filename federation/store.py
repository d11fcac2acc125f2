"""Per-client persistent state on disk (FedBN local BN tensors, best local checkpoint state,
allocated shared indices, local metrics history).

One file per client (``<root>/<quoted id>.pt``, a dict key -> object), written atomically (temp file
in the same directory + ``os.replace``) and read with ``torch.load(..., weights_only=True)``. Nothing
is cached in memory, so the server's memory does not grow with the number of clients. Numpy arrays
are stored as tensors with a marker and come back as numpy arrays; numpy scalars become Python
numbers. Other values must be what ``weights_only`` accepts: tensors, str/int/float/bool/None and
lists/tuples/dicts of them.

Round-versioned writes (``update(..., round=r)``) keep the state as it was before round ``r`` beside the
new one, so a round that was stopped after some clients wrote their state but before the server saved
``server.pt`` can be run again from where it began: reads ``as of`` round ``r`` and the next write of round
``r`` see the state before the stopped attempt, and :meth:`ClientStore.rollback` drops the attempt for
good (the server does so on resume); once the round's ``server.pt`` is saved, :meth:`ClientStore.commit`
drops the earlier version. A resumed federation then matches an uninterrupted one; before, the
re-run round started from the stopped attempt's BN statistics, history and best-local weights.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np
import torch

from lightning_modules.atomic import save_torch
from federation.errors import FederationError
from federation.resume_checks import BEFORE, check_client_data
from lightning_modules.safe_load import load_checkpoint

__all__ = ["ClientStore", "read_store_file"]

_SUFFIX = ".pt"
_ND = "__ndarray__"
#: the state before the last round-versioned write: ``{"round": r, "data": {...}}``
_BEFORE = BEFORE
#: ``<root>/.closed/<quoted id>/<round>``: rounds the server closed without that client (:meth:`ClientStore.close_round`)
_CLOSED = ".closed"


def read_store_file(path: Path, what: str = "client store", lazy: bool = False) -> dict[str, Any]:
    """One client's file (``weights_only``), checked as this store and the federation's clients write it
    (:func:`~federation.resume_checks.check_client_data`): a bad or crafted file is one line naming it and the key."""
    data = load_checkpoint(path, what, lazy=lazy)  # one line for a file that does not load
    check_client_data(data, path)
    return data


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

    def version(self) -> tuple:
        """What identifies the store's files as they are now (name, inode, size, mtime of each): it changes with
        every write (a write is a rename of a new file) or removal, so a value computed from the files can be
        kept until it does."""
        out = []
        for p in sorted(self.root.glob("*" + _SUFFIX)):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((p.name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def _read(self, client_id: str, lazy: bool = False) -> dict[str, Any]:
        p = self.path(client_id)
        if not p.exists():
            return {}
        return read_store_file(p, f"client store of {client_id!r}", lazy=lazy)  # one line for a bad file

    def _write(self, client_id: str, data: dict[str, Any]) -> None:
        save_torch(data, self.path(client_id))

    @staticmethod
    def _as_of(data: dict[str, Any], round: int | None) -> dict[str, Any]:
        """``data`` as it was before round ``round`` (its latest state when ``round`` is None), without
        the kept earlier version."""
        before = data.get(_BEFORE)
        if round is not None and before is not None and int(before["round"]) >= round:
            return dict(before["data"])
        return {k: v for k, v in data.items() if k != _BEFORE}

    def close_round(self, client_id: str, round: int) -> None:
        """Mark that the server closed ``round`` without ``client_id``'s update (``<root>/.closed/<id>/<round>``):
        a client still running it (a Flower ClientApp past ``timeout_s``, whose message cannot be recalled) then
        keeps nothing of it (:func:`federation.store_owner.store_round`). A review: in the rehearsal its late
        write came after the server's rollback, and the next round started from the dropped round's state."""
        folder = self._closed() / quote(str(client_id), safe="")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(int(round))).touch()
        except OSError as exc:  # a crafted store: a file where the folder goes
            raise FederationError(f"{folder}: cannot mark round {round + 1} closed ({type(exc).__name__}); "
                                  f"remove it") from None

    def round_closed(self, client_id: str, round: int) -> bool:
        return (self.root / _CLOSED / quote(str(client_id), safe="") / str(int(round))).exists()

    def reopen_from(self, round: int) -> None:
        """Forget the marks of ``round`` and later: a resumed (or new) run runs them again. Only plain files named
        by a round number are marks (a security review: a crafted ``²`` or a folder named ``5`` was a traceback)."""
        for mark in self._closed().glob("*/*"):
            if re.fullmatch(r"[0-9]+", mark.name) and int(mark.name) >= round and mark.is_file() \
                    and not mark.is_symlink() and not mark.parent.is_symlink():
                mark.unlink(missing_ok=True)

    def _closed(self) -> Path:
        """``<root>/.closed``, never through a link (a security review: a linked one made resume delete and
        create files outside the run folder)."""
        closed = self.root / _CLOSED
        if closed.is_symlink():
            raise FederationError(f"{closed} is a link; a run writes only into its own folder (remove it)")
        return closed

    def save(self, client_id: str, key: str, obj: Any) -> None:
        """Set ``key`` of the client's state to ``obj`` (tensors moved to CPU) and rewrite the file."""
        data = self._read(client_id)
        data[key] = _encode(obj)
        self._write(client_id, data)

    def update(self, client_id: str, values: dict[str, Any], round: int | None = None) -> None:
        """Set several keys at once: one read and one atomic write (a client's end of round). With
        ``round``: what was written at that round or later is a stopped attempt's and is dropped first, and
        the state before the round is kept beside the new one (see the module docstring); so one
        round-versioned write per client and round, and :meth:`save` for more keys in the same round."""
        data = self._read(client_id)
        encoded = {k: _encode(v) for k, v in values.items()}
        if round is None:
            data.update(encoded)
        else:
            base = self._as_of(data, round)
            data = {**base, **encoded, _BEFORE: {"round": round, "data": base}}
        self._write(client_id, data)

    def rollback(self, client_id: str, round: int) -> bool:
        """Drop for good what was written at round ``round`` or later (a stopped attempt); True if it did."""
        data = self._read(client_id, lazy=True)
        before = data.get(_BEFORE)
        if before is None or int(before["round"]) < round:
            return False
        restored = dict(before["data"])  # memory-mapped: the write below goes to a new file, then a rename
        if restored:
            self._write(client_id, restored)
        else:
            self.path(client_id).unlink(missing_ok=True)
        return True

    def commit(self, client_id: str) -> None:
        """The round is saved (``server.pt``): the kept earlier version is dropped, so a file holds one
        (a best-local file one model, not two)."""
        if _BEFORE in self._read(client_id, lazy=True):
            data = self._read(client_id)
            del data[_BEFORE]
            self._write(client_id, data)

    def load(self, client_id: str, key: str, default: Any = None, round: int | None = None) -> Any:
        """The stored object, or ``default`` when the client or key is absent; ``round``: as of before it."""
        data = self._as_of(self._read(client_id), round)
        return _decode(data[key]) if key in data else default

    def load_all(self, client_id: str, round: int | None = None) -> dict[str, Any]:
        """Every key of the client's state; ``round``: as of before that round."""
        return _decode(self._as_of(self._read(client_id), round))

    def keys(self, client_id: str) -> list[str]:
        return sorted(self._as_of(self._read(client_id), None))

    def delete(self, client_id: str, key: str | None = None) -> None:
        """Remove one key, or the client's whole file when ``key`` is None."""
        if key is None:
            self.path(client_id).unlink(missing_ok=True)
            return
        data = self._read(client_id)
        if key in data:
            del data[key]
            self._write(client_id, data)
