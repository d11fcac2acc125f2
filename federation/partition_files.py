"""What a federation writes about its partition: ``partition.md`` (table), ``partition.json`` (stats) and
``partition.png`` (each client's class histogram), from :func:`federation.core.partition.partition_report` (the
core computes, and writes no files)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from engine import artifacts
from federation.core.partition import partition_report

__all__ = ["plot_partition", "write_partition_report"]


def plot_partition(labels: np.ndarray, parts: Sequence[np.ndarray], path: str | Path,
                   class_names: Sequence[str] | None = None, title: str = "Class histogram per client",
                   client_ids: Sequence[str] | None = None) -> Path:
    """Stacked-bar PNG of each client's class counts (:func:`federation.core.partition.partition_report`'s),
    written atomically by the one figure saver, :func:`callbacks.plotting.save_figure`."""
    from callbacks.plotting import plt, save_figure

    _, stats = partition_report(labels, parts, class_names, client_ids)
    counts = np.asarray(stats["counts"])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(parts) + 2), 3.5))
    bottom, x = np.zeros(len(parts)), np.arange(len(parts))
    for c, name in enumerate(stats["classes"]):
        ax.bar(x, counts[:, c], bottom=bottom, label=name)
        bottom += counts[:, c]
    ax.set(title=title, xlabel="client", ylabel="samples", xticks=x)
    ax.set_xticklabels(stats["clients"], rotation=30 if max(len(c) for c in stats["clients"]) > 3 else 0)
    ax.legend(title="class", fontsize="small", bbox_to_anchor=(1.01, 1), loc="upper left")
    return save_figure(fig, path, dpi=100)


def write_partition_report(out: Path, labels: np.ndarray | None, parts: list[np.ndarray], client_ids: list[str],
                           pool: Any, target: str, class_names: Sequence[str] | None = None,
                           partial: Mapping[str, Sequence[int]] | None = None,
                           splits: Mapping[str, tuple[int, int]] | None = None, multi_label: bool = False) -> Path | None:
    """``partition.md`` (table), ``partition.json`` (stats) and ``partition.png`` (histogram) in ``out``,
    rows named by ``client_ids``; returns the PNG path (``None`` when the data has no per-sample labels).
    ``partial`` (``federation.partial_labels``): the classes each client annotates, said under the table, whose
    counts are of the labels on disk (each sample's largest class), not of what a client trains on. ``splits``:
    ``{client: (training, validation) samples}``, said under the table where a validation split is carved from
    the ``n`` of a client (a review: ``n`` read as what a client trains on, 28 where it trained on 21)."""
    if labels is None:
        return None
    names = list(class_names or [])
    if names and multi_label and labels.max() == len(names):  # samples with no positive label (sample_labels)
        names.append("no finding")
    if names and labels.max() >= len(names):
        names = []
    report, stats = partition_report(labels, parts, names or None, client_ids)
    n_shared = 0 if pool is None else len(pool)
    shared = f"\nShared pool (server): {n_shared} samples, disjoint from all clients.\n" if n_shared else ""
    name = target.split(".")[-1]
    name = "by_site (one client per site)" if name == "by_group" else name  # the config's name, federation/partition=by_site
    header = (f"# Partition: {name}, {len(parts)} clients, "
              f"mean EMD {stats['mean_emd']:.3f}\n{shared}\n")
    if partial:
        label = (lambda c: names[c] if c < len(names) else str(c))
        said = "; ".join(f"{cid}: {', '.join(label(int(c)) for c in classes)}" for cid, classes in partial.items())
        report += (f"\nPartial labels (federation.partial_labels): each client annotates only {said}. The counts "
                   f"above are of the labels on disk (each sample's largest class), as the simulation reads them "
                   f"before hiding the rest from the client's training.\n")
    if splits and any(v for _, v in splits.values()):
        said = ", ".join(f"{cid} {t}/{v}" for cid, (t, v) in splits.items())
        report += (f"\nEach client's validation split is carved from its n (federation.client_val_fraction); "
                   f"training/validation samples: {said}.\n")
    artifacts.atomic_write_text(out / "partition.md", header + report)
    artifacts.write_json(out / "partition.json", {**stats, "shared": n_shared})
    png = plot_partition(labels, parts, out / "partition.png", names or None,
                         title=f"Class histogram per client ({len(parts)} clients)", client_ids=client_ids)
    if len(parts) <= 12:
        artifacts.console.print(report)
    return Path(png)
