"""Baseline KD losses (losses/kd/baselines.py)."""
import pytest
import torch

from lightning_modules.losses.kd import (
    KD_LOSSES, AttentionTransferLoss, DKDLoss, HIFDLoss, IFDBaselineLoss, PixelKDLoss, SKDLoss,
    attention_loss, pairwise_similarity_loss, region_affinity_loss, resize,
)

K = 3


def identical_roles() -> dict:
    torch.manual_seed(1)
    logits = torch.randn(2, K, 8, 8)
    mids = [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)]
    late = torch.randn(2, K, 4, 4)
    mask = torch.randint(0, K, (2, 8, 8))
    return {"student_logits": logits.clone(), "teacher_pred_late": logits,
            "student_mid": [m.clone() for m in mids], "teacher_mid": mids,
            "student_late": late.clone(), "teacher_late": late, "mask": mask}


def random_roles() -> dict:
    torch.manual_seed(2)

    def s(*shape):  # teacher tensors require grad too: "the teacher gets no gradient" can then fail
        return torch.randn(*shape, requires_grad=True)
    return {"student_logits": s(2, K, 8, 8), "teacher_pred_late": s(2, K, 8, 8),
            "student_mid": [s(2, 3, 8, 8), s(2, 5, 4, 4)],
            "teacher_mid": [s(2, 4, 8, 8), s(2, 6, 4, 4)],
            "student_late": s(2, 5, 4, 4), "teacher_late": s(2, 7, 2, 2),
            "mask": torch.randint(0, K, (2, 8, 8))}


def make(name: str, identity: bool):
    if name == "hifd":
        return HIFDLoss(classes=K, student_mid_channels=[None, None] if identity else [3, 5])
    return KD_LOSSES[name]()


BASELINES = ["pixel_kd", "at", "skd", "dkd", "ifd", "hifd"]


def hifd_identical_roles() -> dict:
    late = torch.randn(2, K, 4, 4)
    return {"student_mid": [late.clone(), late.clone()], "teacher_late": late,
            "teacher_pred_late": late}


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_zero_when_identical(name):
    roles = hifd_identical_roles() if name == "hifd" else identical_roles()
    if name == "ifd":  # teacher terminal feature == every student branch
        roles["student_mid"] = [roles["teacher_late"].clone(), roles["teacher_late"].clone()]
    out = make(name, identity=True)(roles)
    assert "total_kd" in out
    for term, value in out.items():
        assert value.item() == pytest.approx(0.0, abs=1e-6), (name, term)


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_positive_and_differentiable(name):
    loss = make(name, identity=False)
    roles = random_roles()
    out = loss(roles)
    assert out["total_kd"].item() > 0
    out["total_kd"].backward()
    used = [v for k, v in roles.items() if k.startswith("student") for v in (v if isinstance(v, list) else [v])]
    grads = [t.grad for t in used if t.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for p in loss.parameters():  # HIFD heads
        assert p.grad is not None and torch.isfinite(p.grad).all()
    teacher = [roles["teacher_pred_late"], roles["teacher_late"], *roles["teacher_mid"]]
    assert all(t.requires_grad and t.grad is None for t in teacher)  # the loss detaches the teacher side


def test_required_roles_checked():
    with pytest.raises(KeyError):
        SKDLoss()({"student_logits": torch.randn(1, K, 4, 4)})


def test_at_uses_p2_and_sums_pairs():
    roles = random_roles()
    out = AttentionTransferLoss()(roles)
    expected = sum(attention_loss(s, t, p=2) for s, t in zip(roles["student_mid"], roles["teacher_mid"]))
    assert out["attention"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_ifd_baseline_concatenates_resized_student_branches():
    roles = random_roles()
    t = roles["teacher_late"]
    cat = torch.cat([resize(s, (2, 2)) for s in roles["student_mid"]], 1)
    assert IFDBaselineLoss()(roles)["feature"].item() == pytest.approx(
        attention_loss(cat, t).item(), rel=1e-6)


def test_pairwise_similarity_invariant_to_channel_count_and_scale():
    x = torch.randn(2, 4, 8, 8)
    assert pairwise_similarity_loss(torch.cat([x, x], 1), 3 * x).item() == pytest.approx(0, abs=1e-6)
    assert pairwise_similarity_loss(torch.randn(2, 4, 8, 8), x).item() > 0


def test_region_affinity_hand_case_and_fallback():
    # two classes, student prototypes orthogonal (cos 0), teacher prototypes parallel (cos 1)
    mask = torch.tensor([[[0, 1]]])
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    t = torch.tensor([[[[1.0, 2.0]], [[1.0, 2.0]]]])
    assert region_affinity_loss(s, t, mask, classes=2).item() == pytest.approx(1.0, abs=1e-6)
    only_bg = torch.zeros(1, 1, 2, dtype=torch.long)  # one class present: no pair
    assert region_affinity_loss(s, t, only_bg, classes=2).item() == 0.0
    roles = random_roles()
    del roles["mask"]  # falls back to teacher argmax
    assert torch.isfinite(DKDLoss(rad_weight=0.9)(roles)["rad"])


def test_region_affinity_is_finite_under_float16_autocast():
    """A review: under 16-mixed a background region's feature sum on a 256 x 256 map passed float16's 65504 in the
    prototype einsum, and the DKD loss was NaN (training stopped on the non-finite KD term)."""
    g = torch.Generator().manual_seed(0)
    s = torch.relu(1.2 + 0.5 * torch.randn(1, 8, 256, 256, generator=g))
    t = torch.relu(1.2 + 0.5 * torch.randn(1, 8, 256, 256, generator=g))
    mask = torch.zeros(1, 256, 256, dtype=torch.long)
    mask[0, 100:140, 100:140] = 1
    exact = region_affinity_loss(s, t, mask, classes=2)
    with torch.autocast("cpu", dtype=torch.float16):
        mixed = region_affinity_loss(s.half(), t.half(), mask, classes=2)
    assert torch.isfinite(mixed) and mixed.item() == pytest.approx(exact.item(), abs=1e-6)


def test_a_region_smaller_than_a_feature_cell_still_counts():
    """A 3 x 3 tumour in a 64 x 64 mask on a 2 x 2 feature map: nearest resizing dropped it (the term was 0 on
    every batch of a 64 px DKD run, a review found); area weights keep it, and the term sees the pair."""
    mask = torch.zeros(1, 64, 64, dtype=torch.long)
    mask[0, 10:13, 40:43] = 1
    torch.manual_seed(0)
    s, t = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    assert region_affinity_loss(s, t, mask, classes=2).item() > 1e-4  # 0.0009 here; nearest: exactly 0
    assert region_affinity_loss(s, s, mask, classes=2).item() == 0.0


def test_pixel_kd_weight():
    roles = random_roles()
    out = PixelKDLoss(temperature=4.0, weight=0.5)(roles)
    assert out["total_kd"].item() == pytest.approx(0.5 * out["pixel"].item(), rel=1e-6)


# ---------------------------------------------------------------- hand-computed values (issue 10)
# One sample, 2 classes, a 1x2 image: every term below is worked out on paper from the method's formula,
# not from the module's helpers. Shared numbers:
#   KL((.75,.25) || (.5,.5)) = .75 ln 1.5 + .25 ln .5          (teacher softmax (.75,.25), student uniform)
#   attention maps (p = 4, mean over channels of |z|^4, L2-normalised): (1,0) vs (1,1)/sqrt2 -> 2 - sqrt2
#   cosine of nodes (1,0),(0,1) = 0; of (1,0),(1,1) = 1/sqrt2
import math  # noqa: E402

KL_75_50 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
ATT_10_11 = 2.0 - math.sqrt(2.0)


def _t(*rows) -> torch.Tensor:
    """[1, C, 1, W] from per-channel rows."""
    return torch.tensor([[[list(r)] for r in rows]], dtype=torch.float32)


def test_skd_hand_computed():
    """SKD (Liu et al. 2019): pixel KD at T=1 + pair-wise similarity distillation, weights 0.1 / 0.9."""
    roles = {"student_logits": _t((0, 0), (0, 0)), "teacher_pred_late": _t((math.log(3), 0), (0, 0)),
             "student_late": _t((1, 0), (0, 1)), "teacher_late": _t((1, 1), (0, 1))}
    out = SKDLoss(temperature=1.0, pool_size=(1, 2))(roles)
    pixel = KL_75_50 / 2  # pixel 1: KL(.75,.25 || .5,.5); pixel 2: identical -> 0; mean over 2 pixels
    pair = (0 + 0.5 + 0.5 + 0) / 4  # a^s = [[1,0],[0,1]], a^t = [[1,1/sqrt2],[1/sqrt2,1]]: mean of squared diffs
    assert out["pixel"].item() == pytest.approx(pixel, rel=1e-5)
    assert out["pairwise"].item() == pytest.approx(pair, rel=1e-5)
    assert out["total_kd"].item() == pytest.approx(0.1 * pixel + 0.9 * pair, rel=1e-5)


def test_dkd_hand_computed():
    """DKD/EMKD (Qin et al. 2021) as paper 001 runs it, "without the RKD module": PMD (T=4) + IMD (attention,
    p=4), 0.1/0.9, and no region-affinity term unless ``rad_weight`` asks for it (then RAD at that weight)."""
    roles = {"student_logits": _t((0, 0), (0, 0)), "teacher_pred_late": _t((4 * math.log(3), 0), (0, 0)),
             "student_mid": [_t((1, 0))], "teacher_mid": [_t((1, 1))],
             "student_late": _t((1, 0), (0, 1)), "teacher_late": _t((1, 1), (0, 1)),
             "mask": torch.tensor([[[0, 1]]])}
    pmd = 16 * KL_75_50 / 2  # T^2 * mean over pixels; softmax((4 ln 3, 0) / 4) = (.75, .25)
    imd = ATT_10_11
    rad = (0 - 1 / math.sqrt(2)) ** 2  # class prototypes = the two pixels; one pair (0, 1)
    out = DKDLoss()(roles)
    assert "rad" not in out and set(DKDLoss().required_roles) == {
        "student_logits", "teacher_pred_late", "student_mid", "teacher_mid"}
    assert out["pmd"].item() == pytest.approx(pmd, rel=1e-5)
    assert out["imd"].item() == pytest.approx(imd, rel=1e-5)
    assert out["total_kd"].item() == pytest.approx(0.1 * pmd + 0.9 * imd, rel=1e-5)
    with_rad = DKDLoss(rad_weight=0.9)
    assert {"student_late", "teacher_late"} <= set(with_rad.required_roles)
    out = with_rad(roles)
    assert out["rad"].item() == pytest.approx(rad, rel=1e-5)
    assert out["total_kd"].item() == pytest.approx(0.1 * pmd + 0.9 * imd + 0.9 * rad, rel=1e-5)


def test_hifd_hand_computed():
    """HIFD (Luo et al. 2023) as paper 001 extends it: sum_j attention(z_j^s, z_late^t) and
    mean_j T^2 KL(p_late^t || softmax(z_j^s / T)) (identity heads: the student layers hold logits)."""
    s1, s2 = _t((1, 0), (0, 0)), _t((1, 1), (1, 1))
    roles = {"student_mid": [s1, s2], "teacher_late": _t((1, 1)),
             "teacher_pred_late": _t((4 * math.log(3), 0), (0, 0))}
    out = HIFDLoss(classes=2, student_mid_channels=[None, None])(roles)
    feature = ATT_10_11 + 0.0  # A(s1) = (1,0) vs (1,1)/sqrt2; A(s2) = A(t)
    e = math.exp(0.25)  # s1 pixel 1: softmax((1, 0) / 4) = (e, 1) / (e + 1)
    kl_s1 = 0.75 * math.log(0.75 * (e + 1) / e) + 0.25 * math.log(0.25 * (e + 1))
    pixel = (16 * kl_s1 / 2 + 16 * KL_75_50 / 2) / 2  # pixel 2 is uniform for teacher and both students
    assert out["feature"].item() == pytest.approx(feature, rel=1e-5)
    assert out["pixel"].item() == pytest.approx(pixel, rel=1e-5)
    assert out["total_kd"].item() == pytest.approx(0.9 * feature + 0.1 * pixel, rel=1e-5)
