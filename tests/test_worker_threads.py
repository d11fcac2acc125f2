"""The test processes' torch thread count is fixed when ``tests/conftest.py`` is imported, before any fixture:
a module-scoped fixture (the claims tests' shared federations) is set up before the function-scoped
``_seed_and_threads``, and its learning figures must not depend on which file the worker ran first."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.claims_support import record, summarise
from tests.cli import REPO


def test_an_xdist_worker_is_at_one_thread_from_import_on():
    code = "import torch, tests.conftest as c; print(torch.get_num_threads(), c.THREADS)"
    env = {**os.environ, "PYTEST_XDIST_WORKER": "gw0"}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1"], out.stdout


def test_a_claims_record_carries_its_thread_count(tmp_path, monkeypatch):
    out = tmp_path / "claims.jsonl"
    monkeypatch.setenv("FEDMED_CLAIMS_RECORD", str(out))
    record("demo", a=0.5)
    row = json.loads(out.read_text())
    assert row["a"] == 0.5 and row["torch_threads"] == torch.get_num_threads(), row
    assert f"| demo | torch_threads | {row['seed']}: {torch.get_num_threads():.3f} |" in summarise(out)
