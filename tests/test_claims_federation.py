"""The federation papers' claims on two phantom sites as learning tests (marker ``claims``; paper 000's data
sharing is in test_claims_datasharing.py, its own file so that pytest-xdist's ``--dist loadfile`` runs it
beside these): each trains real federations at a
fixed seed through Hydra composition + ``experiments.run.dispatch`` and asserts the claim's direction
with a margin.  Margins, the spread over seeds and the "mechanism disabled" failures are recorded in
docs/benchmarks.md ("Claims tests").  ``FEDMED_CLAIMS_DISABLE=1`` runs every test with its mechanism
switched off (each must then fail); ``FEDMED_CLAIMS_SEED`` picks the seed (tests/claims_support.py).
"""
from __future__ import annotations

import math
import os
import time

import pytest

from tests.claims_support import DISABLED, record, run, unvalidated

pytestmark = [pytest.mark.claims]

#: How the partial-label claim hides a site's unannotated organ: ``background`` (as in real partially
#: labelled data, with the marginal loss) by default; ``FEDMED_CLAIMS_UNANNOTATED=ignore`` gives the earlier
#: regime (the organ's pixels skipped by the loss), whose figures docs/benchmarks.md keeps.
UNANNOTATED = os.environ.get("FEDMED_CLAIMS_UNANNOTATED", "background")


# ------------------------------------------------------------------------------- two phantom sites
#: Site 2's scanners (HU' = scale HU + offset + noise). STRONG: its organs sit where site 1's fat is in the
#: [-200, 250] window. MODERATE: the project's existing moderate scanner (data/multisite_kits' site_b, issue
#: 15), fixed for the FL-vs-standalone claims before any run of it (docs/benchmarks.md, "Claims tests").
STRONG = "{intensity_offset:-150.0,intensity_scale:0.6,noise_std:20.0}"
MODERATE = "{intensity_offset:60.0,intensity_scale:1.2,noise_std:25.0}"


def two_sites(partial: dict[str, list[int]] | None = None, same_scanner: bool = False, scanner: str = STRONG) -> list[str]:
    """Two synthetic CT sites (``exp/fed_pancreas``'s institutions) holding liver + spleen phantoms
    (MSD layout, labels 1 liver, 2 spleen) at 32 px.  Site 2's scanner differs in intensity: ``scanner``
    (default :data:`STRONG`).  ``same_scanner``: site 2 with site 1's scanner (label shift only)."""
    ov = ["+exp=fed_pancreas", "logger=csv", "data.num_classes=3", "data.class_names=[background,liver,spleen]",
          "federation.progress=false", "federation.eval_clients=none", "federation.rounds=5",
          "federation.local_epochs=4", "federation.matrix.standalone_epochs=20",
          "federation.matrix.centralised_epochs=20", "module.optimizer.lr=3e-3"]
    for s in ("site1", "site2"):
        ov += [f"data.sites.{s}.layout=msd", f"data.sites.{s}.target=multiclass", f"data.sites.{s}.image_size=32",
               f"data.sites.{s}.synthetic.n_cases=8",
               f"data.sites.{s}.synthetic.shape=[64,64,10]", f"+data.sites.{s}.synthetic.organs=[liver,spleen]"]
    if not same_scanner:
        ov.append(f"data.sites.site2.synthetic.site={scanner}")
    else:
        ov += ["+data.sites.site1.synthetic.site.spacing=[0.8,0.8,2.5]",  # site 1's (default) spacing, explicit
               "data.sites.site2.synthetic.site={intensity_offset:0.0,intensity_scale:1.0,noise_std:10.0,"
               "spacing:[0.8,0.8,2.5]}"]
    if partial is None:
        ov.append("federation.partial_labels=null")
    else:
        ov += ["federation.partial_labels=null"] + [f"+federation.partial_labels.{k}={v}" for k, v in partial.items()]
    return ov


MATRIX = ["federation.evaluation_matrix=true"]  # paper 003's Table 1 with every row


@pytest.fixture(scope="module")
def fedavg_matrix(module_tmp):
    """One FedAvg federation over the two sites (site 2 on the :data:`MODERATE` scanner) with paper 003's
    evaluation matrix (FL_global, FL_local, standalone baselines, centralised), shared by the
    FL-vs-standalone and matrix claims."""
    t0 = time.perf_counter()
    m = run([*two_sites(scanner=MODERATE), *MATRIX], module_tmp("fedavg"))
    return m, time.perf_counter() - t0


@pytest.fixture(scope="module")
def fl_matrix(request, module_tmp):
    """``fedavg_matrix``; with ``FEDMED_CLAIMS_DISABLE=1`` the same run without federation (site 2
    removed: the "FL" model is site 1's alone, FedAvg over one client)."""
    if not DISABLED:
        return request.getfixturevalue("fedavg_matrix")
    t0 = time.perf_counter()
    m = run([*two_sites(scanner=MODERATE), "~data.sites.site2", *MATRIX], module_tmp("nofl"))
    return m, time.perf_counter() - t0


#: FL_global on site j minus site i's standalone model on site j, per site i: half the smallest difference
#: of nine recorded runs, rounded down to 0.01 (the rule pre-registered in docs/benchmarks.md, "Claims tests").
OFF_SITE_MARGIN = {"site1": 0.03, "site2": 0.11}


@pytest.mark.slow
def test_fl_global_beats_standalone_off_site(fl_matrix):
    """Paper 003 §4 / Table 1: the federated global model generalises to the other institution, where
    each institution's standalone model does not.

    Asserted, for each site i: Dice(FL_global on site j's test) >= Dice(site i standalone on site j's
    test) + :data:`OFF_SITE_MARGIN` [i] (j != i), on the fixture's two sites (site 2 on the :data:`MODERATE`
    scanner): 0.03 for site 1's model on site 2, 0.11 for site 2's model on site 1.

    Margins (twenty-sixth session): the first margin, 0.15 for both, was a guess fixed before any run; it
    failed at one seed of three in each of three measurements while the direction held at all nine runs.
    A rule fixed and committed before it was tested (docs/benchmarks.md) set each margin to half the
    smallest difference of those nine runs (0.074 and 0.223), and the rule was tested at seeds 3-5, never
    run before: FL on site 2 - site 1 alone on site 2 = +0.133 / +0.139 / +0.343, FL on site 1 - site 2
    alone on site 1 = +0.296 / +0.183 / +0.433, so it holds at every held-out seed with 0.10 / 0.07 to spare
    at the worst; CI ran it at seed 0 (+0.322 / +0.222, epoch-seeded draws) until the mask-resizing fix
    (thirty-third session), then it was skipped until the fortieth session (below: it runs in CI again).

    MEASURED, moderate regime (pre-registered in session 13 before its first run, seeds 0-2,
    docs/benchmarks.md): FL on site 2 - site 1 alone on site 2 = +0.384 / +0.185 / **+0.074**; FL on
    site 1 - site 2 alone on site 1 = +0.446 / +0.680 / +0.528.  The direction holds at every seed; the
    0.15 margin is missed at seed 2, where site 1's standalone model carries to site 2's brighter scanner
    (0.599 against 0.733 on its own site).
    Earlier regime (site 2 on :data:`STRONG`, organs on site 1's fat intensities), seeds 0-2: FedAvg's
    global model scores 0.000-0.023 on site 2 (one averaged BN over scanners this different never fits
    it; the centralised model reaches 0.70), so the first assertion cannot hold there.
    Mechanism disabled (``FEDMED_CLAIMS_DISABLE=1``: site 2 removed, so the "global" model saw site 1
    only), measured at seed 0 in the moderate regime: the site-2 column has no FL score (NaN) and both
    tests fail (64 s).

    MEASURED after the masks were resized pixel-centre aligned (thirty-third session, 989bda4; one torch thread,
    as CI): seed 0: FL on site 1 0.536 against site 2 alone on site 1 0.476 (+0.060, margin 0.11 missed),
    FL on site 2 0.594 against site 1 alone 0.273 (+0.321); seeds 1 / 2: +0.704 / +0.392 and +0.130 / +0.197.
    The direction holds at every seed; the second margin does not at seed 0. Reported, not re-tuned: skipped as
    not validated (it passed at seed 0 at two threads, in this session's first claims run).

    VALIDATED again (fortieth session) after the hybrid loss's cross-entropy moved to log space (8e89603, a
    correctness fix from a review, not made for this claim), margins unchanged, one torch thread as CI
    (``FEDMED_CLAIMS_ALL=1 FEDMED_CLAIMS_SEED=<s> pytest -n 1 tests/test_claims_federation.py -k "off_site or
    matrix_rows"``): FL on site 2 - site 1 alone on site 2 = +0.291 / +0.135 / +0.151 / **+0.032** / +0.192 /
    +0.274 (margin 0.03) and FL on site 1 - site 2 alone on site 1 = +0.289 / +0.739 / +0.528 / +0.593 / +0.260 /
    +0.337 (margin 0.11) at seeds 0-5: holds at all six, by 0.002 at seed 3, so it runs in CI again at seed 0.
    The 0.03 margin is the pre-registered rule's, not one shown safe across seeds: by that rule's own terms
    (half the smallest of these six gaps) it would be 0.016 today; it is kept, and CI's seed 0 has +0.291.
    Disabled (site 2 removed), seed 0: the site-2 cells are NaN and the test fails; note that this shows the
    test fails without the other site's data, not that the margin separates a federated model from one
    trained without federation (no arm keeps site 2 as a test-only site).

    RE-MEASURED (forty-fifth session) with every standalone row at its best validation epoch (paper 003 §4; the
    rows had been scored at their last epoch), one thread, seeds 0-5: FL on site 2 - site 1 alone = +0.291 /
    +0.272 / +0.229 / +0.136 / +0.092 / +0.213 (margin 0.03), FL on site 1 - site 2 alone = +0.289 / +0.739 /
    +0.463 / +0.377 / +0.260 / +0.319 (margin 0.11): holds at all six, the smallest gap now 0.092 (seed 4).
    """
    metrics, _ = fl_matrix
    mat = metrics["evaluation_matrix"]
    fl, sa1, sa2 = mat["FL_global"], mat.get("site1_baseline", {}), mat.get("site2_baseline", {})
    record("003_fl_vs_standalone", fl_on_site2=fl.get("site2", math.nan), site1_alone_on_site2=sa1.get("site2", math.nan),
           fl_on_site1=fl.get("site1", math.nan), site2_alone_on_site1=sa2.get("site1", math.nan),
           site1_alone_on_site1=sa1.get("site1", math.nan), site2_alone_on_site2=sa2.get("site2", math.nan))
    assert fl.get("site2", math.nan) >= sa1.get("site2", math.nan) + OFF_SITE_MARGIN["site1"], mat
    assert fl.get("site1", math.nan) >= sa2.get("site1", math.nan) + OFF_SITE_MARGIN["site2"], mat


@pytest.mark.slow
def test_evaluation_matrix_rows_and_order(fl_matrix):
    """Paper 003 Table 1 on the two sites: rows FL_global, <site>_FL_local, <site>_baseline (standalone)
    and centralised are all present, and on the pooled test set centralised >= FL_global - 0.05 and
    FL_global >= every off-site standalone score (the matrix's ordering in the paper, and the issue's
    "centralised >= FL_global >= off-site standalone": centralised ~ FL_global > a model from one
    institution on the other's data).

    Since the thirty-ninth session the FL_global >= off-site standalone order is checked site by site, on the
    same test set (FL_global on site 2 >= site 1 alone on site 2, and the mirror), no margin: a review found
    the pooled comparison below let a standalone model pass too (site 1 alone at seed 0: pooled 0.49 against
    0.30). Recorded differences, as in test_fl_global_beats_standalone_off_site: after the mask-resizing fix
    +0.321 / +0.060 (seed 0), +0.704 / +0.392, +0.130 / +0.197 (seeds 1-2); before it +0.133 / +0.296,
    +0.139 / +0.183, +0.343 / +0.433 at the held-out seeds 3-5: the direction holds at every recorded run.
    With site 2 removed the site-2 rows are missing and the test fails.
    MEASURED with the new comparison, after the hybrid loss's CE moved to log space (8e89603), seeds 0 / 1 / 2
    (``FEDMED_CLAIMS_ALL=1 FEDMED_CLAIMS_SEED=<s> FEDMED_CLAIMS_RECORD=... pytest -n 1 -k matrix_rows``): FL
    on site 2 0.615 / 0.712 / 0.671 against site 1 alone 0.324 / 0.577 / 0.520; FL on site 1 0.583 / 0.739 /
    0.529 against site 2 alone 0.294 / 0.000 / 0.001 (holds at every seed); centralised 0.667 / **0.658** /
    0.788 against FL_global pooled 0.599 / 0.726 / 0.600: the unchanged ``centralised >= FL_global - 0.05``
    fails at seed 1 (FL_global beats the centralised model there), so the test is skipped as not validated.

    The order has no margin (twenty-sixth session): the first one, 0.15, was a guess fixed before any run
    and failed at one or two seeds of three in each of three measurements; the pre-registered rule (half
    the smallest difference of the nine recorded runs, docs/benchmarks.md) gives 0.00, since FL_global led
    by 0.001 at one run (0.600 vs 0.599).  Tested at the held-out seeds 3-5: FL_global pooled 0.661 /
    0.763 / 0.651 against the best off-site standalone 0.476 / 0.614 / 0.375, centralised 0.737 / 0.732 /
    0.796; holds at every one.  A zero margin still fails when the mechanism is off: without site 2 the
    site-2 rows are missing.

    FORTY-FIFTH SESSION: in CI again. A paper review found the matrix's standalone and centralised rows scored at
    their last epoch while FL_local was its best round (paper 003 §4 keeps "the model with the highest local
    validation metrics" in client training); every trained row now keeps its best validation epoch
    (``federation.matrix.select: best``). Re-measured with it, one thread, seeds 0-5 (``for s in 0 1 2 3 4 5; do
    FEDMED_CLAIMS_ALL=1 FEDMED_CLAIMS_SEED=$s FEDMED_CLAIMS_RECORD=m.jsonl pytest -n 1 tests/test_claims_federation.py
    -k "off_site or matrix_rows"; done``): centralised 0.700 / 0.746 / 0.788 / 0.785 / 0.764 / 0.782 against
    FL_global pooled 0.599 / 0.726 / 0.600 / 0.599 / 0.765 / 0.620 (FL_global is unchanged to the last digit: it is
    not selected), so ``centralised >= FL_global - 0.05`` holds at all six (closest at seed 4: 0.764 vs 0.765); the
    site-by-site order holds at all six (site 1 alone on site 2 0.324 / 0.440 / 0.442 / 0.280 / 0.640 / 0.478 against
    FL 0.615 / 0.712 / 0.671 / 0.416 / 0.732 / 0.691; site 2 alone on site 1 0.294 / 0.000 / 0.066 / 0.405 / 0.538 /
    0.229 against FL 0.583 / 0.739 / 0.529 / 0.782 / 0.798 / 0.548). The seed-1 failure above was of last-epoch
    rows; the protocol was changed for faithfulness to the paper (the review did not look at this claim), and the
    margin is the one fixed before; ``federation.matrix.select=last`` still gives the old rows.

    Rationale: centralised and FL_global see the same data for the same number of epochs per site
    (20), so they should differ by the federation's averaging only (hence a 0.05 tolerance rather than
    a strict >=); the off-site gap is the one of test_fl_global_beats_standalone_off_site.
    MEASURED, moderate regime, seeds 0-2: centralised 0.721 / 0.686 / 0.775 against FL_global 0.637 /
    0.689 / 0.600 (holds); FL_global - (best off-site standalone + 0.15) = +0.235 / +0.026 / **-0.148**
    (the 0.15 margin failed at seed 2, the same site-1 model as above).  Strong regime, seed 0: FL_global pooled 0.200,
    off-site 0.095 (failed).  Mechanism disabled (site 2 removed): the site-2 rows are missing and the
    row assertion fails (measured at seed 0).
    """
    metrics, seconds = fl_matrix
    mat = metrics["evaluation_matrix"]
    record("003_matrix", seconds=seconds, centralised=mat.get("centralised", {}).get("pooled", math.nan),
           fl_global=mat["FL_global"]["pooled"],
           off_site_max=max(mat.get("site1_baseline", {}).get("site2", math.nan),
                            mat.get("site2_baseline", {}).get("site1", math.nan)),
           fl_on_site2=mat["FL_global"].get("site2", math.nan), fl_on_site1=mat["FL_global"].get("site1", math.nan),
           site1_alone_on_site2=mat.get("site1_baseline", {}).get("site2", math.nan),
           site2_alone_on_site1=mat.get("site2_baseline", {}).get("site1", math.nan))
    for row in ("FL_global", "site1_FL_local", "site2_FL_local", "site1_baseline", "site2_baseline", "centralised"):
        assert row in mat, (row, sorted(mat))
    fl = mat["FL_global"]
    assert mat["centralised"]["pooled"] >= fl["pooled"] - 0.05, mat
    # site by site, on the same test set: a pooled FL score (half on the model's own site) against an off-site
    # standalone one let a standalone model pass too (a review, thirty-ninth session)
    assert fl["site2"] >= mat["site1_baseline"]["site2"], mat
    assert fl["site1"] >= mat["site2_baseline"]["site1"], mat


# ------------------------------------------------------------------------------------- paper 004
@pytest.mark.slow
def test_fedbn_beats_fedavg_under_feature_shift(tmp_path):
    """SegViz (paper 004) / FedBN: under feature shift (the two sites' scanners differ in intensity
    scale, offset and noise) keeping batch-norm local beats averaging it, on each site's own test set.

    Asserted: mean over sites of Dice(FL_global with the site's own BN, own test set) under FedBN >=
    the same under FedAvg + 0.02.  Why this margin: FedBN >= FedAvg is the claim, but with BN averaged
    FedBN *is* FedAvg (equal scores), so a test that must fail when BN is averaged needs a positive
    margin.  MEASURED over seeds 0-2 (docs/benchmarks.md): own-site mean FedBN / FedAvg 0.578 / 0.230,
    0.623 / 0.284, 0.721 / 0.176, i.e. +0.348 / +0.339 / +0.545 against the 0.02 margin (FedAvg's global
    model gets Dice 0.000-0.023 on site 2 at every seed; FedBN 0.42-0.72), so the margin is safe by a
    factor of ~17 at the worst seed; the margin was fixed before the runs and not changed after them.
    Mechanism disabled (``FEDMED_CLAIMS_DISABLE=1``: ``federation/strategy=fedavg`` in place of fedbn,
    i.e. BN averaged): both runs have the same configuration and seed; measured at seed 0 the two are
    identical (0.230 / 0.230, the CPU kernels are deterministic) and the assertion fails, as it must.  With
    epoch-seeded draws (twenty-fourth session): FedBN / FedAvg 0.775 / 0.164, 0.750 / 0.287, 0.705 / 0.145 at
    seeds 0-2; disabled at seed 0, 0.164 / 0.164.  Both federations
    run here with the matrix's FL_global rows only (no standalone or centralised baselines), so the test
    does not wait for the FL-vs-standalone fixture.
    """
    t0 = time.perf_counter()
    fl_only = ["federation.evaluation_matrix=true", "federation.matrix.standalone=false",
               "federation.matrix.centralised=false"]  # FL_global per site (own BN under FedBN), no baselines
    avg = run([*two_sites(), "federation/strategy=fedavg", *fl_only], tmp_path / "fedavg")["evaluation_matrix"]["FL_global"]
    strategy = "federation/strategy=fedavg" if DISABLED else "federation/strategy=fedbn"
    bn = run([*two_sites(), strategy, *fl_only], tmp_path / "fedbn")["evaluation_matrix"]["FL_global"]
    own_avg = (avg["site1"] + avg["site2"]) / 2
    own_bn = (bn["site1"] + bn["site2"]) / 2
    record("004_fedbn", t0, fedavg_own=own_avg, fedbn_own=own_bn, fedavg_site1=avg["site1"], fedavg_site2=avg["site2"],
           fedbn_site1=bn["site1"], fedbn_site2=bn["site2"])
    assert own_bn >= own_avg + 0.02, (bn, avg)


@pytest.mark.slow
@unvalidated("spleen margin missed by 0.002 at seed 2 (+0.423/+0.330/+0.298 vs 0.3; +0.313/+0.221/+0.571 in "
             "the 2026-12-03 environment; +0.428/+0.594/+0.438 with epoch-seeded draws); the pre-registered "
             "margin 0.11 failed at held-out seed 5 (spleen +0.035: the federation barely learnt it, 0.055); "
             "with the log-space CE (fortieth session) spleen +0.525/+0.451/+0.561/+0.342/+0.262/+0.019 at seeds "
             "0-5: 0.3 missed at seeds 4 and 5; see docs/benchmarks.md")
def test_partial_labels_federation_learns_each_sites_missing_organ(tmp_path):
    """SegViz (paper 004): from partially annotated sites (site 1 labels the liver only, site 2 the
    spleen only), the federated model segments each site's *missing* organ better than that site's
    standalone model.  Default (``UNANNOTATED=background``): a site's other organ is labelled background,
    as in real partially labelled data, and the hybrid loss is marginalised over it.

    Same scanner at both sites (label shift only), so the pooled test set has each site's distribution: the FL
    score is on both sites' test cases and a standalone model's on its own site's only (a review), cases drawn
    by the same phantom generator, so the two test sets differ by sampling, not distribution.
    Standalone model of a site = the same federation with that site alone (FedAvg over one client is
    local training), same rounds and epochs.  Asserted: Dice(FL, spleen) >= Dice(site 1 alone, spleen)
    + 0.3 and Dice(FL, liver) >= Dice(site 2 alone, liver) + 0.3 (margins fixed before any run).
    MEASURED over seeds 0-2 (final-round models, docs/benchmarks.md): spleen FL 0.445 / 0.350 / 0.298 vs
    site 1 alone 0.022 / 0.020 / 0.001 (+0.423 / +0.330 / +0.298: seed 2 misses the margin by 0.002);
    liver FL 0.673 / 0.663 / 0.830 vs site 2 alone 0.250 / 0.068 / 0.000 (holds).  The margin is not
    lowered after the runs, so the test stays skipped.  The pre-registered rule of the twenty-sixth session
    (margins 0.11 spleen / 0.21 liver, half the smallest difference of nine runs, docs/benchmarks.md) was
    tested at the held-out seeds 3-5: spleen +0.625 / +0.692 / **+0.035**, liver +0.510 / +0.647 / +0.484.
    It fails at seed 5, where the federated model barely learns the spleen (0.055), so the test stays
    skipped with its first margins; no second rule was tried.  With ``UNANNOTATED=ignore`` (the organ's pixels
    skipped; fourth session) the spleen half failed at every seed (FL 0.044 / 0.000 / 0.000).
    Mechanism disabled (``FEDMED_CLAIMS_DISABLE=1``: both sites annotate the liver only, nobody labels
    the spleen), seed 0: FL spleen 0.021 vs site 1 alone 0.022, the first assertion fails, as it must.
    MEASURED again (fortieth session) after the hybrid loss's CE moved to log space (8e89603), seeds 0-5, one
    thread: spleen FL 0.546 / 0.480 / 0.561 / 0.342 / 0.284 / 0.040 vs site 1 alone 0.021 / 0.029 / 0.000 /
    0.000 / 0.023 / 0.021 (+0.525 / +0.451 / +0.561 / +0.342 / **+0.262** / **+0.019**); liver FL 0.753 / 0.591 /
    0.857 / 0.760 / 0.740 / 0.494 vs site 2 alone 0.310 / 0.015 / 0.088 / 0.234 / 0.002 / 0.009 (holds at all
    six). The direction holds at every seed; the spleen margin fails at seeds 4 and 5 (at seed 5 the federation
    again barely learns the spleen): still not validated, reported as found.
    """
    t0 = time.perf_counter()
    labels = {"site1": [1], "site2": [1]} if DISABLED else {"site1": [1], "site2": [2]}
    mode = [f"federation.unannotated={UNANNOTATED}"]
    fl = run([*two_sites(labels, same_scanner=True), *mode], tmp_path / "fl")
    alone1 = run([*two_sites({"site1": [1]}, same_scanner=True), *mode, "~data.sites.site2"], tmp_path / "s1")
    alone2 = run([*two_sites({"site2": [2]}, same_scanner=True), *mode, "~data.sites.site1"], tmp_path / "s2")
    # every value indexed: a missing one fails (a review: ``.get(..., 0.0)`` made a missing baseline the easiest
    # value to beat), and NaN fails too
    vals = {"fl_spleen": fl["test/dice_spleen"], "site1_alone_spleen": alone1["test/dice_spleen"],
            "fl_liver": fl["test/dice_liver"], "site2_alone_liver": alone2["test/dice_liver"]}
    record("004_partial_labels", t0, **vals)
    assert all(math.isfinite(v) for v in vals.values()), vals
    assert vals["fl_spleen"] >= vals["site1_alone_spleen"] + 0.3, vals
    assert vals["fl_liver"] >= vals["site2_alone_liver"] + 0.3, vals


def test_claims_scenarios_compose(tmp_path):
    """The claims' scenarios compose against the real config tree (no training): two liver + spleen
    sites with different scanners, per-site partial labels, and one-site standalone runs."""
    from omegaconf import OmegaConf

    from tests.hydra_helpers import compose_run

    cfg = compose_run(two_sites(), tmp_path)
    s1, s2 = (OmegaConf.to_container(cfg.data.sites[s].synthetic) for s in ("site1", "site2"))
    assert s1["organs"] == s2["organs"] == ["liver", "spleen"] and s1["site"] != s2["site"]
    assert cfg.federation.partial_labels is None and cfg.data.num_classes == 3
    cfg = compose_run(two_sites({"site1": [1], "site2": [2]}, same_scanner=True), tmp_path)
    assert OmegaConf.to_container(cfg.federation.partial_labels) == {"site1": [1], "site2": [2]}
    assert cfg.data.sites.site1.synthetic.site == cfg.data.sites.site2.synthetic.site
    cfg = compose_run([*two_sites({"site1": [1]}, same_scanner=True), "~data.sites.site2"], tmp_path)
    assert list(cfg.data.sites) == ["site1"] and list(cfg.federation.partial_labels) == ["site1"]
