"""Run-directory artefacts: atomic JSON/YAML/text writes and the console tables people read."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lightning_modules.atomic import atomic_output

#: piped output (sbatch logs, ``| tee``) is not cut to rich's 80-column default: per-case tables stay readable
console = Console(width=None if os.isatty(1) or os.environ.get("COLUMNS") else 160)


def is_terminal() -> bool:
    """Whether stdout draws live displays: a terminal or a notebook; not a log file, a pipe or a closed stdout
    (progress bars there leave their last frames as fragments between the log lines)."""
    import sys

    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # stdout closed (None) or a closed file
        return False


def artefacts_line(out: str | Path) -> str:
    """``artefacts: <dir>  (what it holds)``: the run folder's top-level entries as written, folders with '/'."""
    out = Path(out)
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir()) if out.is_dir() else []
    shown = [n for n in names if not n.startswith(".")]
    return f"[bold]artefacts:[/bold] {out}  ({', '.join(shown)})"


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temp file beside ``path`` and rename it over
    (:func:`~lightning_modules.atomic.atomic_output`): readers never see half a file."""
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        return _json_safe(value.item())
    return value


def write_json(path: str | Path, data: Mapping) -> Path:
    """Atomic JSON write; NaN/inf become ``null`` so the file stays valid JSON."""
    return atomic_write_text(path, json.dumps(_json_safe(data), indent=2, sort_keys=True) + "\n")


def write_case_csv(path: str | Path, per_case: Mapping[str, Mapping[str, float]]) -> Path:
    """Atomic ``case,<metric>...`` CSV of per-case scores (a test's volumes), one row per case in case order;
    a score that is not a finite number (HD95 of an empty prediction) is an empty cell."""
    keys = sorted({k for scores in per_case.values() for k in scores})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", *keys])
    for case in sorted(per_case):
        values = [per_case[case].get(k) for k in keys]
        writer.writerow([case, *("" if v is None or not math.isfinite(float(v)) else f"{float(v):.6g}"
                                 for v in values)])
    return atomic_write_text(path, buf.getvalue())


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_case_table(per_case: Mapping[str, Mapping[str, float]], summary: Mapping[str, float], title: str) -> None:
    """Per-case test scores and the mean ± std row, as a rich table."""
    if not per_case:
        return
    keys = list(next(iter(per_case.values())))
    table = Table(title=title)
    table.add_column("case", no_wrap=True, min_width=max(len(str(c)) for c in per_case))  # never cut to case_0…
    for k in keys:
        table.add_column(k, justify="right")
    for case, scores in per_case.items():
        table.add_row(case, *[fmt(scores.get(k)) for k in keys])
    if len(per_case) == 1:  # a spread over one case is no spread
        table.add_row("mean", *[fmt(summary.get(k)) for k in keys], style="bold")
    else:
        table.add_row("mean ± std", *[f"{fmt(summary.get(k))} ± {fmt(summary.get(k + '_std'))}" for k in keys],
                      style="bold")
    console.print(table)


def print_metrics(metrics: Mapping[str, float], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        table.add_row(key, fmt(metrics[key]))
    console.print(table)
