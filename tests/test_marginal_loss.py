"""Partial labels (SegViz, paper 004): the marginal hybrid loss and the two ways of simulating partial
annotation (``federation.unannotated``)."""
import math

import numpy as np
import pytest
import torch

from federation.core.partial_labels import PartialLabels
from lightning_modules.losses.deep_supervision import DeepSupervisionLoss
from lightning_modules.losses.hybrid import HybridCEDiceLoss, hybrid_ce_dice
from lightning_modules.losses.marginal import marginal_probabilities


def test_marginal_probabilities_merge_unannotated_into_background():
    torch.manual_seed(0)
    prob = torch.randn(2, 4, 3, 3, 2).softmax(1)                         # 3D input
    lm = torch.tensor([[False, True, False, False], [True, True, True, True]])
    out, counted = marginal_probabilities(prob, lm)
    assert counted.tolist() == [[True, True, False, False], [True] * 4]  # background always annotated
    assert torch.allclose(out[0, 0], prob[0, 0] + prob[0, 2] + prob[0, 3]) and (out[0, 2:] == 0).all()
    assert torch.allclose(out[1], prob[1]) and torch.allclose(out.sum(1), torch.ones(2, 3, 3, 2))
    with pytest.raises(ValueError, match="label_mask has 3 classes but the net predicts 4"):
        marginal_probabilities(prob, torch.ones(3, dtype=torch.bool))


def test_marginal_loss_is_the_plain_loss_when_everything_is_annotated():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 3, 8, 8), torch.randint(0, 3, (3, 8, 8))
    full = torch.ones(3, dtype=torch.bool)
    assert torch.allclose(hybrid_ce_dice(logits, target, label_mask=full), hybrid_ce_dice(logits, target))


def test_marginal_loss_does_not_teach_an_unannotated_organ_is_background():
    """A liver-only site labels the spleen background: plain CE+Dice pushes the spleen logit down there,
    the marginal loss does not (its spleen probability counts as "not liver")."""
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, :4] = 1                                                    # liver; the spleen is "background"
    liver_only = torch.tensor([True, True, False])
    plain = torch.autograd.grad(hybrid_ce_dice(logits, target), logits)[0]
    marginal = torch.autograd.grad(hybrid_ce_dice(logits, target, label_mask=liver_only), logits)[0]
    bg = target[0] == 0
    assert (plain[0, 2][bg] > 0).all()                                   # descent lowers the spleen logit
    # marginal: spleen and background logits move together against liver, never against each other
    assert torch.allclose(marginal[0, 2][bg] / marginal[0, 0][bg], (logits[0, 2] - logits[0, 0]).exp()[bg], rtol=1e-4)


def test_marginal_dice_counts_a_class_only_where_it_is_annotated():
    """Sample 0 annotates the liver only: its (perfectly predicted) spleen must not enter the spleen Dice,
    so the loss equals the one of sample 1 alone for that class."""
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[:, :2] = 1
    target[1, 2:, :2] = 2
    logits = torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() * 20
    lm = torch.tensor([[True, True, False], [True, True, True]])
    loss = hybrid_ce_dice(logits, target, label_mask=lm)
    assert loss < 1e-3                                                   # a perfect prediction, every class
    ds = DeepSupervisionLoss(HybridCEDiceLoss())
    assert torch.allclose(ds([logits, logits], target, label_mask=lm), 2 * loss)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_partial_labels_modes(as_numpy):
    mask = torch.tensor([[0, 1, 2], [3, 255, 1]])
    item = {"mask": mask.numpy() if as_numpy else mask}
    ignore = PartialLabels([1], 4)(item)
    assert np.asarray(ignore["mask"]).tolist() == [[0, 1, 255], [255, 255, 1]] and "label_mask" not in ignore
    bg = PartialLabels([1, 3], 4, unannotated="background")([item, item])  # a 3D item: a list of patches
    assert all(np.asarray(b["mask"]).tolist() == [[0, 1, 0], [3, 255, 1]] for b in bg)
    assert bg[0]["label_mask"].tolist() == [True, True, False, True]
    with pytest.raises(ValueError, match="federation.unannotated='guess'"):
        PartialLabels([1], 4, unannotated="guess")


def test_a_site_scores_only_the_classes_it_annotates():
    """``annotated_view``: a site labelling class 1 only, whose net also predicts class 2 (which its labels
    call background, or leave unknown as 255), scores class 1 as on its own labels and class 2 not at all."""
    from lightning_modules.metrics import annotated_view, case_scores, confusion_matrix

    pred = torch.tensor([[[1, 1, 2, 2, 0, 0]]])
    for target in (torch.tensor([[[1, 0, 0, 0, 0, 0]]]), torch.tensor([[[1, 0, 255, 255, 0, 0]]])):
        p, t, valid = annotated_view(pred, target, torch.tensor([[True, True, False]]))
        assert p.tolist() == [[[1, 1, 0, 0, 0, 0]]]
        scores = case_scores(confusion_matrix(p, t, 3, valid)[0].numpy(), ["bg", "organ", "tumour"])
        assert scores["dice_organ"] == pytest.approx(2 / 3) and math.isnan(scores["dice_tumour"])
        assert scores["dice"] == pytest.approx(2 / 3)  # the mean over what the site annotates
