"""The Ray transport when the driver's own Ray node dies (found by a fault-injection audit: with
``timeout_s: null`` the driver waited on ``ray.wait(timeout=None)`` forever once the raylet was gone).
A driver in a subprocess starts its local Ray instance, runs a client that hangs, and SIGKILLs its raylet:
it must end within seconds with the one FederationError line; the same when the victim is the raylet's
DashboardAgent (what the audit killed: the raylet fate-shares with it). Every process of the subprocess (they carry
a marker in their environment: the raylet's orphaned workers too) is killed afterwards."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent('''
    import os, subprocess, sys, threading, time
    from omegaconf import OmegaConf
    from federation.errors import FederationError
    from federation.transports import ClientJob
    from federation.transports.ray import RayExecutor
    from tests.ray_helpers import fake_client

    ex = RayExecutor(num_workers=1, gpus_per_client=0, cpus_per_client=1)

    def procs():
        """pid -> (ppid, argv, environ) of every process, read from /proc (ps may cut long paths to a width)."""
        table = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = open(f"/proc/{d}/stat", "rb").read()
                    argv = open(f"/proc/{d}/cmdline", "rb").read().split(b"\\0")
                    env = open(f"/proc/{d}/environ", "rb").read().split(b"\\0")
                except OSError:
                    continue
                table[int(d)] = (int(stat.rsplit(b")", 1)[1].split()[1]), [a.decode(errors="replace") for a in argv], env)
        return table

    def kill_raylet():
        if sys.argv[3] == "running":
            while not ex._checked:  # the actor is up and has been sent the client, which hangs for 120 s
                time.sleep(0.2)
            time.sleep(2)
        else:  # "starting": while the driver waits for its actor to come up (Ray's error may come before the check)
            while not ex._pool:
                time.sleep(0.05)
        table, mark = procs(), ("FEDMED_RAY_NODE_LOSS_TEST=" + os.environ["FEDMED_RAY_NODE_LOSS_TEST"]).encode()
        mine, stack = set(), [os.getpid()]
        while stack:  # descendants, and (in case Ray re-parents one) whatever carries this run's marker
            parent = stack.pop()
            for p, (pp, _, _) in table.items():
                if pp == parent and p not in mine:
                    mine.add(p)
                    stack.append(p)
        mine |= {p for p, (_, _, env) in table.items() if mark in env and p != os.getpid()}
        victim = sys.argv[2]  # "raylet", or "ray::DashboardAgent" (fate-shared with the raylet)
        pids = sorted(p for p in mine if (os.path.basename(table[p][1][0]) == "raylet" if victim == "raylet"
                                          else " ".join(table[p][1]).startswith(victim)))
        print("KILL", pids, flush=True)
        for pid in pids:
            os.kill(pid, 9)

    threading.Thread(target=kill_raylet, daemon=True).start()
    try:
        # as the server sends it: a Hydra-free cfg without paths, and the run's client_store/ beside server.pt
        cfg = OmegaConf.create({"trainer": {}})
        store = os.path.join(sys.argv[1], "client_store")
        ex.map(fake_client, [ClientJob("0", {"behaviour": "hang", "cfg": cfg, "store": store})])
        print("MAP RETURNED", flush=True)
        code = 1
    except FederationError as exc:
        print("LINE:", exc, flush=True)
        code = 3
    ex.shutdown()
    print("SHUT DOWN", flush=True)
    sys.exit(code)
''')


def _marked(mark: bytes) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if mark in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("victim,moment", [("raylet", "running"), ("ray::DashboardAgent", "running"),
                                           ("ray::DashboardAgent", "starting")])
def test_driver_stops_with_one_line_when_its_ray_node_dies(tmp_path, victim, moment):
    mark = f"FEDMED_RAY_NODE_LOSS_TEST={uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local instance, never a shared one
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", FEDMED_RAY_NODE_LOSS_TEST=mark.split("=", 1)[1])
    log = tmp_path / "driver.log"
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "server.pt").write_bytes(b"")
    (run / ".hydra" / "overrides.yaml").write_text("- federation/executor=ray\n- federation.rounds=3\n")
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(run), victim, moment], cwd=ROOT, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)
    try:
        # starting Ray and its worker (imports, ray.init, the actor) may take minutes on a loaded 2-core CI
        # machine; what is tested is the time from the kill to the driver's end
        deadline = time.monotonic() + 240
        while "KILL [" not in log.read_text(errors="replace") and proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail("no node process killed within 240 s (Ray or its worker never started): "
                            + log.read_text(errors="replace")[-3000:])
            time.sleep(0.5)
        code = proc.wait(timeout=45)
        out = log.read_text(errors="replace")
        assert "KILL [" in out and "KILL []" not in out, out[-3000:]
        assert code == 3, out[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("LINE:"))
        assert "the Ray node of this run is gone" in line, line
        assert line.endswith("continue with: python -m experiments.run federation/executor=ray federation.rounds=3 "
                             f"resume={run}"), line
        assert "SHUT DOWN" in out, out[-3000:]
    except subprocess.TimeoutExpired:
        pytest.fail("the driver still waits on a dead Ray node: " + log.read_text(errors="replace")[-3000:])
    finally:
        for pid in [proc.pid] * (proc.poll() is None) + _marked(mark.encode()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _marked(mark.encode()) and time.monotonic() < deadline:
            time.sleep(0.2)
