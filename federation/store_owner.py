"""Which federation a client's stored state belongs to. A run's server keeps one id (``federation_id.txt`` in its run
folder: created at its first start, kept by ``resume=true``, moved aside with the rest by a new run in that folder)
and sends it in every message's config (:data:`FEDERATION_ID`); a client writes it into its store file with its state.

In-process and on Ray a client's store is the run's own ``client_store/``; a Flower site keeps one ``store=`` for
whatever federations its SuperNode serves (docs/deployment.md: ``/var/lib/fedmed/store``), a federated
distillation's stages among them. A review found a site's second federation loading the first's state as its own:
FedBN's batch norm (not the ``init_weights`` file's, whose entries it then ignored), the best-local weights and the
history; a net of another shape failed at ``load_state_dict``. Now a site whose file holds another federation's
state moves it (and its best-local file) to ``<store>/earlier/<that id>/`` and starts fresh, saying so; nothing is
deleted, and the file at ``<store>/<site>.pt`` is always the latest federation's. A file written before ids were
kept is taken as this federation's (a run resumed across the upgrade keeps its state).
"""
from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

from federation.errors import FederationError
from federation.store import ClientStore
from engine.artifacts import atomic_write_text

__all__ = ["FEDERATION_ID", "ID_FILE", "federation_id", "claim_store"]

log = logging.getLogger("federation.runner")

#: the message config's key, and the client store file's
FEDERATION_ID = "federation_id"
ID_FILE = "federation_id.txt"
_ID = re.compile(r"[0-9a-f]{16}")


def federation_id(out: str | os.PathLike) -> str:
    """The run's federation id, from ``<out>/federation_id.txt`` or created there (16 hex digits)."""
    path = Path(out) / ID_FILE
    if path.is_file():
        value = path.read_text(errors="replace").strip()
        if not _ID.fullmatch(value):
            raise FederationError(f"{path} holds {value[:40]!r}, not a federation id (16 hex digits); delete it "
                                  f"to give the run a new one")
        return value
    value = uuid.uuid4().hex[:16]
    atomic_write_text(path, value + "\n")
    return value


def claim_store(store: ClientStore, best_local: ClientStore, client_id: str, fed_id: object) -> None:
    """Before ``client_id`` reads its state for federation ``fed_id`` (None: a message without one, sent by a
    server before ids were kept, or a test's): state of another federation in ``store`` (and ``best_local``) moves
    to ``<store root>/earlier/<its id>/`` (best-local files to ``.../best_local/``), so this federation starts fresh."""
    if not fed_id:
        return
    if not isinstance(fed_id, str) or not _ID.fullmatch(fed_id):  # it names a folder below: no path from a peer
        raise FederationError(f"client {client_id}: the server's {FEDERATION_ID} {str(fed_id)[:40]!r} is not 16 hex "
                              f"digits")
    held = store.load(client_id, FEDERATION_ID)  # checked as a store file is (federation.resume_checks)
    if held is None or str(held) == str(fed_id):
        return
    dest = store.root / "earlier" / str(held)
    for source, folder in ((store, dest), (best_local, dest / "best_local")):
        path = source.path(client_id)
        if path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(path, folder / path.name)
    log.warning("client %s: its store %s held the state of another federation (%s); moved to %s, and this "
                "federation (%s) starts its local state fresh", client_id, store.root, held, dest, fed_id)
