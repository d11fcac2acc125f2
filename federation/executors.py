"""Where the sampled clients of a round run: in this process, one after the other, or as Ray tasks.

An executor maps ``fn(client_id, **kwargs) -> ClientUpdate`` over a round's jobs and returns
``(updates, failures)``. A client that raises, runs past ``timeout_s`` or returns non-finite weights /
metrics is *dropped* from the round with a logged warning (``failures[client_id]`` says why); the loop
decides whether enough clients reported. Nothing an executor does can touch the global model.

* :class:`SequentialExecutor` (default): one process, CPU or one GPU. A timeout cannot pre-empt an
  in-process client; a client that took longer than ``timeout_s`` is dropped after the fact.
* :class:`RayExecutor`: clients as concurrent Ray tasks, ``gpus_per_client`` GPU each where the Ray
  cluster has GPUs, CPU workers otherwise (``pip install -e .[ray]``). Timed-out tasks are cancelled.
"""
from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from federation.messages import ClientUpdate, is_finite

__all__ = ["ClientJob", "SequentialExecutor", "RayExecutor", "ExecutorError", "check_update"]

log = logging.getLogger("federation.executors")
ClientFn = Callable[..., ClientUpdate]


class ExecutorError(RuntimeError):
    """The executor cannot run at all (e.g. Ray is not installed)."""


@dataclass
class ClientJob:
    client_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)


def check_update(client_id: str, update: Any) -> str | None:
    """Why ``update`` must be dropped (None when it is usable)."""
    if not isinstance(update, ClientUpdate):
        return f"returned a {type(update).__name__}, not a ClientUpdate"
    if update.client_id != client_id:
        return f"returned an update for client {update.client_id!r}"
    if not is_finite(update):
        return "returned non-finite weights or metrics"
    return None


def _drop(failures: dict[str, str], cid: str, reason: str) -> None:
    failures[cid] = reason
    log.warning("client %s dropped from the round: %s", cid, reason)


class SequentialExecutor:
    """Run clients one after the other in this process (see the module docstring)."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self.timeout_s = None if timeout_s in (None, 0) else float(timeout_s)

    def map(self, fn: ClientFn, jobs: Sequence[ClientJob],
            on_done: Callable[[str, bool], None] | None = None) -> tuple[list[ClientUpdate], dict[str, str]]:
        updates: list[ClientUpdate] = []
        failures: dict[str, str] = {}
        for job in jobs:
            t0 = time.perf_counter()
            try:
                update = fn(job.client_id, **job.kwargs)
            except Exception as exc:  # noqa: BLE001 - a failing client must not stop the round
                _drop(failures, job.client_id, f"raised {type(exc).__name__}: {exc}")
                log.debug("client %s traceback:\n%s", job.client_id, traceback.format_exc())
                update = None
            if update is not None:
                elapsed = time.perf_counter() - t0
                reason = check_update(job.client_id, update)
                if reason is None and self.timeout_s is not None and elapsed > self.timeout_s:
                    reason = f"timed out ({elapsed:.1f} s > {self.timeout_s:.1f} s)"
                if reason is None:
                    updates.append(update)
                else:
                    _drop(failures, job.client_id, reason)
            if on_done is not None:
                on_done(job.client_id, job.client_id not in failures)
        return updates, failures

    def shutdown(self) -> None:
        pass


def _import_ray():
    try:
        import ray  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExecutorError("federation.executor=ray needs Ray: install the extra with "
                            "`pip install -e .[ray]` (or `pip install 'ray[default]'`), "
                            "or use federation/executor=sequential") from exc
    return ray


def _with_device(fn: ClientFn, accelerator: str, client_id: str, kwargs: dict[str, Any]) -> ClientUpdate:
    """Ray task body: pin the Trainer's accelerator to what the task was given, then run ``fn``."""
    cfg = kwargs.get("cfg")
    if cfg is not None:
        from omegaconf import open_dict

        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.trainer.accelerator = accelerator
            cfg.trainer.devices = 1
        kwargs = {**kwargs, "cfg": cfg}
    return fn(client_id, **kwargs)


class RayExecutor:
    """Clients as concurrent Ray tasks (see the module docstring).

    Args:
        num_workers: concurrent clients (a local Ray instance is started with this many worker slots
            of ``cpus_per_client`` CPUs when Ray is not initialised yet).
        gpus_per_client: GPUs per task where the cluster has GPUs (1 = one client per GPU); ignored,
            with a warning, on a cluster without GPUs (clients then run on CPU workers).
        cpus_per_client: CPUs per task.
        timeout_s: per-round wall-clock limit; unfinished tasks are cancelled and dropped.
        address: Ray cluster address (None: start / reuse a local instance).
    """

    def __init__(self, num_workers: int = 2, gpus_per_client: float = 1.0, cpus_per_client: float = 1.0,
                 timeout_s: float | None = None, address: str | None = None) -> None:
        ray = _import_ray()
        self.ray = ray
        if not ray.is_initialized():
            kw: dict[str, Any] = dict(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
            if address:
                kw["address"] = address
            else:
                kw["num_cpus"] = max(1, int(round(num_workers * cpus_per_client)))
            ray.init(**kw)
            self._started = True
        else:
            self._started = False
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if gpus_per_client and gpus <= 0:
            log.warning("RayExecutor: the Ray cluster has no GPU; clients run on CPU workers")
        self.gpus_per_client = float(gpus_per_client) if gpus > 0 else 0.0
        self.cpus_per_client = float(cpus_per_client)
        self.num_workers = int(num_workers)
        self.timeout_s = None if timeout_s in (None, 0) else float(timeout_s)
        self._remote = ray.remote(_with_device).options(
            num_cpus=self.cpus_per_client, num_gpus=self.gpus_per_client, max_retries=0)

    def map(self, fn: ClientFn, jobs: Sequence[ClientJob],
            on_done: Callable[[str, bool], None] | None = None) -> tuple[list[ClientUpdate], dict[str, str]]:
        ray = self.ray
        accelerator = "gpu" if self.gpus_per_client > 0 else "cpu"
        pending = {self._remote.remote(fn, accelerator, j.client_id, j.kwargs): j.client_id for j in jobs}
        updates: list[ClientUpdate] = []
        failures: dict[str, str] = {}
        deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
        while pending:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not done:  # deadline passed
                for ref, cid in pending.items():
                    ray.cancel(ref, force=True)
                    _drop(failures, cid, f"timed out (> {self.timeout_s:.1f} s); task cancelled")
                    if on_done is not None:
                        on_done(cid, False)
                break
            for ref in done:
                cid = pending.pop(ref)
                try:
                    update = ray.get(ref)
                    reason = check_update(cid, update)
                except Exception as exc:  # noqa: BLE001 - RayTaskError wraps the client's exception
                    cause = getattr(exc, "cause", None) or exc
                    update, reason = None, f"raised {type(cause).__name__}: {cause}"
                if reason is None:
                    updates.append(update)
                else:
                    _drop(failures, cid, reason)
                if on_done is not None:
                    on_done(cid, reason is None)
        order = {j.client_id: i for i, j in enumerate(jobs)}
        updates.sort(key=lambda u: order[u.client_id])  # aggregation order independent of finish order
        return updates, failures

    def shutdown(self) -> None:
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
