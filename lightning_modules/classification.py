"""Image classification for the four MedMNIST task types (paper 002, MedMNIST Classification Decathlon).

Training uses cross-entropy (paper 002, §3.1), or BCE-with-logits for the multi-label task. Evaluation
follows MedMNIST's reference evaluator (``medmnist/evaluator.py``, ``getAUC``/``getACC``), with scores =
softmax of the logits (sigmoid for multi-label):

* ``binary`` (two logits, as MedMNIST's nets): AUC of the positive-class score ``y_score[:, -1]``;
  ACC with ``score > 0.5`` (for two classes the same as arg-max).
* ``multi-class``: AUC = mean over classes of the one-vs-rest AUC (unweighted); ACC by arg-max.
* ``ordinal-regression`` (RetinaMNIST): MedMNIST trains it as a plain multi-class problem with
  cross-entropy and evaluates it with the multi-class branch above (its evaluator has no ordinal case);
  we do the same, so numbers compare with the paper's Table 2.
* ``multi-label`` (ChestMNIST): AUC = mean over labels of each label's AUC; ACC = mean over labels of
  each label's accuracy at threshold 0.5 (MedMNIST predicts 1 when ``score >= 0.5``, torchmetrics when
  ``score > 0.5``; ties have probability zero). With equal sample counts per label this equals the
  element-wise accuracy over the ``N x L`` matrix.

These map onto torchmetrics (``BinaryAUROC``/``BinaryAccuracy``, ``MulticlassAUROC`` macro-averaged/
``MulticlassAccuracy(average="micro")``, ``MultilabelAUROC``/``MultilabelAccuracy(average="macro")``; a class
or label with no positive in the split is left out of the AUC mean, and binary AUC is NaN for a one-class
split, where torchmetrics would count 0.0),
checked against sklearn in ``tests/test_cls_metrics.py``. Keys: ``{train,val,test}/{loss,auc,acc}``; the test
confusion matrix (per class; ``[L, 2, 2]`` per label for multi-label) is kept as ``confusion_matrix``
and drawn by :class:`callbacks.confusion.ConfusionFigure` (``confusion_matrix_test.png``, W&B).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics import classification as tmc
from torchmetrics.utilities import dim_zero_cat

from lightning_modules.base import BaseModule, to_plain
from lightning_modules.tasks import normalize_task

SPLITS = ("train", "val", "test")


def _defined_mean(per_class: torch.Tensor, positives: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the per-class AUCs whose class has positives and negatives among the ``n`` samples (AUC is
    undefined otherwise); NaN when none has."""
    valid = (positives > 0) & (positives < n)
    return per_class[valid].mean() if bool(valid.any()) else torch.tensor(float("nan"))


class PresentLabelsAUROC(tmc.MultilabelAUROC):
    """Multi-label macro AUC over the labels that have positives and negatives in the split (MedMNIST's
    per-label mean): a label with no positive (small federated client splits) is left out, not averaged
    in as 0. NaN when no label qualifies."""

    def __init__(self, num_labels: int) -> None:
        super().__init__(num_labels, average=None)

    def compute(self) -> torch.Tensor:
        target = dim_zero_cat(self.target)
        return _defined_mean(super().compute(), target.sum(0), target.shape[0])


class PresentClassesAUROC(tmc.MulticlassAUROC):
    """Multi-class macro AUC (MedMNIST's mean of one-vs-rest AUCs) over the classes that have positives and
    negatives in the split. torchmetrics scores a class with no positive as 0.0 and averages it in: a
    label-skewed federated client holding 2 of 10 classes would read 0.2 for a perfect model. NaN when no
    class qualifies."""

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes, average=None)

    def compute(self) -> torch.Tensor:
        target = dim_zero_cat(self.target).long()
        return _defined_mean(super().compute(), torch.bincount(target, minlength=self.num_classes)[: self.num_classes],
                             target.numel())


class DefinedBinaryAUROC(tmc.BinaryAUROC):
    """Binary AUC, NaN (undefined, as sklearn says) for a split holding one class only, not torchmetrics' 0.0."""

    def compute(self) -> torch.Tensor:
        target = dim_zero_cat(self.target)
        if target.numel() == 0 or bool((target == target[0]).all()):
            return torch.tensor(float("nan"))
        return super().compute()


def task_metrics(task: str, num_classes: int) -> MetricCollection:
    """AUC and ACC of MedMNIST's evaluator for ``task`` (see module docstring); AUC leaves out a class the
    split does not hold (undefined there), as MedMNIST's ``getAUC`` cannot score it either."""
    task = normalize_task(task)
    if task == "binary":
        return MetricCollection({"auc": DefinedBinaryAUROC(), "acc": tmc.BinaryAccuracy(threshold=0.5)})
    if task == "multi-label":
        return MetricCollection({"auc": PresentLabelsAUROC(num_classes),
                                 "acc": tmc.MultilabelAccuracy(num_classes, threshold=0.5, average="macro")})
    return MetricCollection({"auc": PresentClassesAUROC(num_classes),
                             "acc": tmc.MulticlassAccuracy(num_classes, average="micro")})


def roc_curves(metric: Metric, task: str, names: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Per class (one-vs-rest; per label; the positive class of a binary task) ``(fpr, tpr, auc)`` from an AUC
    metric's stored scores, synced over every rank (all ranks call it); classes without both positives and
    negatives are left out, as the AUC leaves them out."""
    from torchmetrics.functional.classification import binary_roc

    with metric.sync_context(should_unsync=True):
        scores, target = dim_zero_cat(metric.preds).float().cpu(), dim_zero_cat(metric.target).long().cpu()
    if target.numel() == 0:
        return {}
    if task == "binary":
        columns = {names[-1]: (scores, target)}
    elif task == "multi-label":
        columns = {names[i]: (scores[:, i], target[:, i]) for i in range(scores.shape[1])}
    else:
        columns = {names[i]: (scores[:, i], (target == i).long()) for i in range(scores.shape[1])}
    out = {}
    for name, (score, truth) in columns.items():
        if 0 < int(truth.sum()) < truth.numel():
            fpr, tpr, _ = binary_roc(score, truth)
            out[name] = (fpr.numpy(), tpr.numpy(), float(torch.trapezoid(tpr, fpr)))
    return out


def task_scores(logits: torch.Tensor, task: str) -> torch.Tensor:
    """MedMNIST's ``y_score`` as the metrics take it: P(positive) [B] for binary, sigmoid for multi-label,
    softmax [B, C] otherwise."""
    if task == "multi-label":
        return torch.sigmoid(logits)
    probs = F.softmax(logits, dim=1)
    return probs[:, -1] if task == "binary" else probs


class ClassificationModule(BaseModule):
    """Classifier over ``dict(image, label)`` batches for MedMNIST's four task types (module docstring).

    ``net``/``optimizer``/``scheduler`` are modules/partials or ``_target_`` configs (Hydra
    ``_recursive_: false``); configs are stored in ``hparams`` so ``load_from_checkpoint`` rebuilds the
    run. ``num_classes`` is the number of logits: 2 for binary (as MedMNIST), L labels for multi-label.
    Extra loss terms registered with :meth:`add_loss_term` (FedProx) are added to the training loss.
    """

    def __init__(self, net: nn.Module | Mapping, task: str, num_classes: int,
                 optimizer: Callable[..., torch.optim.Optimizer] | Mapping | None = None,
                 scheduler: Callable[..., Any] | Mapping | None = None,
                 class_names: Sequence[str] | None = None, monitor: str = "val/auc") -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, monitor=monitor)
        self.task, self.num_classes = normalize_task(task), int(num_classes)
        if self.task == "binary" and self.num_classes != 2:
            raise ValueError(f"task binary needs num_classes=2 (two logits, as MedMNIST), got {num_classes}")
        self.class_names = [str(c) for c in class_names] if class_names else [str(i) for i in range(self.num_classes)]
        configs = {k: to_plain(v) for k, v in (("net", net), ("optimizer", optimizer), ("scheduler", scheduler))
                   if v is None or isinstance(v, (Mapping, DictConfig))}  # built objects are not hparams
        self.save_hyperparameters({**configs, "task": self.task, "num_classes": self.num_classes,
                                   "class_names": self.class_names, "monitor": monitor})
        self.loss_fn = nn.BCEWithLogitsLoss() if self.task == "multi-label" else nn.CrossEntropyLoss()
        # keyed "<split>_metrics": a ModuleDict key may not shadow nn.Module.train
        self.split_metrics = nn.ModuleDict({f"{s}_metrics": task_metrics(self.task, self.num_classes) for s in SPLITS})
        self.split_losses = nn.ModuleDict({f"{s}_loss": MeanMetric() for s in SPLITS})
        self.confmat: Metric = (tmc.MultilabelConfusionMatrix(self.num_classes) if self.task == "multi-label"
                                else tmc.MulticlassConfusionMatrix(self.num_classes))
        self.results: dict[str, float] = {}
        self.confusion_matrix: np.ndarray | None = None
        #: the test split's ROC per class, ``{name: (fpr, tpr, auc)}`` (``callbacks.curves.ClassificationCurves``)
        self.roc_curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        self._updated: set[str] = set()

    # ------------------------------------------------------------------ steps
    def _step(self, batch: Mapping[str, torch.Tensor], split: str) -> torch.Tensor:
        logits = self(batch["image"])
        label = batch["label"]
        target = label.float() if self.task == "multi-label" else label.long()
        loss = self.loss_fn(logits, target)
        with torch.no_grad():
            scores = task_scores(logits.detach().float(), self.task)
            self.split_metrics[f"{split}_metrics"].update(scores, target.long() if self.task == "multi-label" else target)
            self.split_losses[f"{split}_loss"].update(loss.detach(), weight=label.shape[0])
            if split == "test":
                pred = scores if self.task == "multi-label" else logits.argmax(dim=1)
                self.confmat.update(pred, target.long())
        self._updated.add(split)
        return loss

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, "train")
        extra = self.extra_loss(batch_size=len(batch["label"]))
        return loss if extra is None else loss + extra

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """MedMNIST's ``y_score``: softmax [B, C] (sigmoid [B, L] for multi-label)."""
        logits = self(batch["image"])
        return torch.sigmoid(logits) if self.task == "multi-label" else F.softmax(logits, dim=1)

    # ------------------------------------------------------------------ epoch ends
    def _epoch_end(self, split: str) -> None:
        metrics, losses = self.split_metrics[f"{split}_metrics"], self.split_losses[f"{split}_loss"]
        if split in self._updated and not (self._trainer is not None and self.trainer.sanity_checking):
            values = {f"{split}/{k}": v for k, v in metrics.compute().items()}
            values[f"{split}/loss"] = losses.compute()
            self.log_dict(values, prog_bar=split != "test", sync_dist=False)
            self.results.update({k: float(v) for k, v in values.items()})
            if self.monitor in values:  # best validation score: the checkpoint the test uses (§3.1)
                best, new = self.results.get(f"{self.monitor}_best"), float(values[self.monitor])
                lower = any(s in self.monitor.rsplit("/", 1)[-1] for s in ("loss", "error"))
                # NaN (the AUC of a one-class split) is no score: a first NaN stayed the best forever (a review)
                if math.isfinite(new) and (best is None or not math.isfinite(best)
                                           or (new < best if lower else new > best)):  # max() kept a loss's worst
                    self.results[f"{self.monitor}_best"] = new
        metrics.reset()
        losses.reset()
        self._updated.discard(split)

    def val_metric_keys(self) -> tuple[str, ...]:
        """Every key logged under ``val/`` each epoch (as :meth:`SegmentationModule.val_metric_keys`)."""
        return (*[f"val/{k}" for k in self.split_metrics["val_metrics"].keys()], "val/loss")

    def test_metric_keys(self) -> tuple[str, ...]:
        """Every key logged under ``test/`` (the same metrics as ``val/``): what ``federation.matrix_metric``
        may name."""
        return (*[f"test/{k}" for k in self.split_metrics["test_metrics"].keys()], "test/loss")

    def on_train_epoch_end(self) -> None:
        self._epoch_end("train")

    def on_validation_epoch_end(self) -> None:
        self._epoch_end("val")

    def on_test_epoch_end(self) -> None:
        if "test" in self._updated:
            self.confusion_matrix = self.confmat.compute().cpu().numpy()  # drawn by callbacks.confusion
            self.roc_curves = roc_curves(self.split_metrics["test_metrics"]["auc"], self.task, self.class_names)
        self.confmat.reset()
        self._epoch_end("test")

    def summary_metrics(self) -> dict[str, float]:
        """Last computed ``{train,val,test}/{loss,auc,acc}`` plus the best monitored validation score
        (e.g. ``val/auc_best``), for the run's ``metrics.json``."""
        return dict(sorted(self.results.items()))
