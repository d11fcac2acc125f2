"""The process a Ray actor runs: one client at a time, in a pool the driver (:mod:`federation.transports.ray`)
keeps across rounds; and the data-root check each worker makes on its node before its first client."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Mapping

from federation.core.messages import ClientUpdate
from federation.transports import ClientFn
from federation.transports.code_identity import CODE_PACKAGES, ROOT, code_fingerprint

__all__ = ["RayWorker", "missing_data_root", "set_threads_to_assigned_cpus", "STORE_PROBE", "WEIGHTS_REF"]

#: the kwarg carrying the round's global weights as one object-store reference (:func:`..ray_round.shared_weights`)
WEIGHTS_REF = "_global_weights_ref"
#: the file in the client store whose token every new worker reads back (:func:`..ray.write_store_probe`)
STORE_PROBE = ".ray_store_probe"


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def set_threads_to_assigned_cpus(assigned: Mapping[str, float] | None = None) -> int:
    """torch's intra-op threads = the CPUs Ray assigned this actor (``cpus_per_client``), at least 1. Ray sets
    ``OMP_NUM_THREADS`` from them only when it is unset; a cluster started by ``ray up`` (or a driver shell)
    exports ``OMP_NUM_THREADS=1``, and clients then ran on one thread whatever they were given (a review)."""
    import torch

    if assigned is None:
        import ray

        assigned = ray.get_runtime_context().get_assigned_resources()
    threads = max(1, int(float(assigned.get("CPU", 1.0))))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def missing_data_root(data_cfg: Any) -> str | None:
    """The first ``root`` in ``data_cfg`` (any depth) that does not exist here, None when all do. Roots
    of configs with a ``synthetic`` entry are skipped (the datamodule writes its phantoms there)."""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else data_cfg
    if isinstance(node, Mapping):
        root = node.get("root")
        if isinstance(root, str) and root and not node.get("synthetic") and not Path(root).exists():
            return root
        children = node.values()
    elif isinstance(node, (list, tuple)):
        children = node
    else:
        return None
    for child in children:
        found = missing_data_root(child)
        if found:
            return found
    return None


DRIVER_CWD = "FEDMED_DRIVER_CWD"  # set by ``ship_code`` (federation.transports.ray_cluster.worker_env)


def back_to_the_drivers_folder() -> None:
    """With ``ship_code`` Ray starts a worker in its unpacked copy of the checkout; relative paths in the config
    (the default ``paths.root_dir=.``: data roots, the run folder) mean the driver's folder, so the worker goes
    back there when this node has it (a review: every data root was missing, looked for inside Ray's copy).
    On a node without that folder relative paths cannot work: docs/federation.md asks for absolute ones."""
    cwd = os.environ.get(DRIVER_CWD)
    if cwd and os.path.isdir(cwd) and os.getcwd() != cwd:
        os.chdir(cwd)


class RayWorker:
    """A Ray actor running clients (``fn``) one after the other in its own process."""

    def __init__(self) -> None:
        from engine.resolvers import register_resolvers

        back_to_the_drivers_folder()
        register_resolvers()  # a client's config may hold ${medmnist:...} or ${fedmed_goal:...} unresolved

    def where(self) -> dict[str, Any]:
        import ray

        return {"node": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "resources": {k: float(v) for k, v in ray.get_runtime_context().get_assigned_resources().items()}}

    def check_data(self, data_cfg: Any, store: str | None = None, token: str | None = None,
                   code: str | None = None) -> str | None:
        """One line naming this node when its code is not the driver's (``code``, :func:`code_fingerprint`),
        when a data root is missing here, when the client store is not the driver's (its probe token,
        :func:`..ray.write_store_probe`, does not read back here), or when building the data fails with the
        user's error; None when fine. The data is built here, before the worker's first client, so
        ``timeout_s`` times training only (a review: it also covered the first data build)."""
        if code is not None and code_fingerprint() != code:
            w = self.where()
            return (f"the code on Ray node {w['node']} ({w['ip']}) at {ROOT} is not the driver's (the .py files "
                    f"of {', '.join(CODE_PACKAGES)} differ): every node needs the driver's commit, unedited, on "
                    f"its PYTHONPATH (docs/federation.md, Ray)")
        root = missing_data_root(data_cfg)
        if root is None and (store is None or _read(Path(store) / STORE_PROBE) == token):
            return None if data_cfg is None else self._build(data_cfg)
        w = self.where()
        if root is not None:
            return f"data root {root} is missing on Ray node {w['node']} ({w['ip']}): copy or mount it there"
        return (f"the run's client store {store} on Ray node {w['node']} ({w['ip']}) is not the driver's: clients "
                f"keep their state there, so a joined cluster needs the run folder on a filesystem every node "
                f"shares (docs/federation.md, Ray)")

    def _build(self, data_cfg: Any) -> str | None:
        """The base datamodule, built once in this process (:func:`federation.runner.get_base_datamodule`); the
        user's error is one line naming this node, any other is left to the client that meets it (a crash the
        round's ``min_clients`` tolerates)."""
        from engine.errors import find_user_error, one_line
        from federation.runner import get_base_datamodule

        try:
            set_threads_to_assigned_cpus()
            get_base_datamodule(data_cfg)
        except Exception as exc:  # noqa: BLE001 - classified below
            err = find_user_error(exc)
            if err is not None:
                w = self.where()
                return f"Ray node {w['node']} ({w['ip']}): {one_line(err)}"
        return None

    def run(self, fn: ClientFn, accelerator: str, client_id: str, kwargs: dict[str, Any]) -> ClientUpdate:
        set_threads_to_assigned_cpus()
        if WEIGHTS_REF in kwargs:  # the round's global weights, put in the object store once for every client
            import dataclasses

            import ray

            kwargs = dict(kwargs)
            weights = ray.get(kwargs.pop(WEIGHTS_REF))
            kwargs["server_message"] = dataclasses.replace(kwargs["server_message"], weights=weights)
        cfg = kwargs.get("cfg")
        if cfg is not None:  # pin the Trainer to what this actor was given
            from omegaconf import open_dict

            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.trainer.accelerator = accelerator
                cfg.trainer.devices = 1
            kwargs = {**kwargs, "cfg": cfg}
        return fn(client_id, **kwargs)
