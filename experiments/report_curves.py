"""The report's learning curves (``report_curves.png``): each run's per-epoch series from its ``csv/metrics.csv``,
averaged per method. Imports nothing from :mod:`experiments.report`, which labels the runs and calls it."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from engine.run_files import plain_text, run_file_text

#: the longest method name a legend shows (a review: a legend label thousands of overrides long)
MAX_LABEL = 80

#: the learning curve drawn when ``--curve`` is not given: the first of these any run logged
CURVE_KEYS = ("val/dice", "val/auc", "val/acc", "val/accuracy", "val/loss")


def read_curves(runs: list[Path]) -> dict[Path, dict[str, list[tuple[int, float]]]]:
    """Each run's per-epoch series (its ``csv/metrics.csv``), read once for :func:`curve_key` and :func:`plot_curves`."""
    from callbacks.curves import read_csv_metrics

    return {run: read_csv_metrics(run / "csv" / "metrics.csv", run_file_text(run / "csv" / "metrics.csv", run) or "")
            for run in runs}  # read as data: a csv/ linked elsewhere is not plotted


def curve_key(curves: dict[Path, dict[str, list]]) -> str | None:
    """The first of :data:`CURVE_KEYS` some run logged per epoch, else None."""
    logged = {k for series in curves.values() for k, v in series.items() if v}
    return next((k for k in CURVE_KEYS if k in logged), None)


def completed(series: dict[str, list[tuple[int, float]]], key: str) -> list[tuple[int, float]]:
    """``key``'s series against the epochs or rounds completed: a federated run's rows carry ``round`` (1 after the
    first round), a centralised run's Lightning's 0-based ``epoch`` (0 after the first epoch), so the latter moves
    by one; a review: the report drew round 1 beside epoch 1, the second epoch."""
    shift = 0 if series.get("round") else 1
    return [(x + shift, v) for x, v in series[key]]


def per_epoch(runs_curves: list[list[tuple[int, float]]]) -> tuple[np.ndarray, ...]:
    """Epochs any run has, and per epoch the mean, std and number of the runs that have it (a run's last value
    where it logged an epoch twice); a review: the curve was cut to the shortest run, one seed missing an epoch
    row left its method a single point under "n=2"."""
    values: dict[int, list[float]] = defaultdict(list)
    for curve in runs_curves:
        for epoch, value in dict(curve).items():
            values[epoch].append(value)
    xs = sorted(values)
    return (np.array(xs), np.array([np.mean(values[x]) for x in xs]), np.array([np.std(values[x]) for x in xs]),
            np.array([len(values[x]) for x in xs]))


def plot_curves(curves: dict[Path, dict[str, list]], out: Path, key: str, labels: dict[Path, str]) -> Path | None:
    """Mean learning curve of ``key`` per method (``labels``: each run's method, as in the table), as a PNG."""
    from matplotlib.ticker import MaxNLocator

    from callbacks.plotting import plt, save_figure

    per_method: dict[str, list[list[tuple[int, float]]]] = defaultdict(list)
    for run, series in curves.items():
        if series.get(key):
            per_method[labels[run]].append(completed(series, key))
    if not per_method:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, runs_curves in sorted(per_method.items()):
        xs, mean, std, n = per_epoch(runs_curves)
        fewer = int((n < len(runs_curves)).sum())  # a run short of an epoch: that point is over fewer runs
        note = f", fewer at {fewer} point(s)" if fewer else ""
        ax.plot(xs, mean, marker="o", ms=3, label=f"{plain_text(method, MAX_LABEL)} (n={len(runs_curves)}{note})")
        if len(runs_curves) > 1:
            ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a review: ticks at epochs 1.2, 1.4
    ax.set_xlabel("epochs (centralised) or rounds (federated) completed")
    ax.set_ylabel(key)
    ax.set_title(f"{key} per method (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out)
