"""Claim (issue 15): on the phantom sites, the student distilled with HLFD (paper 001, Eq. 5) from the
federated teacher beats the local student without distillation on the other sites' test sets.

Regime (``+exp=fed_kits_hlfd_claim``, seed 1): three kidney phantom sites with different scanners
(``data/multisite_kits``: intensity offset 0 / +60 / -50 HU, scale 1 / 1.2 / 0.85, noise, spacing), kidney
target (tumour Dice on 2-3 test phantoms per site after a CPU minute is noise for every model); stage 1 is
a UNet++ (width 16, 2.3M) trained by FedAvg over all three sites for 10 rounds x 2 local epochs; stage 2 gives
each site's ResNet-18 student (11.7M) 15 epochs on that site's ~27 training slices, with L_seg only (``none``)
or L_seg + HLFD from the federated teacher (``hlfd_fed``). The teacher is stronger than the local student
because of its data, not its size: it has seen every site's intensity profile, each local student one.
The test first checks that precondition (a teacher no better than the student would show nothing), then
the claim, on the mean over sites of the Dice on the two other sites' test sets.

Margins, set a priori (not from results): MARGIN = 0.02 Dice is above the rounding of a mean over 3 sites x 2
other sites x 2-3 test volumes and well below the teacher-student gap the precondition demands (0.05), so
the claim is "a measurable part of the teacher's off-site advantage reaches the student".
STATUS: does not hold across seeds in this regime (docs/benchmarks.md, "Federated distillation"): other-site
Dice, HLFD from the federated teacher minus no KD, with seeded augmentation (after be19bc9): **+0.017 (seed 1),
-0.063 (seed 2), +0.045 (seed 3)**, mean 0.000; before the seeding fix +0.026 / -0.049 / +0.060. The
precondition holds at every seed (teacher 0.691 / 0.568 / 0.701 vs local student 0.178 / 0.230 / 0.235).
Reported as found, not re-tuned; the test stays skipped by default (``FEDMED_CLAIMS_ALL=1`` runs it at seed 1,
where the precondition passes and the claim missed its margin; in the 2026-12-03 environment, with one thread per
xdist worker as in CI, it passes there and fails at seeds 2 and 3: +0.051 / -0.045 / -0.048). Since the
thirty-eighth session the federation's clients train on their site's whole training split (a review found
``client_val_fraction`` 0.2 carving one more case off each site, so the federated teacher had ~25 % less data
than the local students): -0.015 / +0.064 / +0.029 at seeds 1 / 2 / 3, teacher 0.626 / 0.593 / 0.591 against
the local student 0.183 / 0.150 / 0.197 off-site; the margin is missed at seed 1, still not validated.

The federated variant (issue 15 §2) has its own test below, with a hypothesis fixed before its seeds ran.
"""
from __future__ import annotations

import os

import pytest

from tests.claims_support import DISABLED, claims_seed, record, unvalidated
from tests.hydra_helpers import compose_run

pytestmark = [pytest.mark.claims]
LOCAL_CLAIM = unvalidated("does not hold across seeds: HLFD - no KD off-site +0.017 / -0.063 / +0.045 at seeds 1 / 2 / 3; "
                          "+0.051 / -0.045 / -0.048 in the 2026-12-03 environment; -0.011 / -0.049 / -0.020 with "
                          "epoch-seeded draws; +0.003 / -0.084 / +0.040 with HLFD's p_mid^t corrected; +0.003 / +0.111 / "
                          "+0.084 with independent augmentation draws; -0.015 / +0.064 / +0.029 with the federated stages on the sites' "
                          "whole training splits; +0.010 / +0.136 / +0.035 with the federated teacher at the "
                          "regime's batch size 4 (fortieth session)")
#: the local claim's seed (``FEDMED_CLAIMS_SEED`` for the spread over seeds; its regime was chosen at seed 1)
LOCAL_CLAIM_SEED = claims_seed(default=1)
#: the federated-student hypothesis runs at its first held-out seed unless FEDMED_CLAIMS_SEED says otherwise
FED_STUDENT_SEED = claims_seed(default=4)

#: minimum gain (absolute Dice, mean over sites of the other-site Dice) of hlfd_fed over none.
MARGIN = 0.02
#: the precondition: the federated teacher beats the local student off-site by at least this much.
TEACHER_MARGIN = 0.05


@pytest.fixture(scope="module")
def claim_metrics(module_tmp):
    from experiments.run import dispatch

    off = ["distill.loss.beta=0.0", "distill.loss.lam=0.0"] if DISABLED else []  # HLFD off: hlfd_fed = none
    cfg = compose_run(["+exp=fed_kits_hlfd_claim", f"seed={LOCAL_CLAIM_SEED}", *off], module_tmp("fed_distill_claim"))
    metrics = dispatch(cfg)
    record("015_local_hlfd_fed", seed=LOCAL_CLAIM_SEED, teacher_fed=metrics["fed_distill/teacher_fed/dice_other"],
           none=metrics["fed_distill/none/dice_other"], hlfd_fed=metrics["fed_distill/hlfd_fed/dice_other"])
    return metrics


#: the precondition holds (teacher 0.764 / 0.641 / 0.690 against the local student 0.183 / 0.150 / 0.197 at seeds
#: 1-3, every arm at batch 4, fortieth session; 0.626 / 0.593 / 0.591 at the federated arms' earlier batch 8): it is skipped only because it shares the local claim's ~280 s fixture (a review: it carried that claim's
#: reason)
WITH_LOCAL_CLAIM = pytest.mark.skipif(
    os.environ.get("FEDMED_CLAIMS_ALL", "") != "1",
    reason="validated at seeds 1-3 (teacher 0.764 / 0.641 / 0.690 vs local student 0.183 / 0.150 / 0.197); skipped "
           "with the local claim, whose ~280 s fixture it shares (FEDMED_CLAIMS_ALL=1 runs it)")


@WITH_LOCAL_CLAIM
@pytest.mark.skipif(DISABLED, reason="a precondition (the teacher is worth distilling), no mechanism to switch off")
def test_federated_teacher_is_stronger_off_site(claim_metrics):
    teacher = claim_metrics["fed_distill/teacher_fed/dice_other"]
    student = claim_metrics["fed_distill/none/dice_other"]
    assert teacher >= student + TEACHER_MARGIN, f"teacher {teacher:.3f} vs local student {student:.3f}"


@LOCAL_CLAIM
def test_hlfd_from_federated_teacher_beats_local_student_off_site(claim_metrics):
    distilled = claim_metrics["fed_distill/hlfd_fed/dice_other"]
    local = claim_metrics["fed_distill/none/dice_other"]
    assert distilled >= local + MARGIN, f"HLFD from the federated teacher {distilled:.3f} vs no KD {local:.3f}"


# ------------------------------------------------------------------ the federated variant (issue 15 §2)
@pytest.fixture(scope="module")
def fed_student_metrics(module_tmp):
    """The claim regime with the federated students only (``fed_none``, ``fed_hlfd``), at
    ``FEDMED_CLAIMS_SEED`` (default 4, the first held-out seed); ``FEDMED_CLAIMS_DISABLE=1``: HLFD with
    beta = lambda = 0 in every client's loss."""
    from experiments.run import dispatch

    off = ["distill.loss.beta=0.0", "distill.loss.lam=0.0"] if DISABLED else []
    overrides = ["+exp=fed_kits_hlfd_claim", f"seed={FED_STUDENT_SEED}", "fed_distill.arms=[fed_none,fed_hlfd]", *off]
    return dispatch(compose_run(overrides, module_tmp("fed_student_claim")))


@unvalidated("with every arm at the regime's stated batch size 4 (fortieth session; the federated arms had trained "
             "at 8), fed_hlfd - fed_none off-site -0.023 / +0.107 / +0.070 at the held-out seeds 4 / 5 / 6: fails at "
             "seed 4; at batch 8 it held (+0.215 / +0.149 / +0.153)")
def test_federated_student_with_hlfd_beats_federated_student_without_kd_off_site(fed_student_metrics):
    """Issue 15 §2, the federated variant: one student for all sites trained by the federation with the
    HLFD term against the frozen federated teacher in every client's loss (``fed_hlfd``) beats the same
    federated student with L_seg only (``fed_none``), on the other sites' test sets (mean over sites).

    Where the hypothesis comes from: the six-model table of seeds 1-3 (docs/benchmarks.md, "all six
    models"), which was not made to test it, showed fed_hlfd - fed_none = +0.027 / +0.069 / +0.065 off-site.
    A claim suggested by those seeds cannot be validated on them, so it is tested on seeds never run
    before (4, 5, 6), with the margins of the local claim above, fixed before those runs:
    precondition federated teacher >= fed_none + TEACHER_MARGIN, claim fed_hlfd >= fed_none + MARGIN.
    STATUS, measured at the held-out seeds (``FEDMED_CLAIMS_ALL=1 FEDMED_CLAIMS_SEED=4|5|6``, one thread,
    ~400 s each): fed_hlfd - fed_none off-site **-0.120 (seed 4)**, +0.199 (seed 5), +0.152 (seed 6); the
    precondition holds at each (teacher 0.697 / 0.656 / 0.763 vs fed_none 0.564 / 0.423 / 0.486). It fails at
    seed 4, so it was not validated: reported as found (docs/benchmarks.md), not re-tuned, skipped by default;
    it failed at seed 4 again in every later measurement (-0.159 in the 2026-12-03 environment, -0.271 at two
    threads and -0.001 at one with epoch-seeded draws, -0.010 with HLFD's p_mid^t corrected, -0.005 with
    independent augmentation draws).
    VALIDATED in the thirty-eighth session, after a fix not made for this claim: a review found each client
    carving a validation case off its site's training split (``client_val_fraction`` 0.2), so the federation
    trained on ~25 % fewer slices than the local arms; ``fed_kits_hlfd`` now trains on the whole split. At the
    same held-out seeds, same margins, one thread: fed_hlfd - fed_none off-site **+0.215 / +0.149 / +0.153**
    (seeds 4 / 5 / 6; fed_none 0.355 / 0.483 / 0.543, fed_hlfd 0.570 / 0.632 / 0.696, teacher 0.630 / 0.625 /
    0.630). It holds at each, so it runs by default (seed 4).
    Mechanism disabled (``FEDMED_CLAIMS_DISABLE=1 FEDMED_CLAIMS_SEED=5``, beta = lambda = 0): fed_hlfd equals
    fed_none to the last digit (0.4226 both; the teacher's forward draws no random numbers), so the test
    fails, as it must.
    NOT VALIDATED at the regime's stated batch size (fortieth session): a review found the regime set batch 4
    per site while the federation's clients batch by ``data.batch_size`` (8), so every federated arm above
    (teacher, fed_none, fed_hlfd) trained at 8 and the local arms at 4. With one batch size for every arm (4,
    as the regime's comment said; chosen before any run of it), same held-out seeds and margins, one thread:
    fed_hlfd - fed_none off-site **-0.023** / +0.107 / +0.070 (seeds 4 / 5 / 6; fed_none 0.612 / 0.539 / 0.640,
    fed_hlfd 0.589 / 0.647 / 0.709, teacher 0.682 / 0.664 / 0.671). It fails at seed 4, so it is skipped by
    default again; reported as found, not re-tuned (the batch-8 result stands as a measurement of that regime).
    """
    teacher = fed_student_metrics["fed_distill/teacher_fed/dice_other"]
    plain = fed_student_metrics["fed_distill/fed_none/dice_other"]
    distilled = fed_student_metrics["fed_distill/fed_hlfd/dice_other"]
    record("015_fed_student_hlfd", seed=FED_STUDENT_SEED, teacher=teacher, fed_none=plain, fed_hlfd=distilled)
    assert teacher >= plain + TEACHER_MARGIN, f"federated teacher {teacher:.3f} vs federated student {plain:.3f}"
    assert distilled >= plain + MARGIN, f"federated student + HLFD {distilled:.3f} vs without KD {plain:.3f}"
