"""A(.) helpers (losses/kd/attention.py) and HLFD (losses/kd/hlfd.py), paper 001 Eqs. 1-5."""
import math

import pytest
import torch

from lightning_modules.losses.kd import (
    HLFDLoss, attention_loss, attention_map, ifd_loss, ipd_loss, pixel_kl, ufd_loss,
    unify_features, unify_predictions, upd_loss,
)

K = 3  # classes


def test_attention_map_unit_norm_and_size():
    z = torch.randn(2, 5, 8, 6)
    a = attention_map(z)
    assert a.shape == (2, 48)
    assert torch.allclose(a.norm(dim=1), torch.ones(2), atol=1e-6)
    for rf in (True, False):
        a4 = attention_map(z, p=2, size=(4, 3), resize_features=rf)
        assert a4.shape == (2, 12)
        assert torch.allclose(a4.norm(dim=1), torch.ones(2), atol=1e-6)
    # p = 2 map is the channel mean of squares before normalisation
    ref = z.pow(2).mean(1).flatten(1)
    assert torch.allclose(attention_map(z, p=2), ref / ref.norm(dim=1, keepdim=True), atol=1e-6)


def test_attention_loss_zero_identical_positive_otherwise_and_grad():
    t = torch.randn(2, 4, 8, 8)
    assert attention_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-10)
    # channel count may differ: only the maps are compared
    assert attention_loss(torch.cat([t, t], 1), t).item() == pytest.approx(0.0, abs=1e-10)
    s = torch.randn(2, 6, 16, 16, requires_grad=True)
    t.requires_grad_(True)
    loss = attention_loss(s, t)
    assert 0 < loss.item() <= 2.0 + 1e-6  # maps are non-negative unit vectors
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert t.grad is None  # teacher side detached


def test_kl_direction_hand_example():
    s = torch.zeros(1, 2, 1, 1)  # p_s = (0.5, 0.5)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)  # p_t = (0.75, 0.25)
    forward_kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # KL(p_t || p_s)
    reverse_kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    got = pixel_kl(s, t, temperature=1.0).item()
    assert got == pytest.approx(forward_kl, rel=1e-5)
    assert abs(got - reverse_kl) > 1e-3
    # temperature: softmax(t / T), scaled by T^2
    pt = torch.softmax(t.flatten() / 2.0, 0)
    expected = 4.0 * float((pt * (pt.log() - math.log(0.5))).sum())
    assert pixel_kl(s, t, temperature=2.0).item() == pytest.approx(expected, rel=1e-5)


def test_pixel_kl_resizes_student_to_teacher():
    s = torch.randn(2, K, 4, 4, requires_grad=True)
    t = torch.randn(2, K, 8, 8)
    loss = pixel_kl(s, t)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(s.grad).all()
    with pytest.raises(ValueError):
        pixel_kl(torch.randn(1, 2, 4, 4), t)


def test_ufd_resizes_to_smallest_middle_map():
    mids = [torch.randn(2, 2, 8, 8), torch.randn(2, 3, 4, 4), torch.randn(2, 1, 6, 6)]
    z = unify_features(mids)
    assert z.shape == (2, 6, 4, 4)
    assert torch.equal(z[:, 2:5], mids[1])
    s = torch.randn(2, 5, 16, 16)
    expected = (attention_map(s, size=(4, 4)) - attention_map(z)).pow(2).sum(1).mean()
    assert ufd_loss(s, mids).item() == pytest.approx(expected.item(), rel=1e-5)
    preds = [torch.randn(2, K, 8, 8), torch.randn(2, K, 4, 4)]
    p = unify_predictions(preds)
    assert p.shape == (2, K, 4, 4)
    assert torch.allclose(p, (torch.nn.functional.interpolate(preds[0], size=(4, 4), mode="bilinear")
                              + preds[1]) / 2, atol=1e-6)


def test_ifd_sums_and_ipd_averages_over_student_layers():
    t_late = torch.randn(2, 8, 4, 4)
    s1, s2 = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 16, 16)
    assert ifd_loss([s1, s2], t_late).item() == pytest.approx(
        (attention_loss(s1, t_late) + attention_loss(s2, t_late)).item(), rel=1e-6)
    p_late = torch.randn(2, K, 16, 16)
    l1, l2 = torch.randn(2, K, 8, 8), torch.randn(2, K, 4, 4)
    assert ipd_loss([l1, l2], p_late).item() == pytest.approx(
        ((pixel_kl(l1, p_late) + pixel_kl(l2, p_late)) / 2).item(), rel=1e-6)
    assert upd_loss(l1, [p_late]).item() == pytest.approx(pixel_kl(l1, p_late).item(), rel=1e-6)


def identical_roles() -> dict:
    """Student == teacher everywhere; heads are identity so student maps are already logits."""
    a = torch.randn(2, K, 8, 8)
    late = torch.randn(2, K, 4, 4)
    return {"student_early": a.clone(), "student_mid": [late.clone(), late.clone()],
            "teacher_mid": [a], "teacher_late": late, "teacher_pred_mid": [a],
            "teacher_pred_late": late}


def random_roles(requires_grad: bool = True) -> dict:
    def r(*shape, grad=False):
        return torch.randn(*shape, requires_grad=grad)
    return {"student_early": r(2, 4, 16, 16, grad=requires_grad),
            "student_mid": [r(2, 6, 8, 8, grad=requires_grad), r(2, 8, 4, 4, grad=requires_grad)],
            "teacher_mid": [r(2, 5, 8, 8), r(2, 7, 4, 4)], "teacher_late": r(2, 9, 2, 2),
            "teacher_pred_mid": [r(2, K, 16, 16), r(2, K, 16, 16)],
            "teacher_pred_late": r(2, K, 16, 16)}


def test_hlfd_zero_when_identical():
    loss = HLFDLoss(classes=K, student_early_channels=None, student_mid_channels=[None, None])
    out = loss(identical_roles())
    assert set(out) == {"ufd", "ifd", "upd", "ipd", "feature", "pixel", "total_kd"}
    for name, value in out.items():
        assert value.item() == pytest.approx(0.0, abs=1e-6), name


def test_hlfd_positive_differentiable_and_weighted():
    torch.manual_seed(0)
    loss = HLFDLoss(classes=K, student_early_channels=4, student_mid_channels=[6, 8])
    assert len(list(loss.parameters())) == 6  # three registered 1x1 heads (weight + bias)
    roles = random_roles()
    out = loss(roles)
    for name in ("ufd", "ifd", "upd", "ipd"):
        assert out[name].item() > 0, name
    assert out["feature"].item() == pytest.approx((out["ufd"] + out["ifd"]).item(), rel=1e-6)
    assert out["pixel"].item() == pytest.approx((out["upd"] + out["ipd"]).item(), rel=1e-6)
    assert out["total_kd"].item() == pytest.approx(
        0.9 * out["feature"].item() + 0.1 * out["pixel"].item(), rel=1e-6)
    out["total_kd"].backward()
    for g in [roles["student_early"].grad] + [z.grad for z in roles["student_mid"]]:
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    for p in loss.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_hlfd_role_and_layer_checks():
    loss = HLFDLoss(classes=K, student_early_channels=4, student_mid_channels=[6])
    roles = random_roles(requires_grad=False)
    with pytest.raises(ValueError):
        loss(roles)  # built for one middle layer, given two
    del roles["teacher_late"]
    with pytest.raises(KeyError):
        loss(roles)


def test_end_to_end_wiring_with_feature_tap():
    """Hook paths -> roles -> HLFDLoss, adapters sized by a dry forward; grads reach the student."""
    from torch import nn

    from lightning_modules.hooks import FeatureTap
    from lightning_modules.losses.kd import infer_channels

    def net(width: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.Conv2d(width, width, 3, 2, 1),
                             nn.Conv2d(width, 2 * width, 3, 2, 1), nn.Conv2d(2 * width, K, 1),
                             nn.Upsample(scale_factor=4))
    teacher, student = net(6), net(3)
    t_paths = {"teacher_mid": ["1", "2"], "teacher_late": "2", "teacher_pred_mid": ["3"],
               "teacher_pred_late": "4"}
    s_paths = {"student_early": "0", "student_mid": ["1", "2"]}
    flat = lambda d: [p for v in d.values() for p in ([v] if isinstance(v, str) else v)]  # noqa: E731
    _, s_ch = infer_channels(teacher, student, flat(t_paths), flat(s_paths), (1, 1, 16, 16))
    loss = HLFDLoss(K, s_ch["0"], [s_ch["1"], s_ch["2"]])
    x = torch.randn(2, 1, 16, 16)
    with FeatureTap(teacher, flat(t_paths), detach=True) as tt, FeatureTap(student, flat(s_paths)) as st:
        teacher(x)  # with grad enabled: only FeatureTap(detach=True) keeps the teacher out of the graph
        student(x)
        roles = {r: (tt[p] if isinstance(p, str) else [tt[q] for q in p]) for r, p in t_paths.items()}
        roles |= {r: (st[p] if isinstance(p, str) else [st[q] for q in p]) for r, p in s_paths.items()}
        out = loss(roles)
    out["total_kd"].backward()
    assert all(p.grad is not None for p in student[:3].parameters())
    assert all(p.requires_grad and p.grad is None for p in teacher.parameters())


def test_pixel_kl_of_one_channel_nets_is_the_sigmoids_two_class_kl():
    """A review: ``log_softmax`` over a sigmoid net's single channel is 0, so every pixel KD term of a one-channel
    teacher/student pair was 0. One channel z now means the two classes [σ(-z), σ(z)] (logits [0, z])."""
    torch.manual_seed(0)
    s, t = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    two = pixel_kl(torch.cat([torch.zeros_like(s), s], 1), torch.cat([torch.zeros_like(t), t], 1))
    assert pixel_kl(s, t).item() == pytest.approx(two.item(), rel=1e-5) and two.item() > 0.05
    assert pixel_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
