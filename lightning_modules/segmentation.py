"""Generic segmentation LightningModule: any registry net, any loss, deep-supervision aware.

Training sums the loss over every head the net returns (paper 000 Eq. 2); validation, test and prediction
use the main head only. Test metrics are per case (slices reassembled per volume) and reported as
mean ± std across cases (see :mod:`lightning_modules.metrics`); the ROC curve and AUC are torchmetrics' binned
ones, counted by :mod:`lightning_modules.roc`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lightning_modules.base import BaseModule, build, is_argument_error, to_plain
from lightning_modules.errors import ConfigError
from lightning_modules.losses.hybrid import class_probabilities
from lightning_modules.inference import VolumePredictor, main_head
from lightning_modules.metrics import (
    PerCaseConfusion, annotated_view, case_scores, foreground_slices, quiet_if_idle, summarise, updated_anywhere,
)
from lightning_modules.roc import BinnedMulticlassROC
from lightning_modules.surface_collect import SurfaceCollector

#: a 3D case is one item of its batch, so foreground_slices kept or dropped whole volumes (a review)
FOREGROUND_3D = ("module.eval_slices=foreground is paper 001's 2D slice protocol; 3D data (data.patch_size) is "
                 "scored per whole volume: use module.eval_slices=all")


def epoch_value(summary: Mapping[str, float], key: str) -> float:
    """A validation epoch's ``key`` for the monitor: the case mean; 1.0 where every case's Dice is undefined (no
    foreground in truth or prediction of any case: NaN per case, ``dice_per_class``), which only a perfect
    "nothing here" gives (MONAI's ``ignore_empty=False``); 0.0 when no case was scored (the monitor needs the
    key). A 3D review: that perfect epoch was logged 0.0, as low as one full of false positives, so checkpointing
    and early stopping on ``val/dice`` took the worst epoch for it (clients with one or two tumour-free cases)."""
    value = summary.get(key, math.nan)
    if not math.isnan(value):
        return value
    return 1.0 if summary.get("num_cases") and (key == "dice" or key.startswith("dice_")) else 0.0


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
        surface_metrics: add HD95 and normalised surface Dice (mm, from the batches' ``spacing``) to the
            per-case test table; needs a case's slices on one process (skipped under DDP).
        nsd_tolerance_mm: NSD tolerance. ``roi_size``/``overlap``: for 3D nets (5D batches) validation and
            test run MONAI's Gaussian sliding window over whole volumes with this patch size (null: the data's
            ``patch_size``, as predict; overlap in [0, 1)).
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
        surface_metrics: bool = True,
        nsd_tolerance_mm: float = 1.0,
        roi_size: Sequence[int] | None = None,
        overlap: float = 0.5,
    ) -> None:
        # monitor: a ReduceLROnPlateau scheduler steps on it (a review: None here made Lightning refuse one)
        super().__init__(net, optimizer, scheduler, scheduler_interval, monitor=monitor, regulariser=regulariser)
        self.save_hyperparameters(
            {
                "net": to_plain(net) if not isinstance(net, nn.Module) else type(net).__name__,
                "loss": to_plain(loss) if not isinstance(loss, nn.Module) else type(loss).__name__,
                "optimizer": to_plain(optimizer) if isinstance(optimizer, Mapping) else None,
                "scheduler": to_plain(scheduler) if isinstance(scheduler, Mapping) else None,
                "scheduler_interval": scheduler_interval,  # a review: a reload stepped a per-step schedule per epoch
                "roc_thresholds": roc_thresholds,
                "num_classes": num_classes,
                "class_names": list(class_names) if class_names else None,
                "fg_threshold": fg_threshold,
                "eval_slices": eval_slices,
                "monitor": monitor,
                "regulariser": to_plain(regulariser) if isinstance(regulariser, Mapping) else None,
                "surface_metrics": surface_metrics,
                "nsd_tolerance_mm": nsd_tolerance_mm,
                "roi_size": list(roi_size) if roi_size is not None else None,
                "overlap": overlap,
            }
        )
        if eval_slices not in ("all", "foreground"):
            raise ConfigError(f"module.eval_slices must be 'all' or 'foreground', got {eval_slices!r}")
        if fg_threshold is not None and not 0.0 < float(fg_threshold) < 1.0:
            raise ConfigError(f"module.fg_threshold must be in (0, 1) or null, got {fg_threshold}")
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1:
            # a review: overlap=1.0 passed here and was MONAI's ValueError traceback in the first validation
            raise ConfigError(f"module.overlap={overlap!r} must be a number in [0, 1) (the sliding windows' overlap)")
        self.loss = build(loss, what="loss")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.fg_threshold, self.eval_slices = fg_threshold, eval_slices
        self.val_cases = PerCaseConfusion(num_classes)
        self.test_cases = PerCaseConfusion(num_classes)
        self.test_roc = BinnedMulticlassROC(num_classes, thresholds=roc_thresholds)
        self.test_per_case: dict[str, dict[str, float]] = {}
        self.test_summary: dict[str, float] = {}
        self.val_summary: dict[str, float] = {}
        self.val_annotated: torch.Tensor | None = None
        self.val_unlabelled: set[str] = set()
        self.roc_curves: dict[str, tuple[Any, Any]] = {}
        self.surface_metrics, self.nsd_tolerance_mm = surface_metrics, nsd_tolerance_mm
        self.roi_size = None if roi_size is None else tuple(int(r) for r in roi_size)
        self.overlap = overlap
        self.surfaces = SurfaceCollector()  # the test epoch's HD95 / NSD per case

    def setup(self, stage: str) -> None:
        """Class names the config left null come from the data: a ``dataset.json``'s labels (a walkthrough:
        ``data.class_names=null`` named the metrics ``dice_class_1`` though docs/data.md promised the names)."""
        names = getattr(getattr(self._trainer, "datamodule", None), "class_names", None)
        if self.hparams.get("class_names") is None and names and len(names) == self.num_classes:
            self.class_names = [str(n) for n in names]
            self.hparams["class_names"] = list(self.class_names)  # saved in the checkpoints, read by predict
        patch = getattr(getattr(self._trainer, "datamodule", None), "patch_size", None)
        if patch is not None:  # 3D patch data: val/test/predict run the sliding window over whole volumes
            self.check_volumetric(patch)

    def check_volumetric(self, patch_size: Sequence[int]) -> None:
        """Reviews: ``eval_slices=foreground`` (2D only) dropped 3D test volumes with empty labels, now refused;
        ``module.roi_size=null`` fed whole volumes to the 3D net (a tensor-size traceback); it now
        defaults to ``data.patch_size``, as predict does, and is saved in the checkpoints for predict."""
        if self.eval_slices == "foreground":  # a review: an empty-label test volume left the metrics silently
            raise ConfigError(FOREGROUND_3D)
        if self.roi_size is None:
            self.roi_size = tuple(int(p) for p in patch_size)
            self.hparams["roi_size"] = list(self.roi_size)
        getattr(self.net, "check_roi_size", lambda size, key: None)(self.roi_size, "module.roi_size")

    # ------------------------------------------------------------------ steps
    def seg_loss(self, outputs: Any, batch: dict) -> torch.Tensor:
        """L_seg of ``outputs`` against the batch's mask; a partially annotated batch (``label_mask``, paper 004)
        gives the loss its mask (the marginal loss), and a loss that takes none is one :class:`ConfigError` (a
        review: distillation dropped the mask silently in training and raised a TypeError in validation)."""
        if "label_mask" not in batch:
            return self.loss(outputs, batch["mask"])
        try:
            return self.loss(outputs, batch["mask"], label_mask=batch["label_mask"])
        except TypeError as err:
            if not is_argument_error(err):
                raise
            raise ConfigError(f"partially annotated data (federation.partial_labels) needs a loss that takes the "
                              f"sites' label_mask (lightning_modules.losses.hybrid.HybridCEDiceLoss, the marginal "
                              f"loss); {type(self.loss).__name__} does not") from None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.net(batch["image"])
        loss = self.seg_loss(outputs, batch)  # partial labels: the marginal loss (004)
        extra = self.extra_loss(batch_size=len(batch["mask"]))
        if extra is not None:
            loss = loss + extra
        self.log_train_loss(loss, len(batch["mask"]))  # the epoch value over every rank's shard (a review)
        return loss

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities [B, C, H, W] of the main head (sigmoid nets expanded to two classes)."""
        return class_probabilities(logits.float())

    def predict_labels(self, prob: torch.Tensor) -> torch.Tensor:
        return VolumePredictor.labels(prob, self.fg_threshold)

    def forward_eval(self, image: torch.Tensor, pad_value: torch.Tensor | float | None = None) -> torch.Tensor:
        """Main-head logits; a 3D net given whole volumes runs MONAI's Gaussian sliding window over logits
        (as ``experiments.predict``), windows past the volume's edge filled with ``pad_value`` -- the batch's
        ``pad_value``, what the training patches were padded with -- else the volume's lowest value (air after
        the HU window; MONAI's default 0 is mid-window tissue). A review found z-scored volumes padded with their
        minimum here but with 0 in training."""
        if image.ndim == 5 and self.roi_size is not None and tuple(image.shape[2:]) != self.roi_size:
            from monai.inferers import sliding_window_inference
            cval = float(image.min()) if pad_value is None else float(torch.as_tensor(pad_value).flatten()[0])
            return sliding_window_inference(image, self.roi_size, 4, lambda x: main_head(self.net(x)).float(),
                                            overlap=self.overlap, mode="gaussian", padding_mode="constant",
                                            cval=cval)
        return main_head(self.net(image))

    def _evaluate(self, batch: dict, stage: str, cases: PerCaseConfusion) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        if image.ndim == 5 and self.eval_slices == "foreground":  # no datamodule told setup (trainer.test(dataloaders))
            raise ConfigError(FOREGROUND_3D)
        logits = self.forward_eval(image, batch.get("pad_value"))
        loss = self.seg_loss(logits, batch)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=stage == "val", batch_size=len(mask), sync_dist=True)
        prob = self.probabilities(logits)
        every = self.eval_slices != "foreground"  # every item counts: no boolean indexing, which copies (a
        keep = torch.ones(len(mask), dtype=torch.bool) if every else foreground_slices(mask, self.num_classes)
        if every or keep.any():  # performance review: twice a whole volume's probabilities per 3D test case)
            pick = (lambda t: t) if every else (lambda t: t[keep])
            ids = [c for c, k in zip(batch["case_id"], keep.tolist()) if k]
            pred = self.predict_labels(pick(prob))
            valid = batch.get("valid")  # padded mixed-size batches: only the slices' own pixels count
            valid = None if valid is None else pick(valid)
            target = pick(mask)
            if "annotated" in batch:  # a partially annotated site's validation: the classes it labels only
                if stage == "val":
                    seen = batch["annotated"].any(0)
                    self.val_annotated = seen if self.val_annotated is None else self.val_annotated | seen
                pred, target, valid = annotated_view(pred, target, pick(batch["annotated"]), valid)
            cases.update(pred, target, ids, valid)
            if stage == "test":
                if self.surface_metrics:
                    self.surfaces.add(batch, pred, pick(mask), ids, keep, valid, self.class_names,
                                      self.nsd_tolerance_mm)
                flat_p = pick(prob).movedim(1, -1).reshape(-1, prob.shape[1])
                flat_t = pick(mask).reshape(-1)
                if valid is not None:
                    flat_p, flat_t = flat_p[valid.reshape(-1)], flat_t[valid.reshape(-1)]
                self.test_roc.update(flat_p, flat_t)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "val", self.val_cases)

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._evaluate(batch, "test", self.test_cases)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities as the test step computes them (a whole 3D volume through the sliding window: a
        review's ``trainer.predict`` gave the net a 51 x 51 x 40 volume whole, which it cannot take)."""
        image = batch["image"] if isinstance(batch, Mapping) else batch
        return self.probabilities(self.forward_eval(image, batch.get("pad_value") if isinstance(batch, Mapping)
                                                    else None))

    # ------------------------------------------------------------------ epoch ends
    def _case_summary(self, cases: PerCaseConfusion) -> tuple[dict, dict]:
        # no batch reached the metric this epoch (see updated_anywhere): no cases, as compute() would give
        matrices = {}
        if updated_anywhere(cases):
            with quiet_if_idle(cases):
                matrices = cases.compute()
        self.confusion = sum(matrices.values()) if matrices else None  # pixels, true x predicted (W&B plot)
        per_case = {cid: case_scores(cm, self.class_names) for cid, cm in sorted(matrices.items())}
        cases.reset()
        return per_case, summarise(per_case) if per_case else {}

    def on_validation_epoch_start(self) -> None:
        self.val_annotated = None  # the classes this epoch's validation labels, where its batches say (partial labels)

    def on_validation_epoch_end(self) -> None:
        _, self.val_summary = self._case_summary(self.val_cases)
        self.val_unlabelled = set()  # a class no batch labels has no score: NaN, not the 1.0 of "nothing there" (a
        if self.val_annotated is not None:  # walkthrough: a site's unlabelled tumour was averaged in as 1.0)
            seen = self.trainer.strategy.reduce(self.val_annotated.float(), reduce_op="sum") > 0
            self.val_unlabelled = {f"dice_{n}" for c, n in enumerate(self.class_names) if c and not bool(seen[c])}
        # each foreground class's Dice too, so a checkpoint can be chosen on the tumour (a review: module.monitor=
        # val/dice_tumor was refused, the per-class values reaching metrics.json only)
        for key in self._val_keys():
            # computed from the DDP-synced case matrices, so every rank holds the same value
            self.log(f"val/{key}", self._epoch_value(key), prog_bar=key == "dice", sync_dist=True)

    def _epoch_value(self, key: str) -> float:
        return math.nan if key in self.val_unlabelled else epoch_value(self.val_summary, key)

    def val_metric_keys(self) -> tuple[str, ...]:
        """Every key logged under ``val/`` each epoch: what ``module.monitor`` may name, and what
        :class:`callbacks.best_metric.BestMetric` defines on W&B before the first epoch logs."""
        return ("val/loss", *[f"val/{k}" for k in self._val_keys()])

    def test_metric_keys(self) -> tuple[str, ...]:
        """Every key :meth:`on_test_epoch_end` can log under ``test/``: what ``federation.matrix_metric`` may
        name (a walkthrough: ``dice_tumor`` on liver-only data trained the whole matrix into a table of dashes)."""
        fg = self.class_names[1:]
        fams = ("dice", "iou", "rvd", "auc", *(("hd95", "nsd") if self.surface_metrics else ()))
        return ("test/loss", "test/dice", "test/miou", "test/accuracy", "test/num_cases",
                *(("test/hd95", "test/nsd") if self.surface_metrics else ()),
                *[f"test/{f}_{name}" for f in fams for name in fg])

    def _val_keys(self) -> tuple[str, ...]:
        """The validation scores logged each epoch, and written to metrics.json as logged (:func:`epoch_value`)."""
        return ("dice", "miou", "accuracy", *[f"dice_{name}" for name in self.class_names[1:]])

    def on_test_epoch_end(self) -> None:
        self.test_per_case, self.test_summary = self._case_summary(self.test_cases)
        if self.surface_metrics:  # every rank together: DDP gathers the ranks' 3D cases
            scored = self.surfaces.scores(self.class_names, self.nsd_tolerance_mm, self.eval_slices)
            for cid, scores in scored.items():
                self.test_per_case.setdefault(cid, {}).update(scores)
            if scored:
                self.test_summary = summarise(self.test_per_case)
        if updated_anywhere(self.test_roc):
            with quiet_if_idle(self.test_roc):
                fpr, tpr, _ = self.test_roc.compute()
                auc = self.test_roc.auroc()
            for c in range(1, self.num_classes):
                name = self.class_names[c]
                self.roc_curves[name] = (fpr[c].cpu().numpy(), tpr[c].cpu().numpy())
                self.test_summary[f"auc_{name}"] = float(auc[c])
        else:  # no test pixel: no curve to draw (compute() would give an all-zero one) and AUC undefined
            for c in range(1, self.num_classes):
                self.roc_curves.pop(self.class_names[c], None)
                self.test_summary[f"auc_{self.class_names[c]}"] = math.nan
        self.test_roc.reset()
        for key, value in self.test_summary.items():
            if not key.endswith("_std") and not math.isnan(value):
                self.log(f"test/{key}", value, sync_dist=True)

    def summary_metrics(self) -> dict[str, float]:
        """Final metrics for the run's ``metrics.json`` (``val/*`` from the last validation, ``test/*``)."""
        out = {f"val/{k}": v for k, v in self.val_summary.items()}
        out.update({f"val/{k}": self._epoch_value(k) for k in self._val_keys()
                    if k in self.val_summary})  # as logged and monitored (reviews: metrics.json held NaN for 1.0)
        out.update({f"test/{k}": v for k, v in self.test_summary.items()})
        return out
