"""``init_weights=`` under a strategy that keeps layers local (FedBN's batch norm, or any strategy given
``local_keys``): those layers never travel, so the server sends the file's entries of them beside the global
weights (``ServerMessage.init_local``), and a client without stored local state (its first round, or a round after
its state was dropped) starts them from these; a client with stored state ignores them. No client opens the file: a
Flower site never opens a path the server names, and a Ray worker on another node may not have it. They go in every
message, not only until a client has state: the server cannot see a Flower site's store (kept, rolled back or
lost), and they are the local layers only (FedBN: batch norm, a few hundredths of the model). A resumed server
reads them from the same file again (a resume keeps the run's ``init_weights``, engine/init_weights.py).
"""
from __future__ import annotations

from typing import Callable, Mapping

from torch import Tensor

from federation.errors import FederationError

__all__ = ["init_local_entries", "start_local"]


def init_local_entries(init_state: Mapping[str, Tensor] | None, is_local: Callable[[str], bool]) -> dict[str, Tensor]:
    """The entries of ``init_state`` (the net loaded from the file; None without ``init_weights``) that stay local."""
    return {} if init_state is None else {k: v for k, v in init_state.items() if is_local(k)}


def start_local(local_state: dict[str, Tensor], init_local: Mapping[str, Tensor], is_local: Callable[[str], bool],
                client_id: str) -> None:
    """Put the server's ``init_local`` entries into ``local_state`` (a client's fresh net, its first round); each must
    be one of this net's local entries with the same shape and dtype, or the client stops naming it."""
    for key, value in init_local.items():
        own = local_state.get(key)
        if own is None or not is_local(key) or tuple(own.shape) != tuple(value.shape) or own.dtype != value.dtype:
            what = "not a local entry of this net" if own is None or not is_local(key) else \
                f"{value.dtype} {tuple(value.shape)}, the net's is {own.dtype} {tuple(own.shape)}"
            raise FederationError(f"client {client_id}: the server's init_weights entry {key!r} is {what}")
        local_state[key] = value
