"""Shared test fixtures: deterministic seeds, offline W&B, Hydra compose helpers, the shared data dir."""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
#: under pytest-xdist (``make test`` runs one worker per core) each worker and the runs it starts use one
#: thread: two workers with two torch threads each on two cores only fight over them.
XDIST = "PYTEST_XDIST_WORKER" in os.environ
if XDIST:
    os.environ["OMP_NUM_THREADS"] = "1"
#: torch threads per test process. Set here, at import, as well as per test (``_seed_and_threads``): a
#: module- or session-scoped fixture (the claims tests' shared federations) is set up *before* the first test's
#: function-scoped fixtures, so it used to train at torch's default (all cores) when its file ran first in a
#: worker and at one thread otherwise, and its figures moved with the order the tests ran in.
THREADS = 1 if XDIST else max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(THREADS)


def _memory_watch(limit_mb: int, every_s: float = 0.5) -> None:
    """A pytest-xdist worker past ``limit_mb`` resident: every thread's stack and the running test go to
    ``.pytest-memory-<worker>.txt`` in the repository (``$FEDMED_TEST_MEMORY_DIR``; ``.ci/run`` prints it), once.
    Pytest workers on a loaded machine were OOM-killed at 20-22 GB three times (two CI runs: during test_flower
    and test_metrics_seg tests, which peak below 1.4 GB alone; the idle suite peaks at 3.3 GB a worker), and
    xdist then hung; the cause is not found. This names what was allocating."""
    import faulthandler
    import threading
    import time

    def watch() -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while True:
            time.sleep(every_s)
            try:
                rss = int(Path("/proc/self/statm").read_text().split()[1]) * page // 2**20
            except (OSError, ValueError, IndexError):
                return
            if rss > limit_mb:
                worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
                folder = Path(os.environ.get("FEDMED_TEST_MEMORY_DIR", str(REPO)))
                with open(folder / f".pytest-memory-{worker}.txt", "w") as fh:
                    fh.write(f"worker {worker}: {rss} MB resident (limit {limit_mb} MB) during "
                             f"{os.environ.get('PYTEST_CURRENT_TEST', '?')}\n")
                    fh.flush()
                    faulthandler.dump_traceback(fh, all_threads=True)
                return

    threading.Thread(target=watch, name="memory-watch", daemon=True).start()


REPO = Path(__file__).resolve().parents[1]
if XDIST:
    _memory_watch(int(os.environ.get("FEDMED_TEST_MEMORY_MB", "8000")))
CONFIG_DIR = REPO / "experiments" / "configs"


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (or ``$FEDMED_SHARED_DATA``)."""
    return Path(os.environ.get("FEDMED_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder {path} is absent")
    return path


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    yield


@pytest.fixture(autouse=True)
def _no_leftover_processes(request):
    """A process a test left running (found by its ``tmp_path``) is killed at teardown and reported as a
    :class:`tests.leftovers.LeftoverProcessWarning`, so it cannot slow the rest of the suite."""
    # asked for here (it exists for this test anyway), so the reap runs before tmp_path's own teardown
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if path is not None:
        from tests.leftovers import LeftoverProcessWarning, reap

        killed = reap(path)
        if killed:
            warnings.warn(LeftoverProcessWarning(f"{request.node.nodeid} left {len(killed)} process(es) running, "
                                                 f"killed: {'; '.join(killed.values())}"))


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """``module_tmp(name)``: a new folder for a module's shared fixtures (``tmp_path_factory.mktemp``'s
    role). The module's folders are removed after its last test unless one of its tests failed, as a passed
    test's ``tmp_path`` is at once (``tmp_path_retention_policy = "failed"``): the suite's checkpoints
    (~4 GB in all) do not pile up on a CI disk."""
    root = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed
    yield lambda name: Path(tempfile.mkdtemp(prefix=f"{name}_", dir=root))
    if request.session.testsfailed == failed_before:
        shutil.rmtree(root, ignore_errors=True)


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    """``FEDMED_TEST_RSS=<file>``: append each test's worker, resident and peak memory (MB) after it ran, to find
    the test that grows a worker (a CI worker was OOM-killed at 22 GB while running a 1 GB test file)."""
    path = os.environ.get("FEDMED_TEST_RSS")
    if not path:
        return
    import resource

    try:
        rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (OSError, ValueError, IndexError):
        rss = -1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    with open(path, "a") as fh:
        fh.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}\t{rss}\t{peak}\t{nodeid}\n")
