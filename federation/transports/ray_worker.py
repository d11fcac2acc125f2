"""The process a Ray actor runs: one client at a time, in a pool the driver (:mod:`federation.transports.ray`)
keeps across rounds; and the data-root check each worker makes on its node before its first client."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Mapping

from federation.core.messages import ClientUpdate
from federation.transports import ClientFn

__all__ = ["RayWorker", "missing_data_root"]


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


class RayWorker:
    """A Ray actor running clients (``fn``) one after the other in its own process."""

    def where(self) -> dict[str, Any]:
        import ray

        return {"node": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "resources": {k: float(v) for k, v in ray.get_runtime_context().get_assigned_resources().items()}}

    def check_data(self, data_cfg: Any) -> str | None:
        root = missing_data_root(data_cfg)
        if root is None:
            return None
        w = self.where()
        return f"data root {root} is missing on Ray node {w['node']} ({w['ip']}): copy or mount it there"

    def run(self, fn: ClientFn, accelerator: str, client_id: str, kwargs: dict[str, Any]) -> ClientUpdate:
        cfg = kwargs.get("cfg")
        if cfg is not None:  # pin the Trainer to what this actor was given
            from omegaconf import open_dict

            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.trainer.accelerator = accelerator
                cfg.trainer.devices = 1
            kwargs = {**kwargs, "cfg": cfg}
        return fn(client_id, **kwargs)
