"""The Ray transport: a pool of long-lived Ray actors, one client at a time each, reused across rounds.

``num_workers`` actors are created on the first round and kept: a worker builds the base datamodule once
(:func:`federation.runner.get_base_datamodule`) and then only receives the round's ``ServerMessage`` and the
client's indices, so there is no new process per client per round. Each actor holds ``cpus_per_client``
CPUs and ``gpus_per_client`` GPUs (fractions allowed: 0.5 puts two small clients on one GPU). ``gpu_resource``
names the Ray resource that stands for a GPU (``GPU``, or a custom resource such as ``fake_gpu`` declared
with ``local_resources`` - how CI tests placement without a GPU). ``ship_code`` sends the driver's checkout to
every worker (Ray's ``working_dir``; :func:`~federation.transports.ray_cluster.runtime_env`), so the nodes of a
joined cluster need no checkout of their own; without it each node imports the checkout at the driver's path.
``address`` joins an existing cluster
(``ray start --head`` on one node, ``ray start --address=<head>:6379`` on the others); without it a local
instance with ``num_workers * cpus_per_client`` CPUs is started (and stopped by :meth:`shutdown`). Its servers
(GCS, raylet, object manager, agents, workers' gRPC ports) listen on 127.0.0.1 only (:func:`~federation.transports.ray_cluster.loopback_init`);
a cluster joined by ``address`` keeps the addresses its nodes were started with.

Before its first client each worker checks that the data roots of ``cfg.data`` exist on its node: a missing
one is a :class:`~datamodules.errors.DataError` naming the node and the path. A client running longer than
``timeout_s`` is dropped, its actor killed and replaced (the replacement sets up beside the other clients, see
:mod:`~federation.transports.ray_round`); a client that raises is dropped; the round goes on.

The driver waits for its clients in slices of ``LIVENESS_S`` seconds and checks between slices that the Ray
node it runs on is still there (the raylet and GCS of a local instance it started, the node's ``Alive`` flag
in ``ray.nodes()`` otherwise): when the node is gone (its raylet or DashboardAgent killed, an OOM kill) the
run stops with one :class:`~federation.errors.FederationError` line naming the command that continues it
from ``server.pt``, instead of waiting forever for objects Ray can no longer recover. An error Ray raises
because of that loss (an actor "died before finishing" while it was starting) becomes the same line once the
node is seen gone within a few seconds; any other error is raised as it is.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from datamodules.errors import DataError
from federation.core.messages import ClientUpdate
from federation.transports import ClientFn, ClientJob, ExecutorError
from federation.transports.ray_cluster import (check_address, check_reachable, concurrent_clients, connect,
                                                import_ray, loopback_init, runtime_env, worker_env,
                                                write_store_probe)
from federation.transports.code_identity import ROOT, code_fingerprint
from federation.transports.ray_round import LIVENESS_S, RayRound
from federation.transports.ray_worker import RayWorker, missing_data_root

__all__ = ["RayExecutor", "missing_data_root", "LIVENESS_S", "check_address", "concurrent_clients", "worker_env"]

log = logging.getLogger("federation.transports.ray")


def job_store(jobs: Sequence[ClientJob]) -> str | None:
    """The client store path the round's jobs carry (out of process), or None."""
    return next((j.kwargs["store"] for j in jobs if isinstance(j.kwargs.get("store"), str)), None)


def _continue_hint(jobs: Sequence[ClientJob]) -> str:
    """``server.pt`` holds the last finished round: the command that continues the run from it."""
    from omegaconf import OmegaConf

    cfg = next((j.kwargs.get("cfg") for j in jobs if j.kwargs.get("cfg") is not None), None)
    out = OmegaConf.select(cfg, "paths.output_dir", default=None) if cfg is not None else None
    store = job_store(jobs)
    if not out and store and (Path(store).parent / "server.pt").is_file():  # the server's client_store/
        out = Path(store).parent
    if not out:
        return "Continue the run with resume=<its run dir>."
    from engine.continue_command import continue_command, saved_overrides

    run = Path(str(out)).resolve()
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - not under Hydra (a test, a notebook): the run's saved overrides
        overrides = saved_overrides(run)
    return f"server.pt holds the last finished round; continue with: {continue_command(overrides, run)}"


class RayExecutor:
    """A reused pool of Ray actors (see the module docstring). Same contract as every executor:
    ``map(fn, jobs, on_done) -> (updates in jobs order, failures)`` and ``shutdown()``."""

    in_process = False

    def __init__(self, num_workers: int = 2, gpus_per_client: float = 1.0, cpus_per_client: float = 1.0,
                 timeout_s: float | None = None, address: str | None = None, gpu_resource: str = "GPU",
                 local_resources: Mapping[str, float] | None = None, ship_code: bool = False) -> None:
        ray = self.ray = import_ray()
        self.ship_code = bool(ship_code)
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = dict(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                                      runtime_env=runtime_env(self.ship_code))
            if address:
                check_reachable(address)
                kw["address"] = address
            else:
                kw["num_cpus"] = max(1, math.ceil(num_workers * cpus_per_client))
                kw["resources"] = dict(local_resources or {})
            handler = signal.getsignal(signal.SIGTERM)
            # ray.init installs its own SIGTERM handler (sys.exit) in the driver; the run's is kept instead
            try:
                connect(ray, address, kw) if address else loopback_init(ray, **kw)
            except ValueError as exc:  # a runtime_env Ray refuses: with ship_code, a checkout it cannot pack
                if not self.ship_code:
                    raise
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise ExecutorError(f"federation.executor.ship_code=true: Ray could not ship the checkout {ROOT} "
                                    f"({first[:300]})") from None
            if threading.current_thread() is threading.main_thread() and handler is not None:
                signal.signal(signal.SIGTERM, handler)
            self._started = True
        elif self.ship_code and not (ray.get_runtime_context().runtime_env or {}).get("working_dir"):
            raise ExecutorError("federation.executor.ship_code=true: Ray was started in this process without a "
                                "working_dir, and Ray ships a checkout only at ray.init (start it with "
                                "runtime_env=federation.transports.ray_cluster.runtime_env(True), or let the "
                                "executor start it)")
        self.gpu_resource = str(gpu_resource)
        total = float(ray.cluster_resources().get(self.gpu_resource, 0.0))
        gpus = float(gpus_per_client or 0.0)
        if gpus > 0 and total <= 0:
            if self.gpu_resource != "GPU":
                self._refuse(f"federation.executor.gpu_resource={self.gpu_resource}: the Ray cluster has no such "
                             f"resource")
            log.warning("RayExecutor: the Ray cluster has no GPU; clients run on CPU workers")
            gpus = 0.0
        self.num_workers = max(1, int(num_workers))
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        per_node = [float(r.get(self.gpu_resource, 0.0)) for r in nodes]
        fit = concurrent_clients(per_node or [total], gpus, self.gpu_resource == "GPU") if gpus > 0 else self.num_workers
        if fit < 1:
            self._refuse(f"federation.executor.gpus_per_client={gpus:g}: no Ray node holds that much "
                         f"{self.gpu_resource} (per node: {', '.join(f'{r:g}' for r in per_node)})")
        cpus = float(cpus_per_client or 0.0)
        if cpus > 0 and nodes:  # a review: actors asking more CPUs than a node has never started, and the
            # driver waited for them without a word (num_workers x cpus_per_client past the cluster's CPUs)
            per_cpu = [float(r.get("CPU", 0.0)) for r in nodes]
            both = [min(concurrent_clients([g], gpus, self.gpu_resource == "GPU") if gpus > 0 else self.num_workers,
                        concurrent_clients([c], cpus, False)) for g, c in zip(per_node, per_cpu)]
            if sum(both) < 1:
                self._refuse(f"federation.executor.cpus_per_client={cpus:g}: no Ray node holds that many CPUs"
                             f"{' beside its ' + self.gpu_resource if gpus > 0 else ''} (CPUs per node: "
                             f"{', '.join(f'{c:g}' for c in per_cpu)})")
            fit = min(fit, sum(both))
        if fit < self.num_workers:
            log.warning("RayExecutor: %d node(s) with %s %s and %s CPUs, %g %s and %g CPUs per client -> %d concurrent "
                        "clients, not %d", len(nodes), "+".join(f"{g:g}" for g in per_node), self.gpu_resource,
                        "+".join(f"{float(r.get('CPU', 0.0)):g}" for r in nodes), gpus, self.gpu_resource, cpus, fit,
                        self.num_workers)
            self.num_workers = fit
        self.gpus_per_client, self.cpus_per_client = gpus, float(cpus_per_client)
        self.timeout_s = None if timeout_s in (None, 0) else float(timeout_s)
        self.accelerator = "gpu" if gpus > 0 and self.gpu_resource == "GPU" else "cpu"
        opts: dict[str, Any] = dict(num_cpus=self.cpus_per_client, max_restarts=0)
        if gpus > 0:
            opts.update(num_gpus=gpus) if self.gpu_resource == "GPU" else opts.update(resources={self.gpu_resource: gpus})
        self._actor_cls = ray.remote(RayWorker).options(**opts)
        self._pool: list[Any] = []
        self._checked: set[int] = set()
        self._probe: tuple[str, str] | None = None  # (client store, the token its workers must read back)
        self._dead = False
        self._gcs_misses = 0  # consecutive node checks whose ray.nodes() failed (a busy GCS is not a dead one)

    def _refuse(self, why: str) -> None:
        """Raise ``why`` as the run's one line, after stopping the Ray instance this executor started."""
        if self._started:
            self.ray.shutdown()
        raise ExecutorError(why)

    # ------------------------------------------------------------------ pool
    def _new_actor(self) -> Any:
        actor = self._actor_cls.remote()
        self._pool.append(actor)
        return actor

    def _retire(self, actor: Any) -> None:
        """Kill ``actor``; its id leaves ``_checked`` (a replacement's handle may reuse it and must be checked)."""
        self._pool = [a for a in self._pool if a is not actor]
        self._checked.discard(id(actor))
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already dead
            pass

    def _start_checks(self, actors: list[Any], jobs: Sequence[ClientJob], fresh_token: bool = True) -> dict[Any, Any]:
        """Send each fresh actor its check (:meth:`RayWorker.check_data`: code, data roots, client store, the data
        build); returns {check ref: actor}. A timeout counts from the check's end, not from process start.
        ``fresh_token=False`` while other checks are in flight: they read the token written for them."""
        fresh = [a for a in actors if id(a) not in self._checked]
        if not fresh:
            return {}
        cfg = next((j.kwargs.get("cfg") for j in jobs if j.kwargs.get("cfg") is not None), None)
        data = cfg.get("data") if cfg is not None else None
        store = job_store(jobs)
        token = self._probe_token(store, fresh_token) if store else None
        return {a.check_data.remote(data, store, token, code_fingerprint()): a for a in fresh}

    def _probe_token(self, store: str, fresh: bool = True) -> str:
        """A new probe token for each set of checks, but one shared by checks in flight together (a review: each
        replacement wrote its own, so the first of two read the second's and stopped the run with "the client
        store is not the driver's"); a new one where none was written for this store."""
        if fresh or self._probe is None or self._probe[0] != store:
            self._probe = (store, write_store_probe(store))
        return self._probe[1]

    def _accept(self, ref: Any, actor: Any, jobs: Sequence[ClientJob]) -> None:
        """A finished check: its failure is one DataError line naming the node, else the actor may run clients."""
        msg = self._get(ref, jobs)
        if msg:
            raise DataError(msg)
        self._checked.add(id(actor))

    def _prepare(self, actors: list[Any], jobs: Sequence[ClientJob]) -> None:
        """Check fresh actors (:meth:`_start_checks`) and wait until all are up: before a round, nothing is timed."""
        checks = self._start_checks(actors, jobs)
        refs = list(checks)
        while refs and len(self.ray.wait(refs, num_returns=len(refs), timeout=LIVENESS_S)[0]) < len(refs):
            self._check_node(jobs)  # an actor that cannot start on a dead node would be waited for forever
        for ref, actor in checks.items():
            self._accept(ref, actor, jobs)

    def workers(self) -> list[dict[str, Any]]:
        """Node, IP, pid and assigned resources of every live actor (for tests and logs)."""
        return self.ray.get([a.where.remote() for a in self._pool])

    # ------------------------------------------------------------------ liveness
    def _local_gone(self) -> str | None:
        """Why the local instance this executor started is gone (its raylet or GCS process exited; a cheap
        ``poll`` of the processes Ray started), None while they run or for a cluster joined by address."""
        if not self._started:
            return None
        try:
            from ray._private import worker as ray_worker

            dead = sorted({kind for kind, _ in ray_worker._global_node.dead_processes()
                           if kind in ("raylet", "gcs_server")})
        except Exception:  # noqa: BLE001 - a Ray without this (private) API: the node table decides
            return None
        return f"its {' and '.join(dead)} process exited" if dead else None

    def _node_gone(self) -> str | None:
        """Why the driver's Ray node is gone (None while it is alive): a local instance's raylet or GCS
        process exited, or ``ray.nodes()`` marks the node dead or cannot be asked."""
        ray = self.ray
        local = self._local_gone()
        if local:
            return local
        try:
            me = ray.get_runtime_context().get_node_id()
            alive = {n.get("NodeID"): bool(n.get("Alive")) for n in ray.nodes()}
        except Exception as exc:  # noqa: BLE001 - the GCS itself is unreachable: gone once it stays so
            self._gcs_misses += 1
            return f"its GCS cannot be reached ({type(exc).__name__})" if self._gcs_misses >= 3 else None
        self._gcs_misses = 0
        if not alive.get(me, False):
            return "Ray marks it dead"
        return None

    def _check_node(self, jobs: Sequence[ClientJob], cheap: bool = False) -> None:
        """Raise one FederationError line when the driver's Ray node is gone (see the module docstring);
        ``cheap``: only the local processes (no GCS call), as before every submission."""
        why = self._local_gone() if cheap else self._node_gone()
        if why is None:
            return
        self._dead = True
        from federation.errors import FederationError

        raise FederationError(f"the Ray node of this run is gone ({why}: a killed raylet or DashboardAgent, or "
                              f"an out-of-memory kill); the round's clients are lost. {_continue_hint(jobs)}")

    def _get(self, ref: Any, jobs: Sequence[ClientJob]) -> Any:
        """``ray.get`` in slices with the node check between them: a ready result whose copy was in the dead
        node's object store would otherwise be waited for forever ("Attempting to recover lost objects")."""
        while True:
            try:
                return self.ray.get(ref, timeout=LIVENESS_S)
            except self.ray.exceptions.GetTimeoutError:
                self._check_node(jobs)

    def _gone_within(self, seconds: float, jobs: Sequence[ClientJob]) -> None:
        """Raise the node-loss line when the node is, or within ``seconds`` turns out to be, gone (a killed
        DashboardAgent takes its raylet with it a moment later; Ray's error can come first)."""
        deadline = time.monotonic() + seconds
        while True:
            self._check_node(jobs)
            if time.monotonic() >= deadline:
                return
            time.sleep(0.5)

    # ------------------------------------------------------------------ contract
    def map(self, fn: ClientFn, jobs: Sequence[ClientJob],
            on_done: Callable[[str, bool], None] | None = None) -> tuple[list[ClientUpdate], dict[str, str]]:
        from federation.errors import FederationError

        try:
            return self._map(fn, jobs, on_done)
        except (FederationError, DataError, ExecutorError):
            raise
        except Exception as exc:  # noqa: BLE001 - a Ray error raised because the node died is the node-loss line
            try:
                self._gone_within(10.0, jobs)
            except FederationError as gone:
                raise gone from exc
            raise

    def _map(self, fn: ClientFn, jobs: Sequence[ClientJob],
             on_done: Callable[[str, bool], None] | None) -> tuple[list[ClientUpdate], dict[str, str]]:
        while len(self._pool) < min(self.num_workers, max(1, len(jobs))):
            self._new_actor()
        self._prepare(list(self._pool), jobs)
        return RayRound(self, fn, jobs, on_done).run()

    def shutdown(self) -> None:
        if self._dead:  # the node is gone: its actors with it (ray.kill would wait on a raylet that is not there)
            self._pool = []
        for actor in list(self._pool):
            self._retire(actor)
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False
