"""Claim (issue 15): on the phantom sites, the student distilled with HLFD (paper 001, Eq. 5) from the
federated teacher beats the local student without distillation on the other sites' test sets.

Regime (``+exp=fed_kits_hlfd_claim``, seed 1): three kidney phantom sites with different scanners
(``data/multisite_kits``: intensity offset 0 / +60 / -50 HU, scale 1 / 1.2 / 0.85, noise, spacing), kidney
target (tumour Dice on 2-3 test phantoms per site after a CPU minute is noise for every model); stage 1 is
a UNet++ (width 16, 2.3M) trained by FedAvg over all three sites for 8 rounds x 1 local epoch; stage 2 gives
each site's ResNet-18 student (11.7M) 6 epochs on that site's ~27 training slices, with L_seg only (``none``)
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
where the precondition passes and the claim misses its margin).
"""
from __future__ import annotations

import pytest

from tests.claims_support import unvalidated
from tests.hydra_helpers import compose_run

pytestmark = [pytest.mark.claims,
              unvalidated("does not hold across seeds: HLFD - no KD off-site +0.017 / -0.063 / +0.045 at seeds 1 / 2 / 3")]

#: minimum gain (absolute Dice, mean over sites of the other-site Dice) of hlfd_fed over none.
MARGIN = 0.02
#: the precondition: the federated teacher beats the local student off-site by at least this much.
TEACHER_MARGIN = 0.05


@pytest.fixture(scope="module")
def claim_metrics(tmp_path_factory):
    from experiments.run import dispatch

    cfg = compose_run(["+exp=fed_kits_hlfd_claim", "seed=1"], tmp_path_factory.mktemp("fed_distill_claim"))
    return dispatch(cfg)


def test_federated_teacher_is_stronger_off_site(claim_metrics):
    teacher = claim_metrics["fed_distill/teacher_fed/dice_other"]
    student = claim_metrics["fed_distill/none/dice_other"]
    assert teacher >= student + TEACHER_MARGIN, f"teacher {teacher:.3f} vs local student {student:.3f}"


def test_hlfd_from_federated_teacher_beats_local_student_off_site(claim_metrics):
    distilled = claim_metrics["fed_distill/hlfd_fed/dice_other"]
    local = claim_metrics["fed_distill/none/dice_other"]
    assert distilled >= local + MARGIN, f"HLFD from the federated teacher {distilled:.3f} vs no KD {local:.3f}"
