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

    def s(*shape):
        return torch.randn(*shape, requires_grad=True)
    return {"student_logits": s(2, K, 8, 8), "teacher_pred_late": torch.randn(2, K, 8, 8),
            "student_mid": [s(2, 3, 8, 8), s(2, 5, 4, 4)],
            "teacher_mid": [torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)],
            "student_late": s(2, 5, 4, 4), "teacher_late": torch.randn(2, 7, 2, 2),
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
    assert all(roles[k].grad is None for k in ("teacher_pred_late", "teacher_late"))


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
    assert torch.isfinite(DKDLoss()(roles)["rad"])


def test_pixel_kd_weight():
    roles = random_roles()
    out = PixelKDLoss(temperature=4.0, weight=0.5)(roles)
    assert out["total_kd"].item() == pytest.approx(0.5 * out["pixel"].item(), rel=1e-6)
