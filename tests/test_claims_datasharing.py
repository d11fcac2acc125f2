"""Paper 000's data-sharing claim as a learning test (marker ``claims``; see test_claims_federation.py for
the helpers' conventions and docs/benchmarks.md, "Claims tests", for the spread over seeds)."""
from __future__ import annotations

import math
import time

import pytest

from tests.claims_support import DISABLED, record, run

pytestmark = [pytest.mark.claims]


# ------------------------------------------------------------------------------------- paper 000
LAST_ROUNDS = 5  # the claims compare the mean pooled test accuracy of the last 5 rounds (the curves' plateau)


def last_rounds_mean(rounds_csv, key: str, last: int) -> float:
    """Mean of ``key`` over the last ``last`` rows of a federation's ``rounds.csv``."""
    import csv

    with open(rounds_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    vals = [float(r[key]) for r in rows[-last:] if r.get(key) not in (None, "")]
    return sum(vals) / len(vals) if vals else math.nan


DATASHARE = ["+exp=fed_digits_datashare", "logger=csv", "federation.partition.k=1", "federation.rounds=20",
             "federation.eval_clients=none", "federation.progress=false"]


@pytest.mark.slow
def test_datasharing_part_beats_none_and_nears_all(tmp_path):
    """Paper 000 §5.1 (Figs. 2-3): under 1-class skew the part-distributed shared data lifts the global
    model well above no sharing and close to sharing everything with every client.

    Digits (MNIST stand-in), SmallCNN, 20 clients / 5 per round, 80 % of each client's data from one
    class, shared pool 10 %, 20 rounds x 2 local epochs (the paper trains to convergence; at 10 rounds
    `part` is still climbing: seed 0 gave none 0.733 / part 0.928 / all 0.981, a part-all gap of
    0.053).  acc = mean pooled test accuracy over the last 5 rounds (rounds.csv): `part`'s curve swings
    by up to 0.1 between rounds once it plateaus (seed 0, rounds 11-20: 0.947 0.939 0.975 0.936 0.881
    0.972 0.972 0.925 0.931 0.983) because only below-average clients get shared data, so a single final
    round would make a 0.03 margin a coin toss.  Asserted: acc(part) >= acc(none) + 0.05 and
    acc(part) >= acc(all) - 0.03 (the issue's margins).  VALIDATED over seeds 0-2 on an idle 2-core CPU
    (docs/benchmarks.md, Claims tests; 100-135 s per seed), last-5 means none / part / all:
    seed 0 0.783 / 0.964 / 0.980, seed 1 0.764 / 0.981 / 0.990, seed 2 0.811 / 0.961 / 0.981.  part - none
    is 0.149-0.217 (3x the 0.05 margin at worst); all - part is 0.009-0.020, so the 0.03 margin has 0.010 to
    spare at the worst seed: the tighter of the two, kept at the issue's value rather than widened.
    RE-VALIDATED after the allocation fix (acc_avg / acc_min over the round's own uploads; fifteenth session):
    part 0.974 / 0.978 / 0.972 at seeds 0-2, none and all unchanged; all - part 0.006-0.012.
    Mechanism disabled, as first done (``federation.shared_fraction=0``: an empty pool, so `part` sends nothing;
    ``FEDMED_CLAIMS_DISABLE=1``), seed 0, rerun after validation: part 0.803 against none 0.783, so
    0.803 < 0.783 + 0.05 and the first assertion failed then (not after the epoch-seeded draws, below).
    WITH EPOCH-SEEDED DRAWS (twenty-fourth session, ``f6d4625``; one thread per xdist worker, as CI):
    none / part / all 0.757 / 0.966 / 0.981, 0.724 / 0.983 / 0.979, 0.793 / 0.976 / 0.981 at seeds 0-2;
    part - none 0.182-0.259, all - part at most 0.015. Disabled at seed 0: part 0.832 against none 0.757
    passes the first assertion (an empty pool leaves the clients the 10 % of the data that `none` carves
    out and never sends, which is worth +0.075 here), and all - part = 0.148 > 0.03 fails the second.
    So ``FEDMED_CLAIMS_DISABLE=1`` now switches off the sending, not the pool (forty-second session, a
    review): the `part` arm runs with ``mode=none`` (pool carved, nothing sent), the same run as `none`, so
    part - none = 0 < 0.05 fails the first assertion by construction, as FedBN's disabled arm is FedAvg.
    Measured so (``FEDMED_CLAIMS_DISABLE=1 pytest -m claims tests/test_claims_datasharing.py``, seed 0, two torch
    threads): none 0.774, part 0.774, all 0.975; the test fails at its first assertion.
    """
    t0 = time.perf_counter()
    acc, final = {}, {}
    for mode in ("none", "part", "all"):
        sent = "none" if DISABLED and mode == "part" else mode  # disabled: the pool is carved and never sent
        final[mode] = run([*DATASHARE, f"federation.strategy.mode={sent}"], tmp_path / mode)["test/acc"]
        acc[mode] = last_rounds_mean(tmp_path / mode / "run" / "rounds.csv", "test/acc", LAST_ROUNDS)
    record("000_datasharing", t0, none=acc["none"], part=acc["part"], all=acc["all"], none_final=final["none"],
           part_final=final["part"], all_final=final["all"])
    assert acc["part"] >= acc["none"] + 0.05, acc
    assert acc["part"] >= acc["all"] - 0.03, acc
