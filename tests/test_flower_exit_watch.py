"""The local rehearsal's watch on its SuperLink and SuperNodes (``ExitWatch``), on stand-in processes: a
SuperNode that dies by itself stops the rehearsal at once with one line naming its site and reason; one killed
by a signal only drops its site (the fault tests' mid-round kill); every process started here is stopped."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from federation.transports.flower.processes import ExitWatch, ProcessGroups

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _rehearsal(tmp_path, supernode_argv):
    groups = ProcessGroups(tmp_path / "pgids.json")
    logs = tmp_path / "logs"
    groups.start("superlink", SLEEP, {}, logs / "superlink.log")
    groups.start("supernode_a", SLEEP, {}, logs / "supernode_a.log")
    groups.start("supernode_b", supernode_argv, {}, logs / "supernode_b.log")
    run = groups.start("flwr_run", SLEEP, {}, logs / "flwr_run.log", stdout=subprocess.PIPE)
    return groups, run, logs


def test_a_supernode_that_exits_by_itself_stops_the_rehearsal_naming_its_site(tmp_path):
    """Before: the launcher watched the SuperLink only, between lines of ``flwr run``'s output; a SuperNode that
    died at start-up was noticed when round 1 had waited ``connect_timeout_s`` (default minutes) for its site."""
    crash = [sys.executable, "-c", "import sys; print('starting'); print('ValueError: no such certificate'); sys.exit(3)"]
    groups, run, logs = _rehearsal(tmp_path, crash)
    try:
        t0 = time.monotonic()
        watch = ExitWatch(groups, run, logs, every_s=0.1)
        watch.start()
        assert run.stdout.read() == b""  # the launcher's read ends: the run's group was stopped
        watch.stop()
        assert time.monotonic() - t0 < 20 and run.wait(timeout=10) == -signal.SIGTERM
        assert watch.failure.startswith("the SuperNode of site b exited (code 3)"), watch.failure
        assert str(logs / "supernode_b.log") in watch.failure and "no such certificate" in watch.failure
    finally:
        groups.stop(grace_s=2)


def test_a_supernode_killed_by_a_signal_only_drops_its_site(tmp_path):
    groups, run, logs = _rehearsal(tmp_path, SLEEP)
    dropped = []
    try:
        watch = ExitWatch(groups, run, logs, on_drop=lambda site, code: dropped.append((site, code)), every_s=0.1)
        watch.start()
        groups.kill("supernode_b")
        deadline = time.monotonic() + 20
        while not dropped and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dropped == [("b", -signal.SIGKILL)] and watch.failure is None and run.poll() is None
        groups.kill("superlink", signal.SIGTERM)  # the SuperLink's exit, whatever its code, is the run's end
        assert run.wait(timeout=20) == -signal.SIGTERM
        watch.stop()
        assert watch.failure.startswith("the SuperLink exited (code"), watch.failure
    finally:
        groups.stop(grace_s=2)


def test_stop_does_not_wait_out_its_grace_for_groups_that_are_gone(tmp_path, monkeypatch):
    """A review: a leader that had exited but was not yet reaped kept ``killpg(pgid, 0)`` succeeding, so every
    rehearsal's stop waited its whole grace (10 s) after every process had ended on SIGTERM."""
    import os

    groups = ProcessGroups(tmp_path / "pgids.json")
    proc = groups.start("superlink", [sys.executable, "-c", "pass"], {}, tmp_path / "logs" / "superlink.log")
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie leader
    naps = []
    monkeypatch.setattr(time, "sleep", naps.append)
    groups.stop(grace_s=60)
    assert naps == [] and proc.returncode == 0


def test_a_rehearsal_stopped_by_its_data_leaves_no_private_key(tmp_path):
    """A review: the throw-away TLS and node keys were made before the sites' data was built and outside the block
    whose ``finally`` deletes them, so a wrong ``data.root`` left ``certs/server.key`` in the run folder."""
    import pytest

    from datamodules.errors import DataError
    from experiments.run import dispatch
    from tests.hydra_helpers import compose_run

    with pytest.raises(DataError, match="does not exist"):
        dispatch(compose_run(["+exp=fed_lits_dnet", "data=lits", f"data.root={tmp_path / 'typo'}",
                              "federation/executor=flower", "federation.executor.node_auth=true"], tmp_path))
    assert not [p for p in tmp_path.rglob("*") if p.suffix == ".key" or p.name.endswith(".pem") and "key" in p.name]



def test_stop_lets_the_server_app_outside_our_groups_exit_on_sigterm_first(tmp_path):
    """Flower runs the ServerApp under the SuperLink's SuperExec, in a session of its own: a stop SIGKILLed it by
    the marker sweep with no signal it could act on, so its loggers never closed (a walkthrough: Ctrl-C after
    round 1 lost that round from ``csv/metrics.csv`` and the W&B run). A stand-in ServerApp carrying the marker
    gets SIGTERM, and its handler runs while the SuperLink is still up."""
    token = f"{tmp_path}:test"
    groups = ProcessGroups(tmp_path / "pgids.json", marker=f"FEDMED_REHEARSAL={token}")
    superlink = groups.start("superlink", SLEEP, {"FEDMED_REHEARSAL": token}, tmp_path / "superlink.log")
    closed = tmp_path / "closed"
    code = (f"import os, pathlib, signal, sys, time\n"
            f"def close(*_):\n"
            f"    try:\n"
            f"        os.kill({superlink.pid}, 0)\n"
            f"        up = 'superlink up'\n"
            f"    except ProcessLookupError:\n"
            f"        up = 'superlink gone'\n"
            f"    pathlib.Path({str(closed)!r}).write_text(up)\n"
            f"    sys.exit(0)\n"
            f"signal.signal(signal.SIGTERM, close)\n"
            f"print('ready', flush=True)\n"
            f"time.sleep(60)\n")
    app = subprocess.Popen([sys.executable, "-c", code, "flwr-serverapp"], stdout=subprocess.PIPE,
                           env={"FEDMED_REHEARSAL": token}, start_new_session=True)
    try:
        assert app.stdout.readline() == b"ready\n"
        groups.stop(grace_s=10)
        assert app.wait(timeout=10) == 0  # its SIGTERM handler ran (before: -SIGKILL, no handler)
        assert closed.read_text() == "superlink up"
        assert superlink.poll() is not None
    finally:
        for p in (app, superlink):
            if p.poll() is None:
                p.kill()
                p.wait()
