"""Patient-level train/val/test splits.

Slices of one patient are strongly correlated, so splits are made over case (patient/volume) ids,
never over slices: no case can appear in two splits.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from datamodules.errors import DataError


def patient_split(case_ids: Sequence[str], val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, list[str]]:
    """Split case ids into ``dict(train=[...], val=[...], test=[...])``, deterministic by ``seed``.

    The ids are sorted before the seeded shuffle, so the result does not depend on input order.
    A split with fraction > 0 gets at least one case (rounding never empties it); a fraction of
    exactly 0 deliberately leaves that split empty. Each returned list is sorted.
    Raises :class:`DataError` when a split would be empty (e.g. fewer than 3 cases).
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise DataError(f"duplicate case ids in split input: {len(case_ids) - len(ids)} repeated")
    for key, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise DataError(f"data.{key} must be in [0, 1), got {frac}")
    n = len(ids)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DataError(f"train split is empty: {n} case(s) cannot give {n_val} val + {n_test} test "
                        f"cases and leave one for training (need at least {n_val + n_test + 1} cases)")
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [ids[i] for i in order]
    return {"train": sorted(shuffled[n_val + n_test:]), "val": sorted(shuffled[:n_val]),
            "test": sorted(shuffled[n_val:n_val + n_test])}
