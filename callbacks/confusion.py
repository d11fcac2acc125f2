"""The test confusion matrix of a classifier as ``confusion_matrix_test.png`` (and ``test/confusion_matrix_figure``
in W&B). A callback, not module code, so the federation's many evaluation passes (a Trainer without
callbacks) draw nothing; the module only keeps the matrix (``confusion_matrix``)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytorch_lightning as pl

from callbacks.plotting import log_images, plt, run_dir, save_figure

__all__ = ["ConfusionFigure", "plot_confusion"]


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], title: str) -> "plt.Figure":
    """Heat map of a C x C confusion matrix (rows true, columns predicted), or of per-label
    ``[L, 2, 2]`` matrices as an L x 4 table of TN/FP/FN/TP counts."""
    per_label = cm.ndim == 3
    data = cm.reshape(len(cm), 4) if per_label else cm
    cols = ["TN", "FP", "FN", "TP"] if per_label else list(class_names)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(cols) + 2), max(3.5, 0.45 * len(data) + 1.5)))
    ax.imshow(data, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=0 if per_label else 45, ha="center" if per_label else "right")
    ax.set_yticks(range(len(data)), list(class_names)[: len(data)])
    ax.set_xlabel("count" if per_label else "predicted")
    ax.set_ylabel("label" if per_label else "true")
    hi = data.max() if data.size else 0
    for (i, j), v in np.ndenumerate(data):
        ax.text(j, i, int(v), ha="center", va="center", fontsize=7, color="white" if v > hi / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


class ConfusionFigure(pl.Callback):
    """After testing a module that kept a ``confusion_matrix`` (the classifier), write and log its figure."""

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cm = getattr(pl_module, "confusion_matrix", None)
        if cm is None or not trainer.is_global_zero:
            return
        names = list(getattr(pl_module, "class_names", None) or [str(i) for i in range(len(cm))])
        fig = plot_confusion(np.asarray(cm), names, f"test confusion matrix ({getattr(pl_module, 'task', '')})")
        path = save_figure(fig, run_dir(trainer) / "confusion_matrix_test.png", dpi=120)
        # its own key: test/confusion_matrix is W&B's chart, as segmenters and federations log it (a W&B review: one
        log_images(trainer, "test/confusion_matrix_figure", [path])  # key, an image here and a chart there)
