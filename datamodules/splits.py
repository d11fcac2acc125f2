"""Patient-level train/val/test splits.

Slices of one patient are strongly correlated, so splits are made over case (patient/volume) ids,
never over slices: no case can appear in two splits.
"""
from __future__ import annotations

import logging
from typing import Collection, Sequence

import numpy as np

from datamodules.errors import DataError

log = logging.getLogger(__name__)


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


def read_split_file(path: str, case_ids: Sequence[str], elsewhere: Collection[str] = ()) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` case ids from a JSON split file, checked
    against the cases found (unknown ids or a case in two splits are errors naming the file). ``elsewhere``: ids
    that exist but belong to another datamodule over the same folder (``case_shard``), left out of every list: one
    split file serves every shard of a folder (a review: each shard refused the others' cases as unknown)."""
    from datamodules.jsonfile import read_json

    p = path
    raw = read_json(path, "data.split_file")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(s, []), list) for s in ("train", "val", "test")) \
            or "train" not in raw:
        raise DataError(f"data.split_file {p} must map 'train' (and optionally 'val', 'test') to case-id lists")
    splits = {s: sorted(str(c) for c in raw.get(s, [])) for s in ("train", "val", "test")}
    known, other, seen = set(case_ids), {str(c) for c in elsewhere} - set(case_ids), {}
    for s, ids in splits.items():
        unknown = sorted(set(ids) - known - other)
        if unknown:
            raise DataError(f"data.split_file {p} lists case(s) {unknown[:5]} in {s!r} that are not in the data")
        for c in ids:
            if c in seen:
                raise DataError(f"data.split_file {p} puts case {c!r} in both {seen[c]!r} and {s!r}")
            seen[c] = s
    splits = {s: [c for c in ids if c in known] for s, ids in splits.items()}
    unlisted = sorted(known - set(seen))
    if unlisted:  # a review: they were left out of every split without a word
        log.warning("data.split_file %s lists %d of the %d cases found; %d in no list are left out (e.g. %s)", p,
                    len(known) - len(unlisted), len(known), len(unlisted), ", ".join(unlisted[:5]))
    return splits
