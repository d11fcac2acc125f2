"""Figures written at the end of testing: ROC curve per class (paper 000 Fig. 6d) and learning curves."""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import pytorch_lightning as pl
from matplotlib.ticker import MaxNLocator

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
    # constrained layout: each panel's y label clear of its neighbour's ticks (a review saw them run together)
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], present):
        xs, ys = zip(*series[key])
        ax.plot(xs, ys, marker="o", ms=3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_roc(curves: dict[str, tuple], out: Path, title: str) -> Path:
    """``out``: one ROC curve per class, ``{name: (fpr, tpr, auc)}``, with the chance diagonal."""
    fig, ax = plt.subplots(figsize=(4.4, 4.2))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("1 − specificity (FPR)")
    ax.set_ylabel("sensitivity (TPR)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=7 if len(curves) > 6 else None)
    return save_figure(fig, out)


class CurveFigures(pl.Callback):
    """Writes ``test_roc.png`` (the module's test ROC per class, with AUC) and ``learning_curves.png`` (``keys``
    per epoch from the CSV log) after testing, and logs them to W&B as ``test/roc_figure`` and
    ``test/learning_curves``."""

    title = "test ROC"

    def __init__(self, keys: tuple[str, ...] = ()) -> None:
        self.keys = tuple(keys)

    def applies(self, pl_module: pl.LightningModule) -> bool:
        return True

    def curves(self, pl_module: pl.LightningModule) -> dict[str, tuple]:
        """``{class: (fpr, tpr, auc)}`` of the test just run."""
        return dict(getattr(pl_module, "roc_curves", {}) or {})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_test_end: after the module's own on_test_epoch_end has computed the ROC curves
        if not trainer.is_global_zero or not self.applies(pl_module):
            return
        out = run_dir(trainer)
        curves = self.curves(pl_module)
        if curves:  # each figure under its own key (a review: one key padded the ROC to the curves' width, 70 % blank)
            log_images(trainer, "test/roc_figure", [plot_roc(curves, out / "test_roc.png", self.title)])
        else:  # nothing scored: no curve, and none left from an earlier test in this run dir
            (out / "test_roc.png").unlink(missing_ok=True)
        curve = plot_learning_curves(out / "csv" / "metrics.csv", out / "learning_curves.png", self.keys)
        if curve:
            log_images(trainer, "test/learning_curves", [curve])


class SegmentationCurves(CurveFigures):
    """:class:`CurveFigures` of a segmentation module: pixel-wise ROC per foreground class."""

    title = "test ROC (pixel-wise)"

    def __init__(self, keys: tuple[str, ...] = ("train/loss_epoch", "val/loss", "val/dice", "val/miou")) -> None:
        super().__init__(keys)

    def curves(self, pl_module: pl.LightningModule) -> dict[str, tuple]:
        summary = getattr(pl_module, "test_summary", {}) or {}
        return {name: (fpr, tpr, summary.get(f"auc_{name}", float("nan")))
                for name, (fpr, tpr) in (getattr(pl_module, "roc_curves", {}) or {}).items()}


class ClassificationCurves(CurveFigures):
    """:class:`CurveFigures` of a classifier (a review: a MedMNIST run wrote no ROC and no learning curves): ROC per
    class one-vs-rest (per label; the positive class of a binary task); other modules are left alone, so
    ``callbacks/default.yaml`` carries it for every run."""

    title = "test ROC"

    def __init__(self, keys: tuple[str, ...] = ("train/loss", "val/loss", "val/auc", "val/acc")) -> None:
        super().__init__(keys)

    def applies(self, pl_module: pl.LightningModule) -> bool:
        from lightning_modules.classification import ClassificationModule

        return isinstance(pl_module, ClassificationModule)
