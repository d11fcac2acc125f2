"""Processes of the local rehearsal: each child in its own session (process group), all stopped together,
and free ports on 127.0.0.1 (the rehearsal binds nothing else).

They also die with the launcher when it is killed outright (SIGKILL, an OOM kill: no ``finally`` runs):
every child asks the kernel for SIGTERM on its parent's death (``PR_SET_PDEATHSIG``, Linux), and a small
watchdog (this file run as a script, in its own session) holds the read end of a pipe whose write end only
the launcher has; at EOF (the launcher gone, or :meth:`ProcessGroups.stop` done) it stops every process
carrying the launch's marker (``FEDMED_REHEARSAL=<home>:<token>``, :func:`..launcher_record.claim`), which reaches what Flower starts in
sessions of its own (SuperExec, ServerApp, ClientApps). :func:`stop_marked` is also what a new launch
into the same run folder uses on processes an earlier, killed launch left behind."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from engine.artifacts import atomic_write_text

__all__ = ["HOST", "free_port", "listening", "ProcessGroups", "ExitWatch", "marked", "stop_marked"]

HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1


def marked(marker: bytes | str) -> list[int]:
    """Live processes (not this one) whose environment holds the entry ``marker`` (``NAME=value``)."""
    marker = marker.encode() if isinstance(marker, str) else marker
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if marker in (d / "environ").read_bytes().split(b"\0"):  # a zombie's environ reads empty
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def _cmdline(pid: int) -> bytes:
    """A process's command line (NUL-separated), empty once it is gone."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""


def stop_marked(marker: bytes | str, grace_s: float = 10.0) -> list[int]:
    """SIGTERM every process carrying ``marker``, SIGKILL those left after ``grace_s``; the pids found."""
    found = marked(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in marked(marker):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
        while marked(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
    return found


def _die_with_parent() -> Any:
    """A ``preexec_fn`` asking for SIGTERM when the parent dies (Linux ``prctl``; nothing elsewhere). libc is
    loaded here, before the fork; the child only calls it, then checks the parent did not die in between.
    The kernel sends it when the *thread* that forked ends, so only the main thread (which lives as long as
    the launcher) asks for it; children started from another thread rely on the watchdog alone."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before prctl: go now
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def listening(proc: subprocess.Popen, port: int, timeout_s: float = 120.0) -> bool:
    """Wait until ``HOST:port`` accepts a connection: True then, False when ``proc`` (the server meant to
    listen there) exits first or ``timeout_s`` passes. Flower's ``flwr run`` does not retry a refused
    connection, and a SuperLink importing Flower on a loaded machine took seconds to listen."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.2)
    return False


class ProcessGroups:
    """Children each in a new session (their own process group), all stopped by :meth:`stop`."""

    def __init__(self, record: Path, marker: str | None = None) -> None:
        self.record = record
        self.marker = None if marker is None else marker.encode()  # an env entry every descendant carries
        self.procs: dict[str, subprocess.Popen] = {}
        self._watchdog: subprocess.Popen | None = None
        self._lifeline: int | None = None  # the write end of the watchdog's pipe (only this process holds it)

    def _marked(self) -> list[int]:
        """Descendants that left our groups (Flower starts its SuperExec in a new session)."""
        return [] if self.marker is None else marked(self.marker)

    def _watch(self) -> None:
        """Start the watchdog that stops the marked processes once this process is gone (module docstring)."""
        if self.marker is None or self._watchdog is not None:
            return
        read, self._lifeline = os.pipe()  # non-inheritable: no other child keeps the pipe open
        try:
            self._watchdog = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--watch",
                                               self.marker.decode()], stdin=read, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(read)

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path, **kw: Any) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        self._watch()
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=kw.pop("stdout", fh),
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=_die_with_parent(), **kw)
        self.procs[name] = proc
        atomic_write_text(self.record, json.dumps({n: p.pid for n, p in self.procs.items()}))
        return proc

    @staticmethod
    def _alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def _running(self, proc: subprocess.Popen) -> bool:
        """Whether ``proc``'s group still has a process: its leader reaped first if it has exited (a review: an
        exited, unreaped leader kept ``killpg(pgid, 0)`` succeeding, so every stop waited the whole grace)."""
        proc.poll()
        return self._alive(proc.pid)

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        """``killpg`` that tolerates a group already gone."""
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one child's whole group (the fault tests kill a SuperNode this way)."""
        self._signal_group(self.procs[name].pid, sig)

    def _stop_server_apps(self, grace_s: float) -> None:
        """SIGTERM the ServerApp and wait for it (at most ``grace_s``) before anything else stops. Flower starts
        it under the SuperLink's SuperExec, in no group of ours, so it got only the marker sweep's SIGKILL: its
        loggers were never closed, and a Ctrl-C after round 1 lost that round from ``csv/metrics.csv`` and the
        W&B run, which hold the last row until they close (a walkthrough; ``rounds.csv`` had it). On SIGTERM
        Flower's exit unwinds the federation's ``finally`` while the SuperLink still answers."""
        apps = [pid for pid in self._marked() if b"flwr-serverapp" in _cmdline(pid)]
        for pid in apps:
            try:
                os.kill(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while apps and time.monotonic() < deadline and set(apps) & set(self._marked()):
            time.sleep(0.2)

    def stop(self, grace_s: float = 10.0) -> None:
        self._stop_server_apps(grace_s)
        for proc in self.procs.values():
            if self._alive(proc.pid):
                self._signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(self._running(p) for p in self.procs.values()):
            time.sleep(0.2)
        for proc in self.procs.values():
            if self._alive(proc.pid):
                self._signal_group(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL does not fail
                pass
        for pid in self._marked():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._lifeline is not None:  # everything is stopped: the watchdog sees EOF, finds nothing, exits
            os.close(self._lifeline)
            self._lifeline = None
            try:
                self._watchdog.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self._watchdog.kill()
            self._watchdog = None


def last_line(log: Path) -> str:
    """The last non-empty line of a process's log (its reason for exiting, usually), or ''."""
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class ExitWatch(threading.Thread):
    """Watches a rehearsal's SuperLink and SuperNodes (``groups`` entries ``superlink``, ``supernode_<site>``)
    once a second while ``run`` (``flwr run``) lives.  The SuperLink's exit, or a SuperNode's exit with an error
    code of its own (a setting, certificate or start-up failure), is the rehearsal's failure: ``failure`` names
    the process, its exit code, its log and the log's last line, and ``run``'s group is stopped, so the
    launcher's read of its output ends at once.  A SuperNode killed by a signal (or exiting 0, as Flower's does on
    SIGTERM) is ``on_drop(site, code)``: its site is dropped from the rounds, as in a deployment.  A review: a
    SuperNode that died at start-up was noticed only when round 1 had waited ``connect_timeout_s`` for it."""

    def __init__(self, groups: ProcessGroups, run: subprocess.Popen, logs: Path, on_drop: Any = None,
                 every_s: float = 1.0) -> None:
        super().__init__(daemon=True, name="flower-exit-watch")
        self.groups, self.run_proc, self.logs, self.on_drop, self.every_s = groups, run, logs, on_drop, every_s
        self.failure: str | None = None
        self._done = threading.Event()

    def run(self) -> None:
        seen: set[str] = set()
        while self.run_proc.poll() is None and not self._done.wait(self.every_s):
            for name, proc in list(self.groups.procs.items()):
                code = proc.poll()
                if name in seen or code is None or not (name == "superlink" or name.startswith("supernode_")):
                    continue
                seen.add(name)
                if name == "superlink" or code > 0:
                    log, site = self.logs / f"{name}.log", name[len("supernode_"):]
                    what = "the SuperLink" if name == "superlink" else f"the SuperNode of site {site}"
                    why = last_line(log)
                    self.failure = f"{what} exited (code {code}); see {log}" + (f": {why}" if why else "")
                    ProcessGroups._signal_group(self.run_proc.pid, signal.SIGTERM)
                    return
                if self.on_drop is not None:
                    try:
                        self.on_drop(name[len("supernode_"):], code)
                    except Exception:  # noqa: BLE001 - a report only: the watch goes on
                        pass

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=5)


if __name__ == "__main__" and sys.argv[1:2] == ["--watch"]:  # the watchdog: wait for EOF, then stop the marked
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the launcher's to handle
    while sys.stdin.buffer.read(65536):
        pass
    stop_marked(sys.argv[2])
