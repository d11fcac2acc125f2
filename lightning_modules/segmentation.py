"""Generic segmentation LightningModule: any registry net, any loss, deep-supervision aware.

Training sums the loss over every head the net returns (paper 000 Eq. 2); validation, test and prediction
use the main head only. Test metrics are per case (slices reassembled per volume) and reported as
mean ± std across cases (see :mod:`lightning_modules.metrics`); the ROC curve and AUC come from torchmetrics.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAUROC, MulticlassROC

from lightning_modules.base import BaseModule, build, to_plain
from lightning_modules.losses.hybrid import class_probabilities
from lightning_modules.metrics import PerCaseConfusion, case_scores, summarise


class SegmentationModule(BaseModule):
    """Semantic segmentation of 2D slices with per-volume evaluation.

    Args:
        net: the network or its ``_target_`` config (kept in hparams).
        loss: training loss (typically :class:`DeepSupervisionLoss` around the hybrid loss) or its config.
        num_classes: classes including background; ``class_names`` name them (default ``class_i``).
        fg_threshold: binary tasks only — foreground where P(fg) > threshold (paper 001's reference code
            uses 0.4); ``None`` uses arg-max.
        eval_slices: ``"all"`` (full-volume protocol) or ``"foreground"`` (paper 001's protocol: only slices
            whose ground truth contains a foreground class count in val/test metrics).
        roc_thresholds: number of bins of the ROC curve (bounded memory on whole volumes).
        regulariser: optional partial wrapping the net with an auxiliary branch whose
            ``auxiliary_losses()`` join the training loss (paper 003's VAE: ``module/regulariser=vae``).
    """

    def __init__(
        self,
        net: nn.Module | Mapping,
        loss: nn.Module | Mapping,
        num_classes: int,
        optimizer: Any = None,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        class_names: Sequence[str] | None = None,
        fg_threshold: float | None = None,
        eval_slices: str = "all",
        roc_thresholds: int = 200,
        monitor: str = "val/dice",
        regulariser: Any = None,
    ) -> None:
        super().__init__(net, optimizer, scheduler, scheduler_interval, monitor=None, regulariser=regulariser)
        self.save_hyperparameters(
            {
                "net": to_plain(net) if not isinstance(net, nn.Module) else type(net).__name__,
                "loss": to_plain(loss) if not isinstance(loss, nn.Module) else type(loss).__name__,
                "optimizer": to_plain(optimizer) if isinstance(optimizer, Mapping) else None,
                "scheduler": to_plain(scheduler) if isinstance(scheduler, Mapping) else None,
                "num_classes": num_classes,
                "class_names": list(class_names) if class_names else None,
                "fg_threshold": fg_threshold,
                "eval_slices": eval_slices,
                "monitor": monitor,
                "regulariser": to_plain(regulariser) if isinstance(regulariser, Mapping) else None,
            }
        )
        if eval_slices not in ("all", "foreground"):
            raise ValueError(f"module.eval_slices must be 'all' or 'foreground', got {eval_slices!r}")
        self.loss = build(loss, what="loss")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.fg_threshold, self.eval_slices = fg_threshold, eval_slices
        self.val_cases = PerCaseConfusion(num_classes)
        self.test_cases = PerCaseConfusion(num_classes)
        self.test_roc = MulticlassROC(num_classes, thresholds=roc_thresholds)
        self.test_auc = MulticlassAUROC(num_classes, average=None, thresholds=roc_thresholds)
        self.test_per_case: dict[str, dict[str, float]] = {}
        self.test_summary: dict[str, float] = {}
        self.val_summary: dict[str, float] = {}
        self.roc_curves: dict[str, tuple[Any, Any]] = {}

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.net(batch["image"])
        loss = self.loss(outputs, batch["mask"])
        extra = self.extra_loss()
        if extra is not None:
            loss = loss + extra
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["mask"]))
        return loss

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, C, H, W] of the main head (sigmoid nets expanded to two classes)."""
        return class_probabilities(logits.float())

    def predict_labels(self, prob: torch.Tensor) -> torch.Tensor:
        if self.fg_threshold is not None and prob.shape[1] == 2:
            return (prob[:, 1] > self.fg_threshold).long()
        return prob.argmax(1)

    def _evaluate(self, batch: dict, stage: str, cases: PerCaseConfusion) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        logits = self.net(image)
        logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        loss = self.loss(logits, mask)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=len(mask), sync_dist=True)
        prob = self.probabilities(logits)
        keep = torch.ones(len(mask), dtype=torch.bool, device=mask.device)
        if self.eval_slices == "foreground":
            keep = (mask > 0).flatten(1).any(1)
        if keep.any():
            ids = [c for c, k in zip(batch["case_id"], keep.tolist()) if k]
            cases.update(self.predict_labels(prob[keep]), mask[keep], ids)
            if stage == "test":
                flat_p = prob[keep].permute(0, 2, 3, 1).reshape(-1, prob.shape[1])
                flat_t = mask[keep].reshape(-1)
                self.test_roc.update(flat_p, flat_t)
                self.test_auc.update(flat_p, flat_t)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val", self.val_cases)

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test", self.test_cases)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        image = batch["image"] if isinstance(batch, Mapping) else batch
        logits = self.net(image)
        return self.probabilities(logits[0] if isinstance(logits, (list, tuple)) else logits)

    # ------------------------------------------------------------------ epoch ends
    def _case_summary(self, cases: PerCaseConfusion) -> tuple[dict, dict]:
        matrices = cases.compute()
        self.confusion = sum(matrices.values()) if matrices else None  # pixels, true x predicted (W&B plot)
        per_case = {cid: case_scores(cm, self.class_names) for cid, cm in sorted(matrices.items())}
        cases.reset()
        return per_case, summarise(per_case) if per_case else {}

    def on_validation_epoch_end(self) -> None:
        _, self.val_summary = self._case_summary(self.val_cases)
        for key in ("dice", "miou", "accuracy"):
            value = self.val_summary.get(key, math.nan)
            # computed from the DDP-synced case matrices, so every rank holds the same value
            self.log(f"val/{key}", 0.0 if math.isnan(value) else value, prog_bar=key == "dice", sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.test_per_case, self.test_summary = self._case_summary(self.test_cases)
        fpr, tpr, _ = self.test_roc.compute()
        auc = self.test_auc.compute()
        self.test_roc.reset(), self.test_auc.reset()
        for c in range(1, self.num_classes):
            name = self.class_names[c]
            self.roc_curves[name] = (fpr[c].cpu().numpy(), tpr[c].cpu().numpy())
            self.test_summary[f"auc_{name}"] = float(auc[c])
        for key, value in self.test_summary.items():
            if not key.endswith("_std") and not math.isnan(value):
                self.log(f"test/{key}", value, sync_dist=True)

    def summary_metrics(self) -> dict[str, float]:
        """Final metrics for the run's ``metrics.json`` (``val/*`` from the last validation, ``test/*``)."""
        out = {f"val/{k}": v for k, v in self.val_summary.items()}
        out.update({f"test/{k}": v for k, v in self.test_summary.items()})
        return out
