"""Helpers shared by the tests/test_data_*.py files (tiny NIfTI writers, real-data location)."""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def shared_data_dir() -> Path:
    """``$FEDMED_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("FEDMED_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def real_data(name: str) -> Path:
    """A real-data folder, or skip the test when it is absent."""
    path = shared_data_dir() / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not available")
    return path


def write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return path
