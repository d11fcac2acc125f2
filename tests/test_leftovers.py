"""The conftest's leftover reaper (tests/leftovers.py): a process a test left running is found by the test's
tmp_path in its command line or environment and killed; others are left alone."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.leftovers import naming, reap

SLEEP = [sys.executable, "-c", "import time, sys; time.sleep(float(sys.argv[1]))"]


def _start(argv: list[str], **env: str) -> subprocess.Popen:
    # a session of its own, like the Flower processes: killing its parent would not end it
    return subprocess.Popen(argv, env={**os.environ, **env}, start_new_session=True)


def test_processes_naming_the_folder_are_killed_and_others_left(tmp_path):
    by_argv = _start([*SLEEP, "300", str(tmp_path / "run")])
    by_env = _start([*SLEEP, "300"], FLWR_HOME=str(tmp_path / "home"))
    other = _start([*SLEEP, "300"])
    try:
        # until a child has exec'd, its /proc cmdline and environ are this process's (missed 5 in 400 here)
        deadline = time.monotonic() + 15
        while set(naming(tmp_path)) != {by_argv.pid, by_env.pid} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(naming(tmp_path)) == {by_argv.pid, by_env.pid}
        killed = reap(tmp_path, grace_s=0.5)
        assert set(killed) == {by_argv.pid, by_env.pid}
        assert by_argv.wait(timeout=10) == -9 and by_env.wait(timeout=10) == -9
        assert other.poll() is None
    finally:
        for proc in (by_argv, by_env, other):
            proc.kill()
            proc.wait()


def test_a_process_ending_within_the_grace_is_not_reported(tmp_path):
    proc = _start([*SLEEP, "1", str(tmp_path)])
    try:
        assert reap(tmp_path, grace_s=20) == {}
    finally:
        proc.kill()
        proc.wait()
