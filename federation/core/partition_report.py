"""The partition report: per-client class histogram as a Markdown table and EMD statistics (the PNG is drawn
by :func:`federation.partition_files.plot_partition`, outside the core: the core writes no files)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["partition_report"]


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
