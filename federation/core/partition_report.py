"""The partition report: per-client class histogram as a Markdown table, EMD statistics and a PNG."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from lightning_modules.atomic import atomic_output

__all__ = ["partition_report", "plot_partition"]


def partition_report(labels: np.ndarray, parts: Sequence[np.ndarray], class_names: Sequence[str] | None = None,
                     client_ids: Sequence[str] | None = None) -> tuple[str, dict]:
    """Markdown table (client, n, per-class counts, EMD) and stats. EMD is Zhao et al. 2018's
    sum_c |p_k(c) - p(c)| between a client's label distribution and the pooled one (paper 000 §2.1).
    ``client_ids`` name the rows (site names under by_site, as in W&B keys and the store); default 0..K-1."""
    ids = [str(c) for c in client_ids] if client_ids is not None else [str(i) for i in range(len(parts))]
    labels = np.asarray(labels)
    classes = np.arange(len(class_names)) if class_names else np.unique(labels[np.concatenate(parts)])
    names = list(class_names) if class_names else [str(c) for c in classes]
    counts = np.stack([(labels[p][:, None] == classes[None, :]).sum(0) for p in parts])
    total = counts.sum(0) / max(counts.sum(), 1)
    dist = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    emd = np.abs(dist - total).sum(1)
    rows = ["| client | n | " + " | ".join(names) + " | EMD |", "|" + "---|" * (len(names) + 3)]
    rows += [f"| {ids[i]} | {counts[i].sum()} | " + " | ".join(map(str, counts[i])) + f" | {emd[i]:.3f} |"
             for i in range(len(parts))]
    stats = {"clients": ids, "classes": names, "sizes": counts.sum(1).tolist(), "counts": counts.tolist(),
             "emd": emd.tolist(), "mean_emd": float(emd.mean()), "max_class_fraction": dist.max(1).tolist()}
    return "\n".join(rows) + "\n", stats


def plot_partition(labels: np.ndarray, parts: Sequence[np.ndarray], path: str | os.PathLike,
                   class_names: Sequence[str] | None = None, title: str = "Class histogram per client",
                   client_ids: Sequence[str] | None = None) -> str:
    """Stacked-bar PNG of each client's class counts, written atomically (temp file + os.replace)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _, stats = partition_report(labels, parts, class_names, client_ids)
    counts = np.asarray(stats["counts"])
    fig = Figure(figsize=(max(4.0, 0.5 * len(parts) + 2), 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    bottom = np.zeros(len(parts))
    x = np.arange(len(parts))
    for c, name in enumerate(stats["classes"]):
        ax.bar(x, counts[:, c], bottom=bottom, label=name)
        bottom += counts[:, c]
    ax.set(title=title, xlabel="client", ylabel="samples", xticks=x)
    ax.set_xticklabels(stats["clients"], rotation=30 if max(len(c) for c in stats["clients"]) > 3 else 0)
    ax.legend(title="class", fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    path = os.fspath(path)
    with atomic_output(path, ".png") as tmp:  # the user's umask, not mkstemp's 0600
        fig.savefig(tmp, format="png", dpi=100)
    return path
