"""The command lines and environment of the Flower rehearsal's processes: the environment every process of one
launch gets (:func:`rehearsal_env`: its marker, ``FLWR_HOME``, the project on ``PYTHONPATH``), the executables
next to this Python (:func:`flower_bin`), the ``FLWR_HOME/config.toml`` naming the rehearsal's SuperLink (:func:`flwr_home`), the
SuperLink's and SuperNodes' argv (:func:`superlink_argv`, :func:`supernode_argv`, a SuperNode's
``--node-config``: :func:`rehearsal_node_config`) and the nodes' key registration (:func:`register_nodes`);
:mod:`~federation.transports.flower.launch` starts the processes with them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from federation.errors import FederationError
from federation.transports.flower.launcher_record import MARK
from federation.transports.flower.processes import HOST, free_port

__all__ = ["flower_bin", "flwr_home", "register_nodes", "rehearsal_env", "rehearsal_node_config", "superlink_argv",
           "supernode_argv"]


PROJECT_ROOT = Path(__file__).resolve().parents[3]


def rehearsal_env(home: Path, marker: str) -> dict[str, str]:
    env = dict(os.environ)
    env[MARK] = marker.split("=", 1)[1]
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # flower-superexec, flwr-*
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["FLWR_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("WANDB_MODE", "offline")
    return env


def flower_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else name


def flwr_home(home: Path, port: int, ca: Path) -> None:
    """``FLWR_HOME/config.toml`` naming the rehearsal's SuperLink ``rehearsal`` (for ``flwr run`` / ``flwr supernode``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(f'[superlink]\ndefault = "rehearsal"\n\n[superlink.rehearsal]\n'
                                      f'address = "{HOST}:{port}"\nroot-certificates = "{ca}"\n')


def superlink_argv(tls: dict[str, Path], port: int, auth: bool = False, database: Path | None = None) -> list[str]:
    """The rehearsal's SuperLink on 127.0.0.1 with the throw-away TLS chain (``auth``: node authentication;
    ``database``: its state in that SQLite file, as docs/deployment.md's SuperLink keeps it)."""
    return [flower_bin("flower-superlink"), "--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["cert"]),
            "--ssl-keyfile", str(tls["key"]), "--host", HOST, "--port", str(port),
            "--disable-runtime-dependency-installation", *(["--enable-supernode-auth"] if auth else []),
            *(["--database", str(database)] if database is not None else [])]


def supernode_argv(tls: dict[str, Path], port: int, node_config: str, key: Path | None = None) -> list[str]:
    """A SuperNode dialling the rehearsal's SuperLink (``key``: its private key for node authentication)."""
    return [flower_bin("flower-supernode"), "--root-certificates", str(tls["ca"]), "--superlink", f"{HOST}:{port}",
            "--host", HOST, "--port", str(free_port()),
            *(["--auth-supernode-private-key", str(key)] if key is not None else []), "--node-config", node_config]


def register_nodes(public_keys: dict[str, Path], env: dict[str, str], superlink: subprocess.Popen,
                   timeout_s: float = 120.0) -> None:
    """``flwr supernode register <key>.pub rehearsal`` for every node, as the operator of a deployment does
    (docs/deployment.md); retried while the SuperLink starts. One ``FederationError`` naming the key at fault."""
    deadline = time.monotonic() + timeout_s
    for name, pub in public_keys.items():
        while True:
            res = subprocess.run([flower_bin("flwr"), "supernode", "register", str(pub), "rehearsal"], env=env,
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s)
            if res.returncode == 0:
                break
            if superlink.poll() is not None or time.monotonic() > deadline:
                last = (res.stdout + res.stderr).strip().splitlines()[-1:] or ["no output"]
                raise FederationError(f"could not register {name}'s key {pub} with the SuperLink: {last[0]}")
            time.sleep(1.0)


def rehearsal_node_config(cid: str, store: Path, privacy: str, dp: Any) -> str:
    """A rehearsal SuperNode's ``--node-config``: its site, the derived partition, its store and privacy; under
    ``privacy=dp`` the node's own four DP values too, the server's (a node with ``privacy=dp`` requires them:
    a review found every DP rehearsal failing in round 1 once nodes enforced their own), and whether it sends its
    validation metrics (``dp.release_metrics``: a node enforcing DP decides that itself)."""
    parts = [f'site="{cid}"', 'partition="derive"', f'store="{store}"', f'privacy="{privacy}"']
    if privacy == "dp":
        parts += [f"dp-{key.replace('_', '-')}={float(dp[key])!r}"
                  for key in ("clipping_norm", "sensitivity", "epsilon", "delta")]
        parts.append(f"dp-release-metrics={'true' if dp.get('release_metrics') is True else 'false'}")
    return " ".join(parts)
