"""Figures written at the end of testing: ROC curve per class (paper 000 Fig. 6d) and learning curves."""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import pytorch_lightning as pl

from callbacks.plotting import log_images, plt, run_dir, save_figure


def read_csv_metrics(path: Path, text: str | None = None) -> dict[str, list[tuple[int, float]]]:
    """Lightning CSVLogger ``metrics.csv`` as key → [(epoch, value)] (empty cells skipped). ``text``: the file's
    content as a report read it (``engine.run_files.run_file_text``: not a link, not elsewhere); a file that is
    not a CSV table (a cell over csv's size limit) gives what was read before it."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    if text is None:
        if not path.exists():
            return series
        text = path.read_text(errors="replace")
    try:
        for row in csv.DictReader(io.StringIO(text, newline="")):
            epoch = _number(row.get("epoch") or 0)
            if epoch is None or not math.isfinite(epoch):  # a crafted or damaged row (reports read run folders
                # from elsewhere): skipped
                continue
            for key, value in row.items():
                number = _number(value) if isinstance(key, str) and key not in ("epoch", "step") else None
                if number is not None:
                    series[key].append((int(epoch), number))
    except csv.Error:
        pass
    return series


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None


def plot_learning_curves(metrics_csv: Path, out: Path, keys: tuple[str, ...]) -> Path | None:
    """Per-epoch curves of the given keys (one panel per key) from a CSVLogger file."""
    series = read_csv_metrics(metrics_csv)
    present = [k for k in keys if series.get(k)]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False)
    for ax, key in zip(axes[0], present):
        xs, ys = zip(*series[key])
        ax.plot(xs, ys, marker="o", ms=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


class SegmentationCurves(pl.Callback):
    """Writes ``test_roc.png`` (per foreground class, with AUC) and ``learning_curves.png``."""

    def __init__(self, keys: tuple[str, ...] = ("train/loss_epoch", "val/loss", "val/dice", "val/miou")) -> None:
        self.keys = tuple(keys)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_test_end: after the module's own on_test_epoch_end has computed the ROC curves
        if not trainer.is_global_zero:
            return
        out = run_dir(trainer)
        paths = []
        curves = getattr(pl_module, "roc_curves", {})
        if curves:
            fig, ax = plt.subplots(figsize=(4.4, 4.2))
            for name, (fpr, tpr) in curves.items():
                auc = pl_module.test_summary.get(f"auc_{name}", float("nan"))
                ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
            ax.set_xlabel("1 − specificity (FPR)")
            ax.set_ylabel("sensitivity (TPR)")
            ax.set_title("test ROC (pixel-wise)")
            ax.legend(loc="lower right")
            paths.append(save_figure(fig, out / "test_roc.png"))
        else:  # no test pixel scored: no curve, and none left from an earlier test in this run dir
            (out / "test_roc.png").unlink(missing_ok=True)
        curve = plot_learning_curves(out / "csv" / "metrics.csv", out / "learning_curves.png", self.keys)
        if curve:
            paths.append(curve)
        if paths:
            log_images(trainer, "test/curves", paths)
