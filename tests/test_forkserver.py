"""The zygote behind the smoke runs (tests/forkserver.py): each run is a real process with the run's cwd, argv,
environment and exit status, its own output, this repository imported afresh, and the normal interpreter exit."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.forkserver import Zygote

REPO = Path(__file__).resolve().parents[1]
PROBE = '''
import atexit, json, os, sys
from pathlib import Path
atexit.register(lambda: Path("atexit.txt").write_text("ran"))
seen = {"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "env": os.environ.get("PROBE_VALUE"),
        "repo_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("experiments", "federation",
                                                                         "lightning_modules", "datamodules")),
        "preloaded": "fractions" in sys.modules, "path0": sys.path[0]}
print(json.dumps(seen))
print("to stderr", file=sys.stderr)
mode = sys.argv[1]
if mode == "raise":
    raise ValueError("probe failed")
if mode == "sleep":
    import time
    time.sleep(60)
if mode == "message":
    sys.exit("a one-line message")
sys.exit(int(mode))
'''


@pytest.fixture(scope="module")
def zygote():
    server = Zygote({**os.environ, "PYTHONPATH": str(REPO)}, preload=["fractions"])  # light: a stdlib module
    yield server
    server.close()
    assert server.proc.returncode == 0


def _probe(tmp_path: Path, name: str) -> Path:
    cwd = tmp_path / name
    cwd.mkdir()
    (cwd / "probe_mod.py").write_text(PROBE)
    return cwd


def test_each_run_is_its_own_process_with_its_cwd_argv_env_and_status(zygote, tmp_path):
    import json

    runs = {}
    for mode in ("0", "3"):
        cwd = _probe(tmp_path, f"exit{mode}")
        proc = zygote.run("probe_mod", [mode, "x y"], cwd=cwd, env={**os.environ, "PROBE_VALUE": mode})
        assert proc.returncode == int(mode)
        assert proc.stderr == "to stderr\n"
        runs[mode] = json.loads(proc.stdout)
        assert runs[mode]["argv"] == [mode, "x y"]
        assert runs[mode]["cwd"] == str(cwd) and runs[mode]["path0"] == str(cwd)
        assert runs[mode]["env"] == mode
        assert (cwd / "atexit.txt").read_text() == "ran"  # the interpreter's normal exit
        assert runs[mode]["preloaded"] and runs[mode]["repo_modules"] == []  # the preload only, no repo module
    assert len({r["pid"] for r in runs.values()} | {os.getpid(), zygote.proc.pid}) == 4


def test_a_failing_run_reports_as_python_m_does(zygote, tmp_path):
    proc = zygote.run("probe_mod", ["raise"], cwd=_probe(tmp_path, "raise"), env=dict(os.environ))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "ValueError: probe failed"
    proc = zygote.run("probe_mod", ["message"], cwd=_probe(tmp_path, "message"), env=dict(os.environ))
    assert proc.returncode == 1 and proc.stderr.endswith("a one-line message\n")


def test_a_run_past_its_timeout_is_killed_and_the_zygote_serves_on(zygote, tmp_path):
    with pytest.raises(subprocess.TimeoutExpired):
        zygote.run("probe_mod", ["sleep"], cwd=_probe(tmp_path, "sleep"), env=dict(os.environ), timeout=2)
    proc = zygote.run("probe_mod", ["0"], cwd=_probe(tmp_path, "after"), env=dict(os.environ))
    assert proc.returncode == 0
