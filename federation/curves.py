"""Per-round curves of a federation (accuracy / loss vs round) and their comparison across runs.

``python -m federation.curves <multirun dir> [--metric acc] [--label federation.strategy.mode]`` overlays
the ``rounds.csv`` of every run below the directory (e.g. the none / part / all runs of paper 000 §5.1
Fig. 2-3, launched as one Hydra multirun) and writes ``<dir>/fed_compare.png``.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Mapping, Sequence

from callbacks.plotting import save_figure

__all__ = ["read_rounds", "plot_rounds", "compare_runs"]


def read_rounds(path: str | Path) -> list[dict[str, float]]:
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: (float(v) if v not in ("", None) else math.nan) for k, v in row.items()})
    return rows


def _panels(metric: str) -> list[tuple[str, str]]:
    return [(metric, f"test/{metric}"), ("loss", "test/loss")]


def plot_rounds(runs: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, metric: str = "acc",
                title: str = "federation") -> Path:
    """Two panels (``metric`` and loss on the pooled test set, solid; server validation, dashed) per
    round, one line per run in ``runs`` (label -> rows of ``rounds.csv``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    for i, (name, key) in enumerate(_panels(metric)):
        ax = fig.add_subplot(1, 2, i + 1)
        for label, rows in runs.items():
            x = [r["round"] for r in rows]
            for col, style in ((key, "-"), (key.replace("test/", "server_val/"), "--")):
                y = [r.get(col, math.nan) for r in rows]
                if any(math.isfinite(v) for v in y):
                    ax.plot(x, y, style, marker="o", ms=3,
                            label=f"{label} ({'test' if style == '-' else 'server val'})")
        ax.set(xlabel="round", ylabel=name, title=f"{title}: {name} per round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return save_figure(fig, Path(path))


def _label(run_dir: Path, key: str) -> str:
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        from omegaconf import OmegaConf

        value = OmegaConf.select(OmegaConf.load(cfg), key, default=None)
        if value is not None:
            return str(value)
    return run_dir.name


def compare_runs(root: str | Path, metric: str = "acc", label_key: str = "federation.strategy.mode",
                 out: str | Path | None = None) -> Path:
    """Overlay the ``rounds.csv`` of every run below ``root``; returns the PNG path."""
    root = Path(root)
    files = sorted(root.rglob("rounds.csv"))
    if not files:
        raise FileNotFoundError(f"no rounds.csv below {root}")
    runs = {}
    for f in files:
        label = _label(f.parent, label_key)
        runs[label if label not in runs else f"{label} ({f.parent.name})"] = read_rounds(f)
    return plot_rounds(runs, out or root / "fed_compare.png", metric, title=root.name)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--metric", default="acc")
    p.add_argument("--label", default="federation.strategy.mode")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    print(compare_runs(a.root, a.metric, a.label, a.out))


if __name__ == "__main__":
    main()
