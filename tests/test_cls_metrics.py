"""ClassificationModule metrics vs MedMNIST's evaluator (getAUC/getACC), by hand and with sklearn."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from torch import nn

from lightning_modules.classification import ClassificationModule, task_metrics, task_scores
from lightning_modules.nets.classifiers import ResNet18, ResNet50, SmallCNN


def _eval(task: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    n = logits.shape[1]
    metrics = task_metrics(task, n)
    target = torch.as_tensor(labels)
    metrics.update(task_scores(torch.as_tensor(logits, dtype=torch.float32), task),
                   target.long() if task == "multi-label" else target)
    return {k: float(v) for k, v in metrics.compute().items()}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_binary_by_hand():
    # P(positive) = softmax[:, 1] = 0.9, 0.2, 0.6, 0.4 for labels 1, 0, 0, 1
    p = np.array([0.9, 0.2, 0.6, 0.4])
    logits = np.stack([np.zeros(4), np.log(p / (1 - p))], 1)
    out = _eval("binary", logits, np.array([1, 0, 0, 1]))
    # positives {0.9, 0.4} vs negatives {0.2, 0.6}: pairs won 0.9>0.2, 0.9>0.6, 0.4>0.2 -> 3/4
    assert out["auc"] == pytest.approx(0.75)
    # threshold 0.5 -> predictions 1, 0, 1, 0 -> 2 of 4 correct
    assert out["acc"] == pytest.approx(0.5)


@pytest.mark.parametrize("task", ["multi-class", "ordinal-regression"])
def test_multiclass_and_ordinal_match_sklearn_ovr_mean(task):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 5))
    labels = np.arange(40) % 5
    out = _eval(task, logits, labels)
    probs = _softmax(logits)
    # MedMNIST getAUC: unweighted mean over classes of one-vs-rest AUC; getACC: arg-max accuracy
    ovr = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(5)])
    assert out["auc"] == pytest.approx(ovr, abs=1e-6)
    assert out["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"), abs=1e-6)
    assert out["acc"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))


def test_multiclass_by_hand():
    logits = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4], [0.5, 0.1, 0.4]]))
    out = _eval("multi-class", logits, np.array([0, 1, 2, 2]))
    # class 0: pos {0.7} vs neg {0.1,0.3,0.5} -> 1; class 1: {0.6} vs {0.2,0.3,0.1} -> 1;
    # class 2: pos {0.4,0.4} vs neg {0.1,0.3} -> 1 ; mean 1.0. arg-max: 0,1,2,0 -> 3/4
    assert out["auc"] == pytest.approx(1.0)
    assert out["acc"] == pytest.approx(0.75)


def test_multilabel_matches_medmnist_per_label_means():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(30, 4))
    labels = (rng.random((30, 4)) < 0.4).astype(np.float32)
    labels[0], labels[1] = 1, 0  # every label has both values
    out = _eval("multi-label", logits, labels)
    scores = 1 / (1 + np.exp(-logits))
    auc = np.mean([roc_auc_score(labels[:, i], scores[:, i]) for i in range(4)])
    acc = np.mean([accuracy_score(labels[:, i], scores[:, i] >= 0.5) for i in range(4)])
    assert out["auc"] == pytest.approx(auc, abs=1e-6)
    assert out["acc"] == pytest.approx(acc, abs=1e-6)


def _module(task: str = "multi-class", n: int = 3, **kw) -> ClassificationModule:
    net = {"_target_": "lightning_modules.nets.classifiers.SmallCNN", "in_channels": 1, "num_classes": n, "width": 4}
    return ClassificationModule(net, task, n, **kw)


def test_training_step_adds_extra_loss_terms():
    m = _module()
    batch = {"image": torch.randn(4, 1, 8, 8), "label": torch.tensor([0, 1, 2, 0])}
    base = m.training_step(batch, 0).item()
    m.add_loss_term("prox", lambda mod: torch.tensor(2.5))
    assert m.training_step(batch, 0).item() == pytest.approx(base + 2.5, rel=1e-5)


def test_multilabel_loss_is_bce_and_hparams_are_plain_configs():
    m = _module("multi-label", 3, optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1})
    assert isinstance(m.loss_fn, nn.BCEWithLogitsLoss)
    assert m.hparams["net"]["_target_"].endswith("SmallCNN") and m.hparams["task"] == "multi-label"
    opt = m.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["lr"] == 0.1
    batch = {"image": torch.randn(2, 1, 8, 8), "label": torch.tensor([[1.0, 0, 1], [0, 1, 0]])}
    assert torch.isfinite(m.training_step(batch, 0))


def test_built_objects_are_not_hparams_and_binary_needs_two_logits():
    m = ClassificationModule(SmallCNN(1, 2, width=4), "binary-class", 2,
                             optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    assert "net" not in m.hparams and "optimizer" not in m.hparams and m.task == "binary"
    with pytest.raises(ValueError, match="num_classes=2"):
        _module("binary", 1)
    with pytest.raises(ValueError, match="unknown task"):
        _module("regression", 3)


@pytest.mark.parametrize("cls,res,size", [(ResNet18, 28, 28), (ResNet18, 224, 64), (ResNet50, 28, 28)])
def test_resnets_shapes_and_stems(cls, res, size):
    net = cls(in_channels=1, num_classes=7, resolution=res).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, size, size)).shape == (2, 7)
    if res == 28:  # MedMNIST stem: 3x3 stride 1, no max-pool
        assert net.net.conv1.kernel_size == (3, 3) and net.net.conv1.stride == (1, 1)
        assert isinstance(net.net.maxpool, nn.Identity)
    else:
        assert net.net.conv1.kernel_size == (7, 7) and isinstance(net.net.maxpool, nn.MaxPool2d)


def test_small_cnn_size():
    n = sum(p.numel() for p in SmallCNN(1, 10).parameters())
    assert 50_000 < n < 150_000
    assert SmallCNN(3, 5, norm="group")(torch.randn(2, 3, 28, 28)).shape == (2, 5)


def test_multilabel_auc_leaves_out_a_label_without_positives():
    """Issue 10 §8: label 2 has no positive in the split: the AUC is the mean over labels 0 and 1 only."""
    from lightning_modules.classification import PresentLabelsAUROC

    probs = torch.tensor([[0.9, 0.2, 0.3], [0.1, 0.8, 0.6], [0.7, 0.15, 0.2], [0.3, 0.1, 0.9]])
    target = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    metric = PresentLabelsAUROC(3)
    metric.update(probs, target)
    # label 0: positives {0.9, 0.7} above negatives {0.1, 0.3} -> 1.0
    # label 1: positives {0.8, 0.15} vs negatives {0.2, 0.1}: 3 of 4 pairs ordered -> 0.75; label 2 left out
    assert metric.compute().item() == pytest.approx((1.0 + 0.75) / 2)


@pytest.mark.parametrize("task", ["multi-class", "ordinal-regression"])
def test_multiclass_auc_leaves_out_classes_the_split_does_not_hold(task):
    """Found by an audit: a label-skewed client (paper 000's 2-class skew) holds classes 3 and 7 of 10; a
    perfect model read AUC 0.2 (torchmetrics scores the eight absent classes 0.0). MedMNIST's getAUC cannot
    score an absent class either: the mean is over the present ones, here sklearn's two one-vs-rest AUCs."""
    rng = np.random.default_rng(1)
    labels = rng.choice([3, 7], 60)
    logits = rng.normal(size=(60, 10))
    logits[np.arange(60), labels] += 1.5  # good, not perfect: the per-class AUCs are below 1
    out = _eval(task, logits, labels)
    probs = _softmax(logits)
    ref = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in (3, 7)])
    assert 0.6 < ref < 1.0 and out["auc"] == pytest.approx(ref, abs=1e-6)


def test_binary_auc_of_a_one_class_split_is_undefined():
    out = _eval("binary", np.zeros((6, 2)), np.zeros(6, dtype=np.int64))
    assert np.isnan(out["auc"]) and out["acc"] == pytest.approx(1.0)  # score 0.5 -> predicted negative
