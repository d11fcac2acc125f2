"""One round on the Ray transport's pool (:class:`~federation.transports.ray.RayExecutor`): each job goes to an
idle worker, results are collected as they finish, and a client still running at ``timeout_s`` is dropped, its
worker killed and replaced while the round goes on.

The driver never blocks on a replacement: its check and data build (:meth:`RayWorker.check_data`) run beside the
other clients and it takes jobs once they end (the round returns once its replacements are up, as before).
Every finished result is collected (a zero-timeout ``ray.wait``) before any client is judged late, so a client
is dropped for time only if it has not finished when its limit is checked. A review: a replacement's blocking
set-up (8 s of data) let two clients finish meanwhile; one result was collected per pass, and the other,
finished in 11 s of a 12 s limit, was dropped as timed out and its worker replaced in turn.
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from federation.core.messages import ClientUpdate
from federation.errors import FederationError
from federation.transports import ClientFn, ClientJob, check_update, client_user_error, drop
from federation.transports.ray_worker import WEIGHTS_REF

if TYPE_CHECKING:
    from federation.transports.ray import RayExecutor

__all__ = ["RayRound", "shared_weights", "LIVENESS_S"]

LIVENESS_S = 3.0  # the longest the driver waits on ray.wait before checking that its Ray node is alive
RESTARTS = 3  # replacements of a replacement that died while building its data, per round, before the run stops


def shared_weights(ray: Any, jobs: Sequence[ClientJob]) -> dict[str, dict[str, Any]]:
    """Each job's kwargs with its server message's weights put in Ray's object store once per distinct set
    of tensors (every client of a round gets the same global tensors, in a mapping of its own), sent as
    ``WEIGHTS_REF`` beside a weightless message; :meth:`RayWorker.run` puts them back. A review: each client's
    call pickled the whole global model again (a copy per call in the object store for a large 3D net)."""
    refs: dict[tuple, Any] = {}  # the tensors stay alive in ``jobs`` meanwhile, so their ids are not reused
    out = {}
    for job in jobs:
        msg = job.kwargs.get("server_message")
        if msg is None or not msg.weights:
            out[job.client_id] = job.kwargs
            continue
        key = tuple((k, id(v)) for k, v in msg.weights.items())  # the same tensors: one put
        ref = refs.get(key)
        if ref is None:
            ref = refs[key] = ray.put(dict(msg.weights))
        out[job.client_id] = {**job.kwargs, "server_message": dataclasses.replace(msg, weights={}), WEIGHTS_REF: ref}
    return out


class RayRound:
    """The jobs of one ``map`` call on ``ex``'s checked pool (see the module docstring)."""

    def __init__(self, ex: RayExecutor, fn: ClientFn, jobs: Sequence[ClientJob],
                 on_done: Callable[[str, bool], None] | None) -> None:
        self.ex, self.ray, self.fn, self.jobs, self.on_done = ex, ex.ray, fn, jobs, on_done
        self.by_id = {j.client_id: j for j in jobs}
        self.shipped = shared_weights(ex.ray, jobs)
        self.idle, self.queue = list(ex._pool), list(jobs)
        self.running: dict[Any, tuple[Any, str, float]] = {}  # client ref -> (actor, client id, start)
        self.starting: dict[Any, Any] = {}  # check ref -> replacement actor, not yet taking jobs
        self.updates: list[ClientUpdate] = []
        self.failures: dict[str, str] = {}
        self.restarts = 0  # replacements that died in their start-up check this round

    def run(self) -> tuple[list[ClientUpdate], dict[str, str]]:
        """Updates in jobs order (aggregation independent of finish order) and the dropped clients' reasons; the
        round ends with its replacements up (a full pool; a node that died under a worker is seen while waiting)."""
        while self.queue or self.running or self.starting:
            self.ex._check_node(self.jobs, cheap=True)  # before Ray is asked for more on a node already gone
            self._submit()
            for ref in self._ready():
                if ref in self.starting:
                    self._started(ref)
                else:
                    self._result(ref)
            self._drop_late()
        order = {j.client_id: i for i, j in enumerate(self.jobs)}
        self.updates.sort(key=lambda u: order[u.client_id])
        return self.updates, self.failures

    def _submit(self) -> None:
        """Send queued jobs to idle workers; a client's time counts from here."""
        while self.idle and self.queue:
            actor, job = self.idle.pop(0), self.queue.pop(0)
            ref = actor.run.remote(self.fn, self.ex.accelerator, job.client_id, self.shipped[job.client_id])
            self.running[ref] = (actor, job.client_id, time.monotonic())

    def _wait_s(self) -> float:
        """Until the next client's limit, at most ``LIVENESS_S`` (a dead node never completes a ref)."""
        timeout = self.ex.timeout_s
        if timeout is None or not self.running:
            return LIVENESS_S
        first = min(t for _, _, t in self.running.values())
        return min(LIVENESS_S, max(0.0, first + timeout - time.monotonic()))

    def _ready(self) -> list[Any]:
        """Every client and replacement check finished by now, waiting up to :meth:`_wait_s` for the first."""
        refs = [*self.running, *self.starting]
        if not refs:
            return []
        done, rest = self.ray.wait(refs, num_returns=1, timeout=self._wait_s())
        if not done:
            self.ex._check_node(self.jobs)
        return [*done, *self._finished(rest)]

    def _finished(self, refs: list[Any]) -> list[Any]:
        """Those of ``refs`` already finished (no waiting)."""
        return self.ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []

    def _started(self, ref: Any) -> None:
        """A replacement passed its check: it takes jobs from now on. One that died in it (killed for memory while
        building its data) is replaced again, up to :data:`RESTARTS` a round (a review: its Ray error ended the run
        with a traceback, the round's finished updates lost)."""
        actor = self.starting.pop(ref)
        try:
            self.ex._accept(ref, actor, self.jobs)
        except Exception as exc:  # noqa: BLE001 - the user's DataError and Ray's own errors alike
            if not self._worker_lost(exc):
                raise
            if self.restarts >= RESTARTS:
                raise FederationError(f"Ray workers died {self.restarts + 1} times while building their data in one "
                                      f"round (last: {type(exc).__name__}); see the Ray logs (memory?)") from exc
            self.restarts += 1
            self._replace(actor)
            return
        self.idle.append(actor)

    def _worker_lost(self, exc: BaseException) -> bool:
        """The worker died (``RayActorError``), was killed for memory (``OutOfMemoryError``), crashed or lost its
        node or objects; not a client's own error (``RayTaskError``) nor a set-up that would fail again (a runtime
        env, an unschedulable actor), which stay the errors they were."""
        names = ("RayActorError", "OutOfMemoryError", "WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError",
                 "ObjectLostError")
        lost = tuple(c for c in (getattr(self.ray.exceptions, n, None) for n in names) if isinstance(c, type))
        return isinstance(exc, lost) and not isinstance(exc, self.ray.exceptions.RayTaskError)

    def _replace(self, actor: Any) -> None:
        """Kill ``actor`` and start its replacement's check without waiting for it."""
        self.ex._retire(actor)
        fresh = self.ex._new_actor()
        self.starting.update(self.ex._start_checks([fresh], self.jobs, fresh_token=not self.starting))

    def _result(self, ref: Any) -> None:
        """Collect a finished client: its update, or why it is dropped (the user's error stops the run)."""
        actor, cid, _ = self.running.pop(ref)
        try:
            update = self.ex._get(ref, self.jobs)
            reason = check_update(cid, update, self.by_id[cid])
            self.idle.append(actor)
        except Exception as exc:  # noqa: BLE001 - RayTaskError wraps the client's exception
            update = None
            if self._worker_lost(exc):  # replaced (a review: an OOM-killed worker went back to the idle list,
                # and every later call to it failed at once with the same error, dropping most clients of a round)
                reason = f"its Ray worker died ({type(exc).__name__})"
                self._replace(actor)
            else:
                cause = getattr(exc, "cause", None) or exc
                fatal = client_user_error(cid, cause)
                if fatal is not None:  # the user's to mend (a setting, a file): every round would fail
                    raise fatal from exc
                reason = f"raised {type(cause).__name__}: {cause}"
                self.idle.append(actor)
        if reason is None:
            self.updates.append(update)
        else:
            drop(self.failures, cid, reason)
        self._finish(cid, reason is None)

    def _drop_late(self) -> None:
        """Drop the clients still running past ``timeout_s``; one that has finished is collected next pass."""
        timeout = self.ex.timeout_s
        if timeout is None:
            return
        now = time.monotonic()
        late = [ref for ref, (_, _, t0) in self.running.items() if now - t0 >= timeout]
        finished = set(self._finished(late))
        for ref in (r for r in late if r not in finished):
            actor, cid, _ = self.running.pop(ref)
            self._replace(actor)  # a Ray actor task cannot be cancelled: kill its worker
            drop(self.failures, cid, f"timed out (> {timeout:.1f} s); its worker was replaced")
            self._finish(cid, False)

    def _finish(self, cid: str, ok: bool) -> None:
        if self.on_done is not None:
            self.on_done(cid, ok)
