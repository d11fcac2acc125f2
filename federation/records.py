"""The federation's records: metrics and images to every logger, the per-round table as ``rounds.csv``.

A logger that fails (a W&B hiccup) is warned about and skipped: it must never stop a federation.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any, Mapping

from engine import artifacts

__all__ = ["fmt", "log_metrics", "log_image", "close_loggers", "rounds_table", "write_rounds_csv"]

log = logging.getLogger("federation.loop")


def fmt(v: Any) -> str:
    return artifacts.fmt(v, 4) if isinstance(v, float) else str(v)


def log_metrics(loggers: list, metrics: Mapping[str, float], step: int) -> None:
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    for lg in loggers:
        try:
            lg.log_metrics(clean, step=step)
        except Exception as exc:  # noqa: BLE001 - a logger must not stop the federation
            log.warning("logger %s failed: %s", type(lg).__name__, exc)


def log_image(loggers: list, key: str, path: Path) -> None:
    for lg in loggers:
        if hasattr(lg, "log_image"):
            try:
                lg.log_image(key=key, images=[str(path)])
            except Exception as exc:  # noqa: BLE001
                log.warning("logging image %s failed: %s", key, exc)


def close_loggers(loggers: list, status: str = "success") -> None:
    """Finalise every logger and finish the W&B run, so the next job of a ``-m`` sweep starts its own run."""
    for lg in loggers:
        try:
            lg.finalize(status)
            if type(lg).__name__ == "WandbLogger" and getattr(lg, "_experiment", None) is not None:
                lg.experiment.finish(exit_code=0 if status == "success" else 1)
        except Exception as exc:  # noqa: BLE001 - closing a logger must not hide the run's outcome
            log.warning("closing logger %s failed: %s", type(lg).__name__, exc)


def rounds_table(history: list[dict[str, float]]) -> list[dict[str, float]]:
    rows = []
    for h in history:
        r = {"round": h["round"]}
        r.update({k[len("fed/round/"):]: v for k, v in h.items() if k.startswith("fed/round/")})
        rows.append(r)
    return rows


def write_rounds_csv(rows: list[dict[str, float]], path: Path) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    artifacts.atomic_write_text(path, buf.getvalue())
