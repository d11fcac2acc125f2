"""``server.pt``: what the federated server writes after each completed round and reads back with
``resume=true``, as plain functions of the :class:`~federation.server.Server`, whose ``checkpoint`` and
``resume`` methods call :func:`save_checkpoint` and :func:`resume_server`. A resume checks the file against
this federation (its model, clients, strategy state and client store) before it restores anything, and drops
what clients stored in a round that stopped before its ``server.pt`` (:func:`drop_stopped_round`), so that
round runs again from the state it began with.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from engine import artifacts
from federation.core.sampling import sample_clients
from federation.errors import FederationError
from federation.resume_checks import check_model_entries, check_resumed_local, check_strategy_state
from federation.runner import best_local_store
from federation.server_state import load_server_state, rng_state, save_atomic, set_rng_state
from federation.store import ClientStore
from federation.store_owner import FEDERATION_ID, ID_FILE, ID_PATTERN

if TYPE_CHECKING:
    from federation.server import Server

__all__ = ["SERVER_CKPT", "save_checkpoint", "client_stores", "resume_server", "drop_stopped_round"]

log = logging.getLogger("federation.server")  # the server's logger, as before this left federation/server.py
SERVER_CKPT = "server.pt"


def save_checkpoint(server: Server, rnd: int) -> None:
    save_atomic({"round": rnd, "global": server.global_state, "strategy": server.strategy.state_dict(),
                 "history": server.history, "best": server.best, "dropped_total": server.dropped_total,
                 "fit_seconds": server.elapsed(),
                 "store_index": server.store.index(), "client_ids": server.client_ids,
                 "federation_id": server.federation_id, "rng": rng_state()}, server.out / SERVER_CKPT)
    for cid in sample_clients(server.client_ids, server.fed.get("clients_per_round"), server.seed, rnd):
        for store in client_stores(server):  # the round is saved: the state before it is not needed
            store.commit(cid)


def client_stores(server: Server) -> list[ClientStore]:
    """The per-client state and, where the evaluation matrix keeps them, the best-local weights."""
    kept = server.store.root / "best_local"  # best_local_store(...) would create it
    return [server.store, *([best_local_store(server.store)] if kept.is_dir() else [])]


def resume_server(server: Server) -> None:
    """With ``resume=true`` and a ``server.pt`` in the run dir: continue after its last round."""
    path = server.out / SERVER_CKPT
    if not server.cfg.get("resume"):
        return
    if not path.is_file():
        log.info("resume: no %s in %s yet, starting fresh", SERVER_CKPT, server.out)
        drop_stopped_round(server, 0)
        return
    state = load_server_state(path)  # types, history, best, RNG layouts, finite weights: one line naming the key
    check_model_entries(state["global"], server.global_state, path, "global")  # this model's names, shapes, dtypes
    if list(state["client_ids"]) != server.client_ids:
        raise FederationError(f"{path} was written for clients {state['client_ids'][:5]}..., this config "
                              f"partitions into {server.client_ids[:5]}...: not the same federation")
    check_strategy_state(state["strategy"], server.strategy, server.global_state, server.client_ids, path)
    missing = set(state["store_index"]) - set(server.store.index())
    if missing:
        raise FederationError(f"client store {server.store.root} lacks clients {sorted(missing)[:5]} "
                              f"recorded in {path}")
    try:  # the entries' types are checked; what they hold is the strategy's and the RNGs' to refuse
        server.global_state = dict(state["global"])
        server.strategy.load_state_dict(state["strategy"])
        server.history, server.best = list(state["history"]), dict(state["best"])
        server.dropped_total = int(state.get("dropped_total", 0))
        server.seconds_before = max(float(state.get("fit_seconds", 0.0)), 0.0)
        server.start_round = int(state["round"]) + 1
        set_rng_state(state["rng"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError, OverflowError) as err:
        raise FederationError(f"{path} does not restore this federation ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); delete it to start afresh") from err
    kept_id(server, state, path)
    drop_stopped_round(server, server.start_round)
    for cid in server.store.index():  # FedBN's BN entries go into this model: its names, shapes, dtypes, finite
        data = server.store._read(cid, lazy=True)
        check_resumed_local(data, server.start_round, server.store.path(cid))  # the history rows, as runner writes
        check_model_entries(data.get("local_state") or {}, server.global_state,
                            server.store.path(cid), "local_state", every=False)
    if server.best.get("round") == server.start_round:  # the run may have stopped before writing that round's best
        server.save_best()
    from federation.records import replay_bests

    replay_bests(server.loggers, server.history)  # W&B's val/<m>_best covers the rounds before the resume too
    artifacts.console.print(f"[bold]resume:[/bold] {path} (rounds 1..{server.start_round} done)")


def kept_id(server: Server, state: dict, path) -> None:
    """The federation id ``server.pt`` recorded is the run's (``federation_id.txt`` written again when it was lost
    or differs): a review found a resume whose id file was deleted moving every client's own state aside."""
    recorded = state.get(FEDERATION_ID)
    if recorded is None:  # a server.pt from before ids were kept: the id file's
        return
    if not isinstance(recorded, str) or not ID_PATTERN.fullmatch(recorded):
        raise FederationError(f"{path}: its {FEDERATION_ID} {str(recorded)[:40]!r} is not 16 hex digits; delete it "
                              f"to start afresh")
    if recorded != server.federation_id:
        log.warning("resume: %s is the run's federation id (server.pt), not %s (%s): written there again", recorded,
                    server.federation_id, server.out / ID_FILE)
        artifacts.atomic_write_text(server.out / ID_FILE, recorded + "\n")
        server.federation_id = recorded


def drop_stopped_round(server: Server, rnd: int) -> None:
    """What clients stored in round ``rnd`` before the run stopped (after their training, before this
    ``server.pt``) is dropped, so the round runs again from the state it began with."""
    server.store.reopen_from(rnd)
    for store in client_stores(server):
        dropped = [cid for cid in store.index() if store.rollback(cid, rnd)]
        if dropped:
            log.info("resume: dropped what %d client(s) stored in the stopped round %d (%s)",
                     len(dropped), rnd + 1, store.root)
