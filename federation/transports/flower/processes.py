"""Processes of the local rehearsal: each child in its own session (process group), all stopped together,
and free ports on 127.0.0.1 (the rehearsal binds nothing else)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["HOST", "free_port", "ProcessGroups"]

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class ProcessGroups:
    """Children each in a new session (their own process group), all stopped by :meth:`stop`."""

    def __init__(self, record: Path, marker: str | None = None) -> None:
        self.record = record
        self.marker = None if marker is None else marker.encode()  # an env entry every descendant carries
        self.procs: dict[str, subprocess.Popen] = {}

    def _marked(self) -> list[int]:
        """Descendants that left our groups (Flower starts its SuperExec in a new session)."""
        if self.marker is None:
            return []
        found = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and int(d.name) != os.getpid():
                try:
                    if self.marker in (d / "environ").read_bytes().split(b"\0"):
                        found.append(int(d.name))
                except OSError:
                    continue
        return found

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path, **kw: Any) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as fh:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=kw.pop("stdout", fh),
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        self.procs[name] = proc
        self.record.write_text(json.dumps({n: p.pid for n, p in self.procs.items()}))
        return proc

    @staticmethod
    def _alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

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

    def stop(self, grace_s: float = 10.0) -> None:
        for proc in self.procs.values():
            if self._alive(proc.pid):
                self._signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(self._alive(p.pid) for p in self.procs.values()):
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
