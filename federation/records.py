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

from callbacks.best_metric import track_best, wandb_runs
from callbacks.overlays import SegmentationOverlays
from callbacks.wandb_media import test_media
from engine import artifacts
from lightning_modules.segmentation import SegmentationModule

__all__ = ["fmt", "log_metrics", "log_image", "close_loggers", "rounds_table", "write_rounds_csv", "global_model_keys",
           "best_of_rounds", "log_round", "log_test_media", "test_overlays", "replay_bests", "perf_keys",
           "case_spread"]

log = logging.getLogger("federation.loop")


def fmt(v: Any) -> str:
    return artifacts.fmt(v, 4) if isinstance(v, float) else str(v)


def global_model_keys(row: Mapping[str, float]) -> dict[str, float]:
    """The global model's round metrics under a centralised run's keys: ``val/<m>`` (server validation
    set), ``test/<m>`` (pooled test set) and ``epoch`` = round, so a centralised and a federated run of the
    same model share one W&B panel (x axis ``epoch``)."""
    out = {}
    for prefix, stage in (("fed/round/server_val/", "val/"), ("fed/round/test/", "test/")):
        out.update({stage + k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)})
    if out and "round" in row:
        out["epoch"] = row["round"]
    return out


def best_of_rounds(history: list[Mapping[str, float]]) -> dict[str, float]:
    """``val/<m>_best`` and ``val/<m>_best_step`` (the round) of the global model over the rounds."""
    state: dict = {}
    best: dict[str, float] = {}
    for row in history:
        best = track_best([], global_model_keys(row), int(row.get("round", 0)), state)
    return best


def log_round(row: Mapping[str, float], rounds: int) -> None:
    """One log line per client and one for the global model per round (``run.log``, non-TTY stdout)."""
    rnd = int(row.get("round", 0))
    clients: dict[str, dict[str, float]] = {}
    for k, v in row.items():
        parts = k.split("/")
        if parts[0] == "client" and len(parts) >= 4 and parts[2] == "local_val":
            clients.setdefault(parts[1], {})["/".join(parts[3:])] = v
    for cid, m in clients.items():
        log.info("round %d/%d client %s: local val %s", rnd, rounds, cid,
                 " ".join(f"{k}={fmt(v)}" for k, v in sorted(m.items())))
    shown = {k: row[k] for k in ("fed/round/clients", "fed/round/dropped", "fed/round/seconds_clients") if k in row}
    shown.update(global_model_keys(row))
    shown.pop("epoch", None)
    log.info("round %d/%d global: %s", rnd, rounds, " ".join(f"{k.replace('fed/round/', '')}={fmt(v)}"
                                                           for k, v in shown.items()))


def perf_keys(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``perf/num_parameters`` as a centralised run logs it (:class:`callbacks.throughput.Throughput`): a walkthrough
    found federations under ``num_parameters`` only, an empty W&B column beside centralised runs. The throughput
    numbers a federation does not measure (images/s, FLOPs, peak memory) are not made up."""
    n = metrics.get("num_parameters")
    return {"perf/num_parameters": float(n)} if isinstance(n, (int, float)) and not isinstance(n, bool) else {}


def log_metrics(loggers: list, metrics: Mapping[str, float], step: int) -> None:
    """``metrics`` and their centralised keys to every logger; each ``val/*`` key's W&B max/min summary is defined
    before its first log (a walkthrough: defined after, a one-round federation's ``val/dice`` summary was a plain
    number and a ``val/dice.max`` column empty)."""
    metrics = {**metrics, **global_model_keys(metrics), **perf_keys(metrics)}
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    try:
        track_best(loggers, clean, step)  # define_metric, then val/<m>_best and the round it came from
    except Exception as exc:  # noqa: BLE001
        log.warning("W&B summary failed: %s", exc)
    for lg in loggers:
        try:
            lg.log_metrics(clean, step=step)
        except Exception as exc:  # noqa: BLE001 - a logger must not stop the federation
            log.warning("logger %s failed: %s", type(lg).__name__, exc)


def replay_bests(loggers: list, history: list[Mapping[str, float]]) -> None:
    """The W&B bests (:func:`callbacks.best_metric.track_best`'s state on the logger) over the rounds a resumed
    run already had, nothing logged again. A review: after a resume ``val/<m>_best`` in W&B covered only the
    rounds since, and its last call overwrote the right value from ``metrics.json``."""
    try:
        for row in history:
            keys = {k: v for k, v in global_model_keys(row).items() if isinstance(v, (int, float)) and math.isfinite(v)}
            track_best(loggers, keys, int(row.get("round", 0)))
    except Exception as exc:  # noqa: BLE001 - a logger must not stop the federation
        log.warning("W&B summary failed: %s", exc)


def log_image(loggers: list, key: str, path: Path) -> None:
    for lg in loggers:
        if hasattr(lg, "log_image"):
            try:
                lg.log_image(key=key, images=[str(path)])
            except Exception as exc:  # noqa: BLE001
                log.warning("logging image %s failed: %s", key, exc)


def test_overlays(module: Any, fed: Mapping[str, Any]) -> SegmentationOverlays | None:
    """The overlay callback for the final global model's test (``federation.test_overlays`` cases, as a
    centralised run's ``callbacks.overlays``); None for a classifier or ``test_overlays: 0``."""
    n = int(fed.get("test_overlays", 4) or 0)
    return SegmentationOverlays(num_cases=n) if n > 0 and isinstance(module, SegmentationModule) else None


def log_test_media(loggers: list, module: Any, overlays: SegmentationOverlays | None = None) -> None:
    """The tested module's W&B media (:func:`callbacks.wandb_media.test_media`: per-case table, ROC, confusion
    matrix, and ``overlays``' slices with mask layers) to every live W&B run, as a centralised run's callbacks
    log them, and its ``test/<m>_std`` summary (:func:`summarise_spread`). A walkthrough found federations logged
    none."""
    runs = wandb_runs(loggers)
    summarise_spread(runs, module)
    if overlays is not None and overlays.picked and (Path(overlays.saved or "").is_file()):
        log_image(loggers, "test/overlays", Path(overlays.saved))
    if not runs:
        return
    try:
        media = test_media(module, overlays)
        for run in runs:
            run.log(media, commit=True)
    except Exception as exc:  # noqa: BLE001 - media are extras: never fail the federation on them
        log.warning("logging the test media failed: %s", exc)


def case_spread(module: Any) -> dict[str, float]:
    """The tested module's ``test/<m>_std`` across cases (:func:`lightning_modules.metrics.summarise`), which a
    centralised run's summary holds from its ``metrics.json`` (NaN with one case, as there)."""
    summary = getattr(module, "test_summary", None) or {}
    return {f"test/{k}": float(v) for k, v in summary.items() if str(k).endswith("_std")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def summarise_spread(runs: list, module: Any) -> None:
    """:func:`case_spread` into each W&B run's summary (a walkthrough: federations had no ``test/*_std``)."""
    try:
        spread = case_spread(module)
        for run in runs if spread else ():
            run.summary.update(spread)
    except Exception as exc:  # noqa: BLE001 - a summary extra must not fail the federation
        log.warning("W&B summary of the test spread failed: %s", exc)


def matrix_scalars(matrix: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The evaluation matrix as ``fed/matrix/<row>/<column>`` scalars (finite cells), which W&B compares across
    runs (a review: the matrix reached ``metrics.json`` only, its dict dropped from what the loggers got)."""
    return {f"fed/matrix/{row}/{col}": float(v) for row, cells in matrix.items() for col, v in cells.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))}


def log_matrix_table(loggers: list, matrix: Mapping[str, Mapping[str, float]], metric: str) -> None:
    """The evaluation matrix as one ``wandb.Table`` (``fed/evaluation_matrix``: model x test set) in every live
    W&B run, as ``evaluation_matrix.md`` shows it."""
    runs = wandb_runs(loggers)
    if not runs or not matrix:
        return
    try:
        import wandb

        cols = list(next(iter(matrix.values())))
        table = wandb.Table(columns=[f"model \\ test set ({metric})", *cols],
                            data=[[row, *(cells.get(c) for c in cols)] for row, cells in matrix.items()])
        for run in runs:
            run.log({"fed/evaluation_matrix": table}, commit=True)
    except Exception as exc:  # noqa: BLE001 - media are extras: never fail the federation on them
        log.warning("logging the evaluation matrix table failed: %s", exc)


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
