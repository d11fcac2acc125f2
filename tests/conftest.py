"""Shared test fixtures: deterministic seeds, offline W&B, Hydra compose helpers, the shared data dir."""
from __future__ import annotations

import os
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

REPO = Path(__file__).resolve().parents[1]
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
    torch.set_num_threads(1 if XDIST else max(1, min(2, os.cpu_count() or 1)))
    yield


def pytest_collection_modifyitems(config, items):
    """Queue the test files longest first (``tests/durations.py``), so that ``make test``'s workers finish
    together; the order of the tests inside a file is kept."""
    from tests.durations import load, order

    rank = order((item.nodeid.split("::")[0] for item in items), load())
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])
