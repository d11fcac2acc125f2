"""Paper 001 (HLFD) as a learning test (marker ``claims``): with a teacher clearly stronger than the
student, HLFD distillation lifts the student above the same student trained without KD, on synthetic
kidney phantoms.  Runs through Hydra composition + ``experiments.run.dispatch`` (``distill=...``); the
teacher is trained once and cached under the test's data dir, as ``python -m experiments.run`` does.
``FEDMED_CLAIMS_DISABLE=1``: HLFD with beta = lambda = 0 (the KD terms off), which must fail.
"""
from __future__ import annotations

import time

import pytest

from tests.claims_support import DISABLED, record, run, unvalidated

pytestmark = [pytest.mark.claims, pytest.mark.slow]


#: The regime (designed so the teacher earns its place, issue 13): the teacher is a wider net (UNet++,
#: 16..256 filters) trained 10 epochs on every labelled training case; the student (ResNet-18 LinkNet) has a
#: labelled-data budget of ONE training case (``data.train_cases=1``; the teacher keeps all of them through
#: ``distill.teacher.data``) and 20 epochs, about the optimiser steps of 6 epochs on every case. Val/test
#: cases are the same for both. Target: the kidney (the synthetic tumours are too small to learn at CPU size),
#: 32 px, protocol a. How the regime was chosen, on the teacher-student gap alone (students without KD only,
#: no HLFD run before the choice; docs/benchmarks.md): every case + 6 epochs gave a student at 0.799 against
#: the teacher's 0.823 (seed 0: no regime); 2-4 epochs on every case swung from collapse to 0.74 with the
#: seed; 2 cases + 20 epochs gave 0.705 / 0.310 / 0.807 (seeds 0-2), too close to the teacher at two seeds;
#: 1 case + 20 epochs gave 0.243 / 0.029 / 0.161, far below it at every seed.
#: Regime v2 (twenty-sixth session, fixed and committed before any run of it): the same, with the student
#: trained 100 epochs (200 optimiser steps, cosine over 100) instead of 20. Why: at seed 1 the 20-epoch student
#: had not fitted even its one training case after 40 steps (train Dice 0.13) and its best checkpoint was an
#: epoch-8 model calling almost every pixel kidney, so v1 limited the student's steps as well as its labels
#: and could not show what distillation adds to a student that has learnt what its data can teach. Margins
#: unchanged. If v2 fails at any of seeds 0-2 it is reported and no third regime is tried.
KD = ["+exp=kits_hlfd", "logger=csv", "data.target=organ", "data.class_names=[background,kidney]",
      "data.image_size=32", "data.augment=false", "distill.teacher.model.width=16", "distill.teacher.max_epochs=10",
      "data.train_cases=1", "distill.teacher.data={train_cases:null}", "trainer.max_epochs=100",
      "callbacks.kd_maps=null"]


@pytest.fixture(scope="module")
def kd_runs(module_tmp):
    """Teacher, student without KD, HLFD and pixel KD at the claims seed, sharing one cached teacher."""
    root = module_tmp("kd")
    t0 = time.perf_counter()
    data = [f"paths.data_dir={root / 'data'}"]
    out = {}
    hlfd = ["distill=hlfd", "distill.loss.beta=0.0", "distill.loss.lam=0.0"] if DISABLED else ["distill=hlfd"]
    for name, ov in (("teacher", ["distill=teacher"]), ("none", ["distill=none"]), ("hlfd", hlfd),
                     ("pixel_kd", ["distill=pixel_kd"])):
        out[name] = run([*KD, *data, *ov], root / name)["test/dice"]
    out["seconds"] = time.perf_counter() - t0
    return out


@unvalidated("regime v2 (100 student epochs, pre-registered): HLFD - no KD -0.047 / -0.188 / -0.011 at seeds 0-2 "
             "(-0.029 / -0.234 / -0.020 with p_mid^t corrected to X^{0,2..3}), "
             "and at seed 2 the student overtakes the teacher; v1 (20 epochs) failed at 2 of 3 seeds in each of three "
             "measurements; see docs/benchmarks.md")
def test_hlfd_student_beats_student_without_kd(kd_runs):
    """Paper 001 Table 1: HLFD student > student w/o KD, given a teacher clearly above the student.

    Asserted: Dice(teacher) >= Dice(student w/o KD) + 0.05 (the regime holds: the teacher earns it) and
    Dice(HLFD) >= Dice(student w/o KD) + 0.03 (margins fixed before any run).  MEASURED over seeds 0-2 in
    regime v1 (20 student epochs; docs/benchmarks.md), test Dice teacher / no KD / HLFD / pixel KD:
    seed 0 0.823 / 0.243 / 0.180 / 0.215; seed 1 0.827 / 0.029 / 0.029 / 0.029 (every student collapses);
    seed 2 0.583 / 0.161 / 0.025 / 0.150.  Seed 1's "collapse" (twenty-sixth session): the student's val Dice
    never beats the 0.031 of its first epochs, so the best checkpoint is epoch 8's (18 optimiser steps,
    val pixel accuracy 0.018); after 40 steps it has not fitted its one training case (train Dice
    0.13), so this regime also limits the student's steps, not only its labels.  The precondition holds at every seed (the teacher is 0.42-0.80
    ahead); the claim FAILS at every seed: HLFD is below the student without KD at seeds 0 and 2 and equal
    at seed 1; pixel KD is no better (-0.028 / 0.000 / -0.011).  Reported as found, not re-tuned; skipped
    by default.  Mechanism disabled (``FEDMED_CLAIMS_DISABLE=1``: beta = lambda = 0, HLFD's L_F and L_P
    off): HLFD then equals the student w/o KD and the second assertion fails by construction; not run,
    since the enabled test already fails.  HLFD vs pixel KD is recorded, not asserted.

    Regime v2 (100 student epochs, pre-registered; the test's regime now), seeds 0-2: teacher / no KD / HLFD
    / pixel KD 0.848 / 0.752 / 0.705 / 0.731; 0.822 / 0.687 / 0.499 / 0.716; 0.629 / 0.796 / 0.785 / 0.810.
    Every student fits its training case (Dice 0.91-1.00 on it) and none collapses, but HLFD is below the
    student without KD at every seed (-0.047 / -0.188 / -0.011) and at seed 2 the precondition fails (the
    student overtakes the teacher).  Reported as found; skipped; no third regime.  With p_mid^t corrected to
    the teacher's middle maps X^{0,2..3} (twenty-seventh session, a fidelity fix made for its own reason):
    HLFD 0.723 / 0.453 / 0.777, still below the student without KD (-0.029 / -0.234 / -0.020).
    """
    r = kd_runs
    record("001_hlfd", seconds=r["seconds"], teacher=r["teacher"], student=r["none"], hlfd=r["hlfd"],
           pixel_kd=r["pixel_kd"])
    assert r["teacher"] >= r["none"] + 0.05, r
    assert r["hlfd"] >= r["none"] + 0.03, r
