"""Prediction overlays for fixed test cases: image, ground truth and prediction contours, as PNG + W&B."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from callbacks.plotting import log_images, plt, run_dir, save_figure


class SegmentationOverlays(pl.Callback):
    """At the end of testing, render the largest-foreground slice of the first ``num_cases`` test cases (of a
    3D run's whole test volumes, predicted by sliding window as the test is, the slice with the most foreground).

    The slices are chosen during ``test_batch_end`` by ground-truth foreground area alone (one per case,
    kept on the CPU), so no second pass over the data is needed; the net predicts the chosen slices once,
    at ``test_epoch_end`` (it used to run again on every test batch holding a slice of those cases).
    """

    def __init__(self, num_cases: int = 4, filename: str = "test_overlays.png") -> None:
        self.num_cases, self.filename = num_cases, filename
        # case -> (foreground area, image [C, H, W] as the net saw it, mask [H, W], sliding-window pad value)
        self._best: dict[str, tuple[int, torch.Tensor, np.ndarray, float | None]] = {}
        #: what the figure shows, for other callbacks (W&B media): ``[(case, image [H, W], mask, prediction)]``
        self.picked: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []
        #: the PNG the last test wrote (None before one); a federation logs it to its own loggers
        self.saved: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Segmentation only, said before anything trains (a walkthrough: ``+exp=digits_cnn callbacks=segmentation``
        trained, then stopped on a KeyError in the test, exit 1, no failed.json)."""
        from lightning_modules.errors import ConfigError
        from lightning_modules.segmentation import SegmentationModule

        if not isinstance(pl_module, SegmentationModule):
            raise ConfigError(f"callbacks=segmentation draws segmentation overlays, but module "
                              f"{type(pl_module).__name__} does not segment: use callbacks=default")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._best, self.picked = {}, []

    @torch.no_grad()
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        case_ids = batch["case_id"]
        if not any(c in self._best or len(self._best) < self.num_cases for c in case_ids):
            return
        areas = (batch["mask"] > 0).flatten(1).sum(1).tolist()
        for i, case in enumerate(case_ids):
            if case not in self._best and len(self._best) >= self.num_cases:
                continue
            if case not in self._best or areas[i] > self._best[case][0]:
                image = batch["image"][i].detach().to("cpu", copy=True)  # a copy: not a view holding the batch
                pad = batch.get("pad_value")  # 3D volumes: what the test's sliding window padded with
                self._best[case] = (int(areas[i]), image, batch["mask"][i].cpu().numpy(),
                                    None if pad is None else float(pad[i]))

    @torch.no_grad()
    def _predict(self, pl_module: pl.LightningModule, cases: list[str]) -> dict[str, np.ndarray]:
        """Predicted labels of the chosen slices: one forward pass per image size (one when the test
        slices share a size; padded mixed-size batches keep the padded image their prediction was made on)."""
        by_shape: dict[tuple, list[str]] = {}
        for case in cases:
            by_shape.setdefault((tuple(self._best[case][1].shape), self._best[case][3]), []).append(case)
        out: dict[str, np.ndarray] = {}
        for (_, pad), group in by_shape.items():
            images = torch.stack([self._best[c][1] for c in group]).to(pl_module.device)
            forward = getattr(pl_module, "forward_eval", None)  # a 3D net: MONAI's sliding window, as in test
            logits = forward(images, pad) if callable(forward) else pl_module.net(images)
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits
            pred = pl_module.predict_labels(pl_module.probabilities(logits)).cpu().numpy()
            out.update(zip(group, pred))
        return out

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self._best:
            return
        cases = sorted(self._best)
        preds = self._predict(pl_module, cases)
        self.picked = [(case, *_shown_slice(self._best[case][1][0].numpy(), self._best[case][2], preds[case]))
                       for case in cases]
        n = len(cases)
        fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
        for ax, (case, img, mask, pred) in zip(axes[0], self.picked):
            ax.imshow(img.T, cmap="gray", origin="lower")
            for c in range(1, int(max(mask.max(), pred.max())) + 1):
                if (mask == c).any():
                    ax.contour((mask == c).T, levels=[0.5], colors=["lime"], linewidths=1.2, origin="lower")
                if (pred == c).any():
                    ax.contour((pred == c).T, levels=[0.5], colors=["red"], linewidths=1.0, linestyles="--", origin="lower")
            ax.set_title(case, fontsize=9)
            ax.axis("off")
        fig.suptitle("test overlays — green: ground truth, red dashed: prediction")
        self.saved = path = save_figure(fig, run_dir(trainer) / self.filename)
        log_images(trainer, "test/overlays", [path])


def _shown_slice(image: np.ndarray, mask: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2D test item as it is; of a volume ([H, W, D], a 3D run's whole test case), the slice along the last
    axis with the most ground-truth foreground."""
    if mask.ndim == 2:
        return image, mask, pred
    k = int((mask > 0).reshape(-1, mask.shape[-1]).sum(0).argmax())
    return image[..., k], mask[..., k], pred[..., k]
