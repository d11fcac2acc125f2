"""Hybrid CE + Dice loss (paper 000 Eq. 1) and the deep-supervision sum (Eq. 2), against hand computations."""
import math

import pytest
import torch

from lightning_modules.losses.deep_supervision import DeepSupervisionLoss
from lightning_modules.losses.hybrid import HybridCEDiceLoss, hybrid_ce_dice


def hand_hybrid(prob, y):
    """Loop implementation of CE + (1 - mean_c 2Σyp/(Σy²+Σp²)) over nested lists prob[n][c], y[n][c]."""
    n, c = len(prob), len(prob[0])
    ce = -sum(y[i][k] * math.log(prob[i][k]) for i in range(n) for k in range(c)) / n
    dices = []
    for k in range(c):
        inter = sum(y[i][k] * prob[i][k] for i in range(n))
        den = sum(y[i][k] ** 2 for i in range(n)) + sum(prob[i][k] ** 2 for i in range(n))
        dices.append(2 * inter / den)
    return ce + 1 - sum(dices) / c


def test_softmax_hybrid_equals_hand_computation():
    logits = torch.tensor([[[[2.0, -1.0, 0.5]], [[0.0, 1.0, 0.5]]]])  # B=1, C=2, H=1, W=3
    target = torch.tensor([[[0, 1, 1]]])
    p = logits.softmax(1)[0, :, 0, :].T.tolist()  # [pixel][class]
    y = [[1, 0], [0, 1], [0, 1]]
    assert hybrid_ce_dice(logits, target, eps=0).item() == pytest.approx(hand_hybrid(p, y), rel=1e-6)


def test_sigmoid_single_channel_equals_two_class_form():
    logit = torch.tensor([[[[1.5, -0.5]]]])  # B=1, C=1 (sigmoid), H=1, W=2
    target = torch.tensor([[[1, 0]]])
    s = torch.sigmoid(logit)[0, 0, 0].tolist()
    p = [[1 - s[0], s[0]], [1 - s[1], s[1]]]
    y = [[0, 1], [1, 0]]
    assert hybrid_ce_dice(logit, target, eps=0).item() == pytest.approx(hand_hybrid(p, y), rel=1e-6)


def test_perfect_prediction_is_near_zero_and_false_positives_cost():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 1:3, 1:3] = 1
    perfect = torch.stack([(target == 0).float(), (target == 1).float()], 1) * 40 - 20
    assert hybrid_ce_dice(perfect, target).item() < 1e-3
    fp = perfect.clone()
    fp[0, 1, 0, 0], fp[0, 0, 0, 0] = 20, -20  # one background pixel predicted foreground
    assert hybrid_ce_dice(fp, target).item() > 0.05  # the batch Dice term penalises false positives


def test_ignore_index_and_label_check():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    t2 = target.clone()
    t2[0, 0, 0] = 255
    assert torch.isfinite(HybridCEDiceLoss(ignore_index=255)(logits, t2))
    with pytest.raises(ValueError, match="outside"):
        hybrid_ce_dice(logits, target + 3)


def test_deep_supervision_sums_heads_with_unit_weights():
    torch.manual_seed(0)
    heads = [torch.randn(2, 2, 8, 8, requires_grad=True) for _ in range(3)]
    target = torch.randint(0, 2, (2, 8, 8))
    base = HybridCEDiceLoss()
    total = DeepSupervisionLoss(base)(heads, target)
    assert total.item() == pytest.approx(sum(base(h, target).item() for h in heads), rel=1e-6)
    total.backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads)
    with pytest.raises(ValueError, match="eta"):
        DeepSupervisionLoss(base, eta=[1.0])(heads, target)


@pytest.mark.parametrize("gap", [10.0, 25.0, 60.0])
def test_a_confidently_wrong_pixel_keeps_its_cross_entropy_gradient(gap):
    """Found by a review: CE was ``log(P.clamp(1e-8))``, which passes no gradient once P < 1e-8 (a logit gap
    above 18.4), so the pixels the net is most confidently wrong about stopped teaching it. The gradient now
    is cross-entropy's (the batch Dice adds ~P(1-P) there), for softmax and for one-channel sigmoid nets."""
    import torch.nn.functional as F

    target = torch.ones(1, 1, 1, dtype=torch.long)
    for logits, ce in ((torch.tensor([gap / 2, -gap / 2]).view(1, 2, 1, 1), F.cross_entropy),
                       (torch.tensor([-gap]).view(1, 1, 1, 1),
                        lambda z, t: F.binary_cross_entropy_with_logits(z[:, 0], t.float()))):
        a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        hybrid_ce_dice(a, target).backward()
        ce(b, target).backward()
        assert torch.allclose(a.grad, b.grad, atol=1e-4) and b.grad.abs().max() > 0.4, (a.grad, b.grad)
