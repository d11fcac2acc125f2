"""Processes a test left running: found by its ``tmp_path``, killed at the test's teardown, reported.

Tests start real processes (``python -m experiments.run``, a Flower SuperLink and SuperNodes in their own
sessions, Ray). Each test stops what it started, but a test that fails half-way, or a process re-parented to
init when its parent was killed, can outlive it and take a core for the rest of the suite: on a 2-core CI
machine one such process halves every later test's speed and pushes fixtures past their timeouts. The
conftest's autouse fixture calls :func:`reap` with the test's ``tmp_path``: every process whose command line or
environment names that folder is a process of that test (each test has its own), so it is killed and named in a
:class:`LeftoverProcessWarning`. The current directory is not used: a module's Ray workers may share it.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

__all__ = ["LeftoverProcessWarning", "naming", "reap"]


class LeftoverProcessWarning(pytest.PytestWarning):
    """A test left a process running (it was killed at the test's teardown)."""


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def naming(path: Path) -> dict[int, str]:
    """``{pid: command line}`` of the live processes (not zombies, not this one or its ancestors) whose
    command line or environment contains ``path``."""
    needle, skip, found = str(path).encode(), _ancestors(), {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in skip:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if not cmdline:  # a zombie or a kernel thread
                continue
            if needle in cmdline or needle in (entry / "environ").read_bytes():
                found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()[:200]
        except OSError:  # gone, or not ours to read
            continue
    return found


def reap(path: Path, grace_s: float = 10.0) -> dict[int, str]:
    """Kill what :func:`naming` finds for ``path`` once ``grace_s`` has passed without it ending on its own;
    returns what was killed."""
    deadline = time.monotonic() + grace_s
    found = naming(path)
    while found and time.monotonic() < deadline:
        time.sleep(0.25)
        found = naming(path)
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return found
