"""Where the sampled clients of a round run. Every transport is an *executor* with one contract:

    executor.map(fn, jobs: list[ClientJob], on_done=None) -> (updates: list[ClientUpdate], failures: dict[str, str])
    executor.shutdown() -> None

``fn(client_id, **job.kwargs) -> ClientUpdate`` is :func:`federation.runner.run_client` (the server passes it;
kwargs: ``server_message``, ``cfg``, ``indices``, ``store`` and, in process only, ``base``). ``updates`` are
returned in ``jobs`` order whatever the finishing order (aggregation must not depend on it); a client that
raises, times out (``timeout_s``, per client) or returns an unusable update (:func:`check_update`) is left out
of ``updates`` and ``failures[client_id]`` says why (logged as a warning), except a client that raises the
user's error (a bad setting, a missing checkpoint, bad data, a full disk: :func:`client_user_error`), which
stops the federation with that line (it would fail the same way every round); ``on_done(client_id, ok)`` is
called once per job as it finishes. An executor never interprets weights. ``shutdown()`` releases what the
executor started (idempotent); the server calls it in a ``finally``.

Chosen by ``federation/executor=sequential|ray|flower`` (a ``_target_`` config):
:class:`~federation.transports.inprocess.SequentialExecutor`, :class:`~federation.transports.ray.RayExecutor`,
and the Flower transport in :mod:`federation.transports.flower`; :data:`EXECUTORS` names them by kind and
:func:`executor_kind` tells which one a federation's config asks for (the one place that knows their paths).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from federation.core.messages import ClientUpdate, is_finite, update_problem
from lightning_modules.errors import UserError

__all__ = ["ClientJob", "ClientFn", "EXECUTORS", "Executor", "ExecutorError", "check_update", "client_user_error",
           "drop", "executor_kind"]

log = logging.getLogger("federation.transports")
ClientFn = Callable[..., ClientUpdate]

#: the project's executors by kind (``federation/executor=<kind>``), as their configs' ``_target_`` names them
EXECUTORS = {"sequential": "federation.transports.inprocess.SequentialExecutor",
             "ray": "federation.transports.ray.RayExecutor",
             "flower": "federation.transports.flower.executor.FlowerExecutor"}


def executor_kind(fed: Any) -> str | None:
    """Which of :data:`EXECUTORS` a federation config (``cfg.federation``) runs on: ``"sequential"`` when it names
    none, the kind of a ``_target_`` it names, None for an executor of the user's own."""
    ex = fed.get("executor") if fed is not None and hasattr(fed, "get") else None
    target = str((ex.get("_target_") if ex and hasattr(ex, "get") else None) or "")
    if not target:
        return "sequential"
    return next((kind for kind, path in EXECUTORS.items() if path == target), None)


class ExecutorError(UserError, RuntimeError):
    """The executor cannot run as set up (Ray not installed, a GPU resource the cluster lacks, a checkout Ray
    cannot ship): the user's to mend, so ``experiments.run`` reports it in one line, exit 2, with ``failed.json``
    (it was a RuntimeError, which ended in Hydra's multi-line error and exit 1)."""


@dataclass
class ClientJob:
    """One client's work in a round: ``fn(client_id, **kwargs)``."""

    client_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)


class Executor(Protocol):
    def map(self, fn: ClientFn, jobs: Sequence[ClientJob], on_done: Callable[[str, bool], None] | None = None
            ) -> tuple[list[ClientUpdate], dict[str, str]]: ...

    def shutdown(self) -> None: ...


def check_update(client_id: str, update: Any, job: ClientJob | None = None) -> str | None:
    """Why ``update`` must be dropped (None when it is usable): not an update of ``client_id``, or, against
    the weights ``job`` sent, other entries than were sent or unusable values
    (:func:`~federation.core.messages.update_problem`)."""
    if not isinstance(update, ClientUpdate):
        return f"returned a {type(update).__name__}, not a ClientUpdate"
    if update.client_id != client_id:
        return f"returned an update for client {update.client_id!r}"
    message = job.kwargs.get("server_message") if job is not None else None
    if message is not None:
        return update_problem(update, message.weights)
    return None if is_finite(update) else "returned non-finite weights or metrics"


def client_user_error(client_id: str, exc: BaseException) -> BaseException | None:
    """A :class:`~federation.errors.FederationError` naming ``client_id`` when ``exc`` is the user's error
    (:func:`engine.errors.find_user_error`: a setting, file, data or full disk to mend), else None (a crash
    ``min_clients`` tolerates). A walkthrough found a per-client setting the client's module refused dropping
    that client from every round of a run that then exited 0."""
    from engine.errors import find_user_error, one_line
    from federation.errors import FederationError

    err = find_user_error(exc)
    if err is None:
        return None
    return FederationError(f"client {client_id}: {one_line(err)}")


def drop(failures: dict[str, str], client_id: str, reason: str) -> None:
    """Record (and log) that ``client_id`` is dropped from the round."""
    failures[client_id] = reason
    log.warning("client %s dropped from the round: %s", client_id, reason)
