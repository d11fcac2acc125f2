"""The student's intermediate predictive maps next to its final prediction and the ground truth
(paper 001, Fig. 2), for fixed validation cases, as a PNG grid in the run dir and W&B images.

Rows are cases (the slice with the most ground-truth foreground of each of the first ``num_cases``
validation cases, sorted by id, so the figure shows the same slices every time); columns are the image,
the ground truth, then each predictive map of the student (its tapped early/middle features through the
KD loss's learnable predictive heads, :meth:`DistillationModule.intermediate_predictions`), shown as
P(foreground) in [0, 1], and the final prediction.  Losses without predictive heads (pixel KD, AT, SKD,
DKD, IFD) show the final prediction only; a plain SegmentationModule (``distill=none|teacher``) too.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from callbacks.plotting import log_images, plt, run_dir, save_figure


def _fg_prob(logits: torch.Tensor) -> np.ndarray:
    """P(foreground) [B, H, W] (1 - P(background) for multi-class)."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0]).cpu().numpy()
    return (1.0 - torch.softmax(logits.float(), dim=1)[:, 0]).cpu().numpy()


class KDMaps(pl.Callback):
    """Render the Fig. 2-style grid at the end of fit (and every ``every_n_epochs`` validations if > 0)."""

    def __init__(self, num_cases: int = 3, filename: str = "kd_maps.png", every_n_epochs: int = 0) -> None:
        self.num_cases, self.filename, self.every_n_epochs = num_cases, filename, every_n_epochs
        self._samples: list[tuple[str, int, Any, Any]] | None = None

    def _select(self, trainer: pl.Trainer) -> list[tuple[str, int, Any, Any]]:
        """(case, slice, image [C,H,W], mask [H,W]) of the largest-foreground slice of the first cases."""
        dm = trainer.datamodule
        ds = getattr(dm, "val_dataset", None) if dm is not None else None
        if ds is None or len(ds) == 0:
            return []
        best: dict[str, tuple[int, int, Any, Any]] = {}
        for i in range(len(ds)):
            item = ds[i]
            case = item["case_id"]
            if case not in best and len(best) >= self.num_cases:
                break  # val items come case by case, in sorted case order
            area = int((item["mask"] > 0).sum())
            if case not in best or area > best[case][0]:
                best[case] = (area, int(item["slice_index"]), item["image"], item["mask"])
        return [(c, s, img, m) for c, (_, s, img, m) in sorted(best.items())]

    @torch.no_grad()
    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, tag: str = "") -> Any:
        if self._samples is None:
            self._samples = self._select(trainer)
        if not self._samples:
            return None
        image = torch.stack([s[2] for s in self._samples]).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            if hasattr(pl_module, "intermediate_predictions"):
                maps = pl_module.intermediate_predictions(image)
            else:
                out = pl_module.net(image)
                maps = {"final": out[0] if isinstance(out, (list, tuple)) else out}
        finally:
            pl_module.train(was_training)
        final = maps["final"]
        pred = pl_module.predict_labels(pl_module.probabilities(final)).cpu().numpy() \
            if hasattr(pl_module, "predict_labels") else final.argmax(1).cpu().numpy()
        cols = ["image", "ground truth", *[k for k in maps if k != "final"], "final P(fg)", "prediction"]
        probs = {k: _fg_prob(v) for k, v in maps.items()}
        n = len(self._samples)
        fig, axes = plt.subplots(n, len(cols), figsize=(2.3 * len(cols), 2.4 * n), squeeze=False)
        for r, (case, sl, img, mask) in enumerate(self._samples):
            panels = [img[0].numpy(), mask.numpy(), *[probs[k][r] for k in maps if k != "final"],
                      probs["final"][r], pred[r]]
            for c, (ax, title, panel) in enumerate(zip(axes[r], cols, panels)):
                if c == 0:
                    ax.imshow(panel.T, cmap="gray", origin="lower")
                elif title in ("ground truth", "prediction"):
                    ax.imshow(panel.T, cmap="Greens", vmin=0, vmax=max(1, int(panel.max())), origin="lower")
                else:
                    ax.imshow(panel.T, cmap="magma", vmin=0.0, vmax=1.0, origin="lower")
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=8)
            axes[r][0].set_ylabel(f"{case}\nslice {sl}", fontsize=8)
        # one colour bar for every probability panel (a review: the maps had no scale)
        scale = plt.cm.ScalarMappable(cmap="magma", norm=plt.Normalize(0.0, 1.0))
        fig.colorbar(scale, ax=axes.ravel().tolist(), shrink=0.6, pad=0.01, label="P(foreground)")
        method = getattr(pl_module, "method", None)  # a distillation's student; else a plain run (a walkthrough:
        whose = "student" if method else "net"  # a distill=teacher run's UNet++ was titled "student")
        fig.suptitle(f"{whose} predictive maps ({type(pl_module.net).__name__}, {method or type(pl_module).__name__}"
                     f"{tag}) - P(foreground), green: masks", fontsize=9)
        path = save_figure(fig, run_dir(trainer) / self.filename)
        log_images(trainer, "val/kd_maps", [path])
        return path

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (self.every_n_epochs > 0 and trainer.is_global_zero and not trainer.sanity_checking
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0):
            self.render(trainer, pl_module, f", epoch {trainer.current_epoch}")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.render(trainer, pl_module, ", end of training")
