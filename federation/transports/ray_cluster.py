"""Reaching and sizing a Ray cluster for the Ray transport (:mod:`federation.transports.ray`): the address
checks, the local instance on 127.0.0.1, the workers' environment, how many clients fit at once, and the
client-store probe that shows a joined cluster's workers share the run folder."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from pathlib import Path
from typing import Any, Sequence

from federation.transports import ExecutorError
from federation.transports.code_identity import CODE_PACKAGES, ROOT
from federation.transports.ray_worker import DRIVER_CWD, STORE_PROBE

__all__ = ["check_address", "check_reachable", "concurrent_clients", "import_ray", "loopback_init", "connect",
           "worker_env", "write_store_probe", "CONNECT_TIMEOUT_S"]

log = logging.getLogger("federation.transports.ray")


def import_ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExecutorError("federation/executor=ray needs Ray: `pip install -e .[ray]` (or 'ray[default]'), "
                            "or use federation/executor=sequential") from exc
    return ray


#: how long the driver tries to reach a cluster's GCS port before it says so (Ray itself retries for ever)
CONNECT_TIMEOUT_S = 10.0


def check_address(address: Any) -> None:
    """A cluster address Ray can take (``<host>:<port>``, ``auto``, ``ray://<host>:<port>``, or null for a local
    instance), else one :class:`~federation.errors.FederationError` naming it (a walkthrough: ``127.0.0.1`` or
    ``nohost:abc`` ended in Hydra's multi-line "Error executing job")."""
    from federation.errors import FederationError

    if address is None or str(address) == "auto":
        return
    text = str(address)
    rest = text[len("ray://"):] if text.startswith("ray://") else text
    host, sep, port = rest.rpartition(":")
    if not sep or not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536 or "://" in rest:
        raise FederationError(f"federation.executor.address={text}: expected <head host>:<port> (e.g. "
                              f"10.0.0.5:6379), auto (a cluster started on this machine), ray://<host>:<port>, "
                              f"or null (a local instance)")


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """One :class:`~federation.errors.FederationError` line when nothing answers at a ``host:port`` cluster
    address: ``ray.init`` logged "Failed to connect to GCS" every ~40 s and never gave up (found by a
    deployment walkthrough), and a ``ray://`` (Ray Client) one where nothing listens took 37 s of Ray's own
    retries. ``auto`` is left to Ray."""
    from federation.errors import FederationError

    check_address(address)
    text = str(address)
    host, sep, port = text[len("ray://"):].rpartition(":") if text.startswith("ray://") else text.rpartition(":")
    if not sep or not port.isdigit() or "://" in host:
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        start = f"--ray-client-server-port={port}" if text.startswith("ray://") else f"--port={port}"
        raise FederationError(f"federation.executor.address={address}: no Ray cluster answers there within "
                              f"{timeout_s:g} s ({err.strerror or err}); start its head with `ray start --head "
                              f"{start}` or fix the address") from None


def loopback_init(ray: Any, attempts: int = 3, **kw: Any) -> None:
    """``ray.init`` of a local instance whose node address is the loopback one, so that every server it starts
    listens on 127.0.0.1 only. On Linux Ray replaces a loopback ``_node_ip_address`` by the machine's routable
    address unless cluster mode is off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's default on macOS and
    Windows), a flag Ray reads once at import into ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``: it is
    turned off for this call only. A Ray without that constant starts as it would anyway (a warning says so).
    A start that fails is tried up to ``attempts`` times: Ray gives a raylet 30 s to register with its GCS,
    which a loaded machine can miss (the test suite's fixture retried so; now every local instance does)."""
    kw["_node_ip_address"] = "127.0.0.1"
    consts = getattr(getattr(ray, "_private", None), "ray_constants", None)
    old = getattr(consts, "ENABLE_RAY_CLUSTER", None)
    if old is not None:
        consts.ENABLE_RAY_CLUSTER = False
    try:
        for attempt in range(1, attempts + 1):
            try:
                ray.init(**kw)
                break
            except Exception as exc:  # noqa: BLE001 - Ray raises plain Exception/RuntimeError on a timed-out start
                ray.shutdown()
                if attempt == attempts or isinstance(exc, (ValueError, TypeError)):  # a refused argument
                    raise
                log.warning("RayExecutor: the local Ray instance did not start (%s: %s); attempt %d of %d",
                            type(exc).__name__, exc, attempt + 1, attempts)
    finally:
        if old is not None:
            consts.ENABLE_RAY_CLUSTER = old
    if not ray.util.get_node_ip_address().startswith(("127.", "::1")):
        log.warning("RayExecutor: the local Ray instance listens on %s, not on 127.0.0.1 only",
                    ray.util.get_node_ip_address())


def connect(ray: Any, address: str, kw: dict[str, Any]) -> None:
    """``ray.init(address=...)``; a cluster it cannot join is one line naming the address (a walkthrough:
    ``address=auto`` with no cluster running ended in Hydra's multi-line "Error executing job")."""
    from federation.errors import FederationError

    try:
        ray.init(**kw)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or plain Exception
        with contextlib.suppress(Exception):
            ray.shutdown()
        if isinstance(exc, ValueError) and (kw.get("runtime_env") or {}).get("working_dir"):
            raise  # a checkout Ray cannot pack (ship_code): the executor's own line names it
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = f"could not join that Ray cluster ({type(exc).__name__}: {first[:200]})"
        if str(address) == "auto" and isinstance(exc, ConnectionError):
            hint = ("no Ray cluster runs on this machine (start one with `ray start --head`, or set "
                    "federation.executor.address=null for a local instance)")
        raise FederationError(f"federation.executor.address={address}: {hint}") from None


def worker_env(ship_code: bool = False) -> dict[str, str]:
    """What every worker's environment must hold (Ray's ``runtime_env``): the project on ``PYTHONPATH`` (unless
    ``ship_code``: Ray's ``working_dir`` puts the shipped copy there) and the driver's ``allow_targets`` list and
    W&B mode. Workers of a joined cluster inherit ``ray start``'s environment, not the driver's:
    ``allow_targets=[mylab]`` worked on a local instance and every client was refused on a cluster (a review)."""
    from lightning_modules.targets import ENV

    paths = ([] if ship_code else [str(ROOT)]) + [os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    if ship_code:  # Ray starts each worker in its copy of the checkout: relative paths mean the driver's folder
        env[DRIVER_CWD] = os.getcwd()
    env.update({k: os.environ[k] for k in (ENV, "WANDB_MODE") if os.environ.get(k)})
    return {k: v for k, v in env.items() if v}


#: the checkout's top-level entries ``ship_code`` always sends: the project's packages, the Ray tests' helpers and
#: benchmarks (``tests.ray_helpers``: a worker imports a test's client function by name), and ``pyproject.toml``
SHIPPED = (*CODE_PACKAGES, "tests", "benchmarks", "pyproject.toml")
#: what ``ship_code`` leaves out inside what it sends besides the ``.gitignore`` (Ray honours it): weights, arrays,
#: images and caches, which workers never import (gitignore patterns)
SHIP_EXCLUDES = ["*.ckpt", "*.pt", "*.npz", "*.npy", "*.nii", "*.nii.gz", "*.png", "__pycache__"]


def _sent(entry: Path) -> bool:
    """A top-level entry ``ship_code`` sends: :data:`SHIPPED`, a user's package beside them (a folder with an
    ``__init__.py``, as docs/extending.md's ``my_nets``), or a folder or ``.py`` module ``allow_targets`` names."""
    from lightning_modules.targets import extra_prefixes

    allowed = {p.split(".", 1)[0] for p in extra_prefixes()}
    if entry.is_file() and entry.suffix == ".py":
        return entry.stem in allowed
    return entry.name in SHIPPED or entry.is_dir() and (entry.name in allowed or (entry / "__init__.py").is_file())


def ship_excludes(root: Path = ROOT) -> list[str]:
    """Ray's ``excludes`` for the checkout at ``root``: an anchored exclude for every top-level entry not sent
    (:func:`_sent`), then :data:`SHIP_EXCLUDES`. It says what to send, not what to leave: an untracked virtual
    environment, data or run folder under any name stays behind (CI: a venv linked into the checkout as
    ``.venv_unused`` was packed, and the driver spent its 240 s walking it before Ray's size limit could refuse it).
    Names are escaped for gitignore's pattern syntax (a folder ``runs[1]`` is that folder, not a character class)."""
    return sorted("/" + _escaped(p.name) for p in root.iterdir() if not _sent(p)) + list(SHIP_EXCLUDES)


def _escaped(name: str) -> str:
    return "".join("\\" + c if c in "[]*?!#\\" else c for c in name)


def runtime_env(ship_code: bool) -> dict[str, Any]:
    """Ray's ``runtime_env`` for every worker: :func:`worker_env`, and with ``ship_code`` the driver's checkout
    as Ray's ``working_dir`` (packed once, uploaded to the cluster and unpacked on each node before its first
    worker starts), so a node needs no checkout of its own and runs the driver's code, edits included."""
    env: dict[str, Any] = {"env_vars": worker_env(ship_code)}
    if ship_code:
        env.update(working_dir=str(ROOT), excludes=ship_excludes())
    return env


def concurrent_clients(per_node: Sequence[float], per_client: float, whole_units: bool) -> int:
    """How many actors asking ``per_client`` of a resource fit at once on nodes holding ``per_node`` of it.
    ``whole_units`` (Ray's GPUs): an actor asking less than one GPU is placed on a single GPU, so each GPU holds
    ``floor(1 / per_client)`` of them. A review: ``floor(total / per_client)`` (5 clients of 0.4 on 2 GPUs, or 2
    clients of 1 on two nodes of 0.5 each) sized a pool that could not all start, and the driver waited for the
    last actor without a message."""
    fit = 0
    for have in per_node:
        if whole_units and per_client < 1:
            fit += math.floor(have + 1e-9) * math.floor(1 / per_client + 1e-9)
        else:
            fit += math.floor(have / per_client + 1e-9)
    return fit


def write_store_probe(store: str) -> str:
    """A fresh token in the client store (``STORE_PROBE``) that every new worker must read back: the workers
    write their clients' state there and the server reads it, so on a joined cluster the run folder must be
    on a filesystem every node shares. A review: a node with its own local folder trained into it unseen."""
    import uuid

    from engine import artifacts

    token = uuid.uuid4().hex
    Path(store).mkdir(parents=True, exist_ok=True)
    artifacts.atomic_write_text(Path(store) / STORE_PROBE, token)
    return token
