"""``python -m tests.kill_after_client <experiments.run overrides>``: the run, SIGKILLed (no handler, no clean-up,
as the OOM killer or a node failure ends it) once ``KILL_AFTER`` clients of round ``KILL_ROUND`` (0-based) have
trained and stored their state (tests/test_fed_kill_resume.py)."""
from __future__ import annotations

import os
import runpy
import signal
import sys

import federation.runner as runner

ROUND, AFTER = int(os.environ["KILL_ROUND"]), int(os.environ.get("KILL_AFTER", "1"))
_real, _done = runner.run_client, []


def _run_client(client_id, **kw):
    out = _real(client_id, **kw)
    if int(kw["server_message"].round) == ROUND:
        _done.append(client_id)
        if len(_done) >= AFTER:
            os.kill(os.getpid(), signal.SIGKILL)
    return out


runner.run_client = _run_client
sys.argv = ["experiments.run", *sys.argv[1:]]
runpy.run_module("experiments.run", run_name="__main__")
