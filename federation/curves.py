"""Per-round curves of a federation (accuracy / loss vs round) and their comparison across runs.

``python -m federation.curves <multirun dir> [--metric acc] [--label federation.strategy.mode]`` overlays
the ``rounds.csv`` of every run below the directory (e.g. the none / part / all runs of paper 000 §5.1
Fig. 2-3, launched as one Hydra multirun) and writes ``<dir>/fed_compare.png``. Runs with the same label
(the same mode at several seeds: ``seed=0,1,2`` in the multirun) are drawn as their mean per round with a
band of ± one standard deviation, and their per-round mean/std/n go to ``<dir>/fed_compare.csv``.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from callbacks.plotting import save_figure
from engine.run_files import csv_text, debug_run, plain_text, run_config, run_file_text, run_json, run_yaml

__all__ = ["read_rounds", "seed_band", "plot_rounds", "compare_runs"]


def read_rounds(path: str | Path) -> list[dict[str, float]]:
    """The rows of a run's ``rounds.csv`` with a whole round number; none when the file is a link, too large,
    not UTF-8 or not CSV (:func:`engine.run_files.run_file_text`: an audit had a linked file plotted, and a
    long cell or a stray byte end the comparison in a traceback)."""
    text = run_file_text(path)
    rows = []
    try:
        for row in csv.DictReader(io.StringIO(text or "", newline="")):
            values = {k: _float(v) for k, v in row.items() if isinstance(k, str)}
            number = values.get("round", 0.0)
            if math.isfinite(number) and number == int(number):  # no round number (or 1.5): no round
                rows.append(values)
    except csv.Error:  # e.g. a cell over csv's field size limit
        return []
    return rows


def _float(value: object) -> float:
    """A cell of ``rounds.csv`` (NaN when empty or not a number: a damaged or crafted file is data)."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _panels(metric: str) -> list[tuple[str, str]]:
    return [(metric, f"test/{metric}"), ("loss", "test/loss")]


Rows = Sequence[Mapping[str, float]]


def curve_columns(runs: Sequence[Rows], key: str) -> list[tuple[str, str, str]]:
    """(column, line style, kind) of each curve ``runs`` have of ``key``: the pooled test solid and the server
    validation dashed; where they have neither (FedBN with each site's batch norm at its own node: the server
    scores nothing), the sites' mean local validation, dotted (a Flower walkthrough: the curves were empty)."""
    cols = [(key, "-", "test"), (key.replace("test/", "server_val/"), "--", "server val")]
    found = [c for c in cols if seed_band(runs, c[0])[0]]
    local = (key.replace("test/", "local_val/"), ":", "sites' local val")
    return found or ([local] if seed_band(runs, local[0])[0] else [])


def seed_band(runs: Sequence[Rows], col: str) -> tuple[list[float], list[float], list[float], list[int]]:
    """Rounds, mean, population std and number of runs with a finite ``col`` at each round, over ``runs``
    (the same setting at several seeds; rounds a run lacks are left out of that round's statistics)."""
    by_round: dict[float, list[float]] = {}
    for rows in runs:
        for r in rows:
            v = r.get(col, math.nan)
            if math.isfinite(v):
                by_round.setdefault(r["round"], []).append(v)
    x = sorted(by_round)
    mean = [sum(by_round[k]) / len(by_round[k]) for k in x]
    std = [math.sqrt(sum((v - m) ** 2 for v in by_round[k]) / len(by_round[k])) for k, m in zip(x, mean)]
    return x, mean, std, [len(by_round[k]) for k in x]


def _label_colors(n: int) -> list:
    """``n`` distinct colours: matplotlib's tab10 up to 10 labels, tab20 up to 20, then a continuous map."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


def plot_rounds(runs: Mapping[str, Rows | Sequence[Rows]], path: str | Path, metric: str = "acc",
                title: str = "federation") -> Path:
    """Two panels (``metric`` and loss on the pooled test set, solid; server validation, dashed) per
    round, one line per label in ``runs`` (label -> rows of one ``rounds.csv``, or a list of them: the
    mean over those runs with a ± std band)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    for i, (name, key) in enumerate(_panels(metric)):
        ax = fig.add_subplot(1, 2, i + 1)
        # one colour per label, its test line solid and its server validation dashed (a walkthrough: each line took
        # the next colour of a 10-colour cycle, and 6 labels x 2 lines reused them across labels)
        colors = _label_colors(len(runs))
        for (label, group), color in zip(runs.items(), colors):
            group = [group] if group and isinstance(group[0], Mapping) else list(group)
            n = f", n={len(group)}" if len(group) > 1 else ""
            for col, style, kind in curve_columns(group, key):
                x, y, sd, _ = seed_band(group, col)
                line, = ax.plot(x, y, style, marker="o", ms=3, color=color, label=f"{label} ({kind}{n})")
                if len(group) > 1:
                    ax.fill_between(x, [m - s for m, s in zip(y, sd)], [m + s for m, s in zip(y, sd)],
                                    color=line.get_color(), alpha=0.15 if style == "-" else 0.07, lw=0)
        ax.set(xlabel="round", ylabel=name, title=f"{title}: {name} per round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    return save_figure(fig, Path(path))


def _label(run_dir: Path, key: str) -> str | None:
    """The run's value of ``key`` (its ``config.yaml``), or None where it has none."""
    cfg = run_dir / "config.yaml"
    if cfg.is_file():  # read as data: a ${oc.env:...} in a run's config is shown, never resolved
        value: Any = run_yaml(cfg)
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return plain_text(value, 100)  # a run folder from elsewhere: no control characters
    return None


def _other_differences(run_dirs: Sequence[Path], label_key: str) -> dict[Path, str]:
    """Per run, the command-line overrides that differ between the runs besides the seed and ``label_key``
    (e.g. ``federation.partition.k=2`` in a mode x k sweep), so runs of different settings are not pooled into
    one seed band (a walkthrough found ``none (n=2)`` averaging k=1 with k=2)."""
    from engine.continue_command import canonical_override, saved_overrides

    def key(override: str) -> str:
        return override.lstrip("+~").split("=", 1)[0]

    ovs = {d: [c for c in map(canonical_override, saved_overrides(d)) if key(c) not in ("seed", label_key)]
           for d in run_dirs}
    common = set.intersection(*(set(v) for v in ovs.values())) if ovs else set()
    return {d: " ".join(o for o in v if o not in common) for d, v in ovs.items()}


def _failed_or_debug(run: Path) -> bool:
    """A run whose rounds are no result: it failed (``failed.json``) or is a debug run (``metrics.json`` says
    ``debug``), as ``experiments.report`` leaves them out."""
    metrics = run_json(run / "metrics.json", run)
    metrics = metrics if isinstance(metrics, dict) else None  # a debug run still running has only its config
    # finished: a failed run resumed to its end keeps its old failed.json
    return debug_run(metrics, run_config(run)) or (metrics is None and (run / "failed.json").exists())


def compare_runs(root: str | Path, metric: str = "acc", label_key: str = "federation.strategy.mode",
                 out: str | Path | None = None) -> Path:
    """Overlay the ``rounds.csv`` of every run below ``root``; returns the PNG path."""
    root = Path(root)
    files = sorted(root.rglob("rounds.csv"))
    if not files:
        raise FileNotFoundError(f"no rounds.csv below {root}")
    left = [f for f in files if _failed_or_debug(f.parent)]
    if left:  # a review: a failed seed's two rounds were averaged into the band, whose n counted it
        print(f"warning: {len(left)} run(s) left out: failed or debug (e.g. {left[0].parent})", file=sys.stderr)
    files = [f for f in files if f not in left]
    if not files:
        raise FileNotFoundError(f"no rounds.csv below {root} but of failed or debug runs")
    running = [f for f in files if not (f.parent / "metrics.json").is_file()]
    if running:  # still running (curves are drawn mid-run too) or killed: kept, and said so
        print(f"note: {len(running)} run(s) have no metrics.json yet (running or killed; e.g. {running[0].parent}): "
              "their rounds so far are in the bands", file=sys.stderr)
    runs: dict[str, list] = {}
    others = _other_differences([f.parent for f in files], label_key)
    for f in files:
        value, other = _label(f.parent, label_key), others[f.parent]
        # a run without the key (federation/strategy=fedavg has no mode): named by what differs, else its folder
        label = (f"{value} ({other})" if other else value) if value is not None else \
            other or plain_text(f.parent.name, 100)
        rows = read_rounds(f)
        if not rows:
            print(f"warning: {f} left out: no round in it (a link, over 64 MB, not UTF-8 or not a CSV table)",
                  file=sys.stderr)
            continue
        runs.setdefault(label, []).append(rows)
    col = f"test/{metric}"
    if not any(col in row for group in runs.values() for rows in group for row in rows):
        raise KeyError(f"--metric {metric}: no rounds.csv below {root} has a {col} column")
    png = Path(out or root / "fed_compare.png")
    _write_band_table(runs, png.with_suffix(".csv"), f"test/{metric}")
    return plot_rounds(runs, png, metric, title=root.name)


def _write_band_table(runs: Mapping[str, Sequence[Rows]], path: Path, col: str) -> Path:
    from lightning_modules.atomic import atomic_output

    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["label", "round", f"{col} mean", f"{col} std", "n"])
        for label, group in runs.items():
            for row in zip(*seed_band(group, col)):
                w.writerow([csv_text(label), int(row[0]), f"{row[1]:.4f}", f"{row[2]:.4f}", row[3]])
    return path


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--metric", default="acc")
    p.add_argument("--label", default="federation.strategy.mode")
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    try:
        print(compare_runs(a.root, a.metric, a.label, a.out))
    except (FileNotFoundError, KeyError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
