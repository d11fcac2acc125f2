"""Which federation a client's stored state belongs to. A run's server keeps one id (``federation_id.txt`` in its run
folder: created at its first start, kept by ``resume=true``, moved aside with the rest by a new run in that folder)
and sends it in every message's config (:data:`FEDERATION_ID`); a client writes it into its store file with its state.

In-process and on Ray a client's store is the run's own ``client_store/``; a Flower site keeps one ``store=`` for
whatever federations its SuperNode serves (docs/deployment.md: ``/var/lib/fedmed/store``), a federated
distillation's stages among them. A review found a site's second federation loading the first's state as its own:
FedBN's batch norm (not the ``init_weights`` file's, whose entries it then ignored), the best-local weights and the
history; a net of another shape failed at ``load_state_dict``. Now a site whose file holds another federation's
state moves it (and its best-local file) to ``<store>/earlier/<that id>/`` and starts fresh, saying so; a federation
resumed after another used the site takes its own state back from there. Nothing is deleted or replaced (a
second set-aside of one id goes to ``earlier/<id>-2/``), and ``<store>/<site>.pt`` is always the latest
federation's. A file written before ids were kept is taken as this federation's (a run resumed across the upgrade
keeps its state).
"""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Callable

from federation.errors import FederationError
from federation.resume_checks import FEDERATION_ID_PATTERN
from federation.store import ClientStore
from engine.artifacts import atomic_write_text

__all__ = ["FEDERATION_ID", "ID_FILE", "ID_PATTERN", "federation_id", "claim_store", "store_round"]

log = logging.getLogger("federation.runner")

#: the message config's key, and the client store file's
FEDERATION_ID = "federation_id"
ID_FILE = "federation_id.txt"
ID_PATTERN = FEDERATION_ID_PATTERN  # 16 hex digits


def federation_id(out: str | os.PathLike) -> str:
    """The run's federation id, from ``<out>/federation_id.txt`` or created there (16 hex digits)."""
    path = Path(out) / ID_FILE
    if path.is_file():
        value = path.read_text(errors="replace").strip()
        if not ID_PATTERN.fullmatch(value):
            raise FederationError(f"{path} holds {value[:40]!r}, not a federation id (16 hex digits); delete it "
                                  f"(a resumed run takes the one its server.pt recorded)")
        return value
    value = uuid.uuid4().hex[:16]
    atomic_write_text(path, value + "\n")
    return value


def claim_store(store: ClientStore, best_local: ClientStore, client_id: str, fed_id: object) -> None:
    """Before ``client_id`` reads its state for federation ``fed_id`` (None: a message without one, sent by a
    server before ids were kept, or a test's): state of another federation in ``store`` (and ``best_local``) moves
    to ``<store root>/earlier/<its id>/`` (best-local files to ``.../best_local/``), and this federation's own state,
    set aside there while another one ran (a federation resumed after another used the site), comes back."""
    if not fed_id:
        return
    if not isinstance(fed_id, str) or not ID_PATTERN.fullmatch(fed_id):  # it names a folder below: no path from a peer
        raise FederationError(f"client {client_id}: the server's {FEDERATION_ID} {str(fed_id)[:40]!r} is not 16 hex "
                              f"digits")
    held = store.load(client_id, FEDERATION_ID)  # checked as a store file is (federation.resume_checks)
    if held is not None and str(held) != fed_id:
        dest = _free(store.root / "earlier" / str(held), store.path(client_id).name)
        _move(store, best_local, client_id, dest)
        log.warning("client %s: its store %s held the state of another federation (%s); moved to %s", client_id,
                    store.root, held, dest)
    own = store.root / "earlier" / fed_id
    if not store.path(client_id).exists() and (own / store.path(client_id).name).is_file():
        back = ClientStore(own)
        _move(back, ClientStore(own / "best_local"), client_id, store.root)
        log.warning("client %s: its state of this federation (%s), set aside while another ran, is back from %s",
                    client_id, fed_id, own)


def _free(folder: Path, name: str) -> Path:
    """``folder``, or ``folder-2``, ``-3``... : the first that does not hold ``name`` (nothing set aside is replaced)."""
    n, out = 1, folder
    while (out / name).exists():
        n += 1
        out = folder.with_name(f"{folder.name}-{n}")
    return out


def _move(store: ClientStore, best_local: ClientStore, client_id: str, dest: Path) -> None:
    """The client's store file and best-local file into ``dest`` and ``dest / "best_local"``."""
    for source, folder in ((store, dest), (best_local, dest / "best_local")):
        path = source.path(client_id)
        if path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(path, folder / path.name)


def store_round(store: ClientStore, best_local: ClientStore, client_id: str, rnd: int, write: Callable[[], None]) -> None:
    """``write()`` (the client's state of round ``rnd``) unless the server has closed that round without this
    client (:meth:`ClientStore.close_round`: it timed out); closed while it wrote, what it wrote is rolled back. The
    server marks, then rolls back, so every order of the two ends with nothing of the round kept."""
    if store.round_closed(client_id, rnd):
        log.warning("client %s: round %d was closed without this client's update (it came too late); nothing of "
                    "it is stored", client_id, rnd + 1)
        return
    write()
    if store.round_closed(client_id, rnd):
        for kept in (store, best_local):
            kept.rollback(client_id, rnd)
