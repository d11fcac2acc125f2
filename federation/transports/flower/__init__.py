"""Flower transport: the same federation as a real deployment (SuperLink + one SuperNode per site).

* :mod:`.server_app`: a Flower ServerApp that runs :func:`federation.loop.run_federation` (our rounds,
  strategy, evaluation, ``server.pt``, resume, logging) with :class:`.executor.FlowerExecutor`;
* :mod:`.client_app`: a Flower ClientApp that runs :func:`federation.runner.run_client` on the node's
  own data (named by its node config);
* :mod:`.wire`: what crosses (weights, one sample count, scalar metrics);
* :mod:`.launch`: the local rehearsal: ``federation/executor=flower`` starts a SuperLink and one SuperNode
  per client on 127.0.0.1 with a throw-away TLS CA (:mod:`.tls`), runs the app, stops every process.

Nothing here is imported by the in-process path except :func:`launches` (no Flower import).
"""
from __future__ import annotations

from typing import Any

__all__ = ["launches"]


def launches(cfg: Any) -> bool:
    """True when ``cfg`` asks for the Flower executor and this process is not the ServerApp itself (there
    the executor talks to the Grid instead): :func:`.launch.rehearse` then starts the local deployment
    (``launch: true``) or writes the config and prints the ``flwr run`` command for a real one."""
    from federation.transports import executor_kind

    if not hasattr(cfg, "get") or executor_kind(cfg.get("federation")) != "flower":
        return False
    from federation.transports.flower.executor import current_grid

    return current_grid() is None
