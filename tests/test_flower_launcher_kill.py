"""The local Flower rehearsal when its launcher is killed outright (found by a fault-injection audit: a
SIGKILLed ``experiments.run`` left the SuperLink, SuperNodes, SuperExecs and the ServerApp running, and the
orphaned ServerApp went on writing into the run folder). One launch checks both halves of the fix: a process
left behind by an earlier launch of the same run folder (it carries the run's ``FLWR_HOME``) is stopped before
the new launch starts anything, and once the ServerApp runs, SIGKILL of the launcher takes every process of
the rehearsal with it (SuperLink, SuperNodes, and what Flower starts in sessions of its own) within seconds.
Whatever is left is killed at the end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytestmark = pytest.mark.flower

from tests.test_flower import _launch, _leftovers  # noqa: E402


def _cmdlines(marker: str) -> dict[int, str]:
    """Live processes carrying ``marker`` in their environment, with their command lines."""
    out = {}
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and marker.encode() in (d / "environ").read_bytes().split(b"\0"):
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def _kill_marked(marker: str) -> None:
    for _ in range(3):
        for pid in _cmdlines(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


def test_launcher_killed_takes_its_processes_and_a_relaunch_stops_leftovers(tmp_path):
    run_dir = tmp_path / "run"
    marker = f"FLWR_HOME={run_dir / 'flower' / 'home'}"
    # what a killed earlier launch of this run left running: its launcher.json names its marker, its pid is gone
    old = f"{run_dir / 'flower' / 'home'}:earlier"
    (run_dir / "flower").mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (run_dir / "flower" / "launcher.json").write_text(json.dumps({"pid": gone.pid, "started": "0",
                                                                  "marker": f"FEDMED_REHEARSAL={old}"}))
    stale = subprocess.Popen(["sleep", "300"], env=dict(os.environ, FEDMED_REHEARSAL=old), start_new_session=True)
    proc, run_dir = _launch(tmp_path, ["federation.rounds=1"])
    try:
        deadline = time.monotonic() + 300  # six processes importing Flower and torch on a loaded 2-core machine
        while not any("flwr-serverapp" in c for c in _cmdlines(marker).values()):
            assert proc.poll() is None, (tmp_path / "out.log").read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no ServerApp within 300 s"
            time.sleep(0.3)
        assert stale.poll() is not None, "a process of an earlier launch still runs beside the new one"
        assert "processes an earlier launch of this run left running" in (tmp_path / "out.log").read_text(errors="replace")
        before = _cmdlines(marker)
        names = " ".join(before.values())
        assert all(n in names for n in ("flower-superlink", "flower-supernode", "flwr-serverapp")), names
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 45  # the watchdog's SIGTERM grace (10 s), SIGKILL and its wait (5 s), slack
        while _leftovers(run_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _leftovers(run_dir) == [], {p: before.get(p, "?")[:120] for p in _leftovers(run_dir)}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        _kill_marked(marker)
        if stale.poll() is None:
            stale.kill()
        stale.wait(timeout=10)


def test_a_launch_refuses_while_the_launcher_of_the_leftovers_lives(tmp_path):
    """The other half of ``claim``: processes of this run folder whose launcher (``flower/launcher.json``)
    still runs are not stopped: one FederationError line, and they live on; with the launcher gone they
    are stopped."""
    from federation.errors import FederationError
    from federation.transports.flower.launcher_record import _started_at, claim
    from federation.transports.flower.processes import marked

    fdir = tmp_path / "run" / "flower"
    fdir.mkdir(parents=True)
    marker = f"FLWR_HOME={fdir / 'home'}"
    owner = subprocess.Popen(["sleep", "60"])  # stands for a live launcher
    child = subprocess.Popen(["sleep", "60"], env=dict(os.environ, FLWR_HOME=str(fdir / "home")), start_new_session=True)
    try:
        # until the child has exec'd, /proc/<pid>/environ is still this process's (no marker): a CI run under
        # load called claim() before that, found no leftover and did not raise
        deadline = time.monotonic() + 15
        while child.pid not in marked(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        (fdir / "launcher.json").write_text(json.dumps({"pid": owner.pid, "started": _started_at(owner.pid)}))
        with pytest.raises(FederationError, match=f"still run by launcher pid {owner.pid}"):
            claim(fdir, fdir / "home")
        assert child.poll() is None
        owner.kill()
        owner.wait(timeout=10)
        claim(fdir, fdir / "home")  # an older launcher's record (no marker): its processes carry FLWR_HOME
        assert child.wait(timeout=15) is not None
        record = json.loads((fdir / "launcher.json").read_text())
        assert record["pid"] == os.getpid() and record["marker"].startswith(f"FEDMED_REHEARSAL={fdir / 'home'}:")
        # a review: a user's shell that exported the run's FLWR_HOME (to run `flwr ls`) was killed by a relaunch;
        # now only the processes of the launch recorded are (this one's marker: none run)
        shell = subprocess.Popen(["sleep", "60"], env=dict(os.environ, FLWR_HOME=str(fdir / "home")))
        child = shell
        deadline = time.monotonic() + 15
        while shell.pid not in marked(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        claim(fdir, fdir / "home")
        assert shell.poll() is None
    finally:
        for p in (owner, child):
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


def test_the_launch_waits_for_the_superlink_to_listen():
    """``flwr run`` does not retry a refused connection, and the launch started it a few ms after the SuperLink
    (which listened 2-3.5 s later in earlier logs): :func:`listening` waits for the port, and says no when the
    server exits first."""
    import sys

    from federation.transports.flower.processes import HOST, free_port, listening

    port = free_port()
    late = subprocess.Popen([sys.executable, "-c", "import socket, time; time.sleep(1.0); s = socket.socket(); "
                             f"s.bind(('{HOST}', {port})); s.listen(); time.sleep(30)"])
    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        assert listening(late, port, timeout_s=60)
        t0 = time.monotonic()
        assert not listening(gone, free_port(), timeout_s=60) and time.monotonic() - t0 < 30
    finally:
        for p in (late, gone):
            p.kill()
            p.wait(timeout=10)
