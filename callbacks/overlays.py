"""Prediction overlays for fixed test cases: image, ground truth and prediction contours, as PNG + W&B."""
from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch

from callbacks.plotting import log_images, plt, run_dir, save_figure


class SegmentationOverlays(pl.Callback):
    """At the end of testing, render the largest-foreground slice of the first ``num_cases`` test cases.

    The slices are collected during ``test_batch_end`` (one per case, the one with the most ground-truth
    foreground), so no second pass over the data is needed.
    """

    def __init__(self, num_cases: int = 4, filename: str = "test_overlays.png") -> None:
        self.num_cases, self.filename = num_cases, filename
        self._best: dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray]] = {}

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._best = {}

    @torch.no_grad()
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        case_ids = batch["case_id"]
        pending = [i for i, c in enumerate(case_ids) if c in self._best or len(self._best) < self.num_cases]
        if not pending:
            return
        logits = pl_module.net(batch["image"][pending])
        logits = logits[0] if isinstance(logits, (list, tuple)) else logits
        pred = pl_module.predict_labels(pl_module.probabilities(logits)).cpu().numpy()
        for j, i in enumerate(pending):
            case, mask = case_ids[i], batch["mask"][i].cpu().numpy()
            area = int((mask > 0).sum())
            if case not in self._best and len(self._best) >= self.num_cases:
                continue
            if case not in self._best or area > self._best[case][0]:
                self._best[case] = (area, batch["image"][i, 0].cpu().numpy(), mask, pred[j])

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self._best:
            return
        n = len(self._best)
        fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
        for ax, (case, (_, img, mask, pred)) in zip(axes[0], sorted(self._best.items())):
            ax.imshow(img.T, cmap="gray", origin="lower")
            for c in range(1, int(max(mask.max(), pred.max())) + 1):
                if (mask == c).any():
                    ax.contour((mask == c).T, levels=[0.5], colors=["lime"], linewidths=1.2, origin="lower")
                if (pred == c).any():
                    ax.contour((pred == c).T, levels=[0.5], colors=["red"], linewidths=1.0, linestyles="--", origin="lower")
            ax.set_title(case, fontsize=9)
            ax.axis("off")
        fig.suptitle("test overlays — green: ground truth, red dashed: prediction")
        path = save_figure(fig, run_dir(trainer) / self.filename)
        log_images(trainer, "test/overlays", [path])
