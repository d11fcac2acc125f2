"""``run_federation(cfg)`` (dispatched by ``experiments/run.py``): the rounds of a :class:`~federation.server.Server`
and the run's outputs.

Every round: :meth:`Server.run_round`, keep the best global model by server validation, log
``fed/round/...`` and ``client/<id>/...`` to every logger, checkpoint ``server.pt`` and rewrite ``rounds.csv``
(atomically, so a killed run keeps the rounds it finished). ``resume=true`` continues after the last
completed round. End: ``fed_curves.png``, the global weights (final and best), ``metrics.json`` and, with
``federation.evaluation_matrix=true``, paper 003's Table 1 matrix (:mod:`federation.matrix`). The loggers are
finalised and the W&B run finished whatever happens, so each job of a ``-m`` sweep gets its own W&B run.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from omegaconf import OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine import artifacts, stop
from engine.fit import is_debug
from engine.init_weights import init_metrics
from engine.wandb_tracking import debug_mode
from engine.tracking import environment, git_sha
from federation.core.sampling import clients_per_round
from federation.curves import plot_rounds
from federation.deploy import local_for
from federation.errors import FederationError
from federation.matrix import evaluation_matrix, matrix_note, write_matrix
from federation.records import (best_of_rounds, close_loggers, fmt, log_image, log_matrix_table, log_metrics, log_round,
                                log_test_media, matrix_scalars, rounds_table, test_overlays, write_rounds_csv)
from federation.server import Server
from federation.server_resume import SERVER_CKPT
from federation.server_state import load_global_weights, save_atomic
from lightning_modules.kinds import is_whole

__all__ = ["run_federation", "FederationError", "SERVER_CKPT"]

log = logging.getLogger("federation.loop")


def run_federation(cfg, executor: Any | None = None) -> dict[str, Any]:
    """Run the federation described by ``cfg.federation``; returns the final metrics. ``executor``
    overrides ``federation.executor`` (any object with the executor contract of :mod:`federation.transports`).
    A Flower federation outside its ServerApp is started by ``experiments.run.dispatch``, not here: refused before
    any set-up (a review: the server built its data and opened a W&B run first)."""
    from federation.transports.flower import launches  # imports no Flower

    if executor is None and launches(cfg):
        raise FederationError("federation/executor=flower: the deployment is started by python -m experiments.run "
                              "(experiments.run.dispatch), which rehearses it locally or hands it over; "
                              "run_federation runs inside its ServerApp")
    t_start = time.perf_counter()
    server = Server(cfg, executor)
    server.t_start = t_start  # fit_seconds from the command's start, as before: set-up included
    status = "failed"
    try:
        metrics = _rounds_and_finish(server)
        status = "success"
        return metrics
    finally:
        server.executor.shutdown()
        close_loggers(server.loggers, status)


def _rounds_and_finish(server: Server) -> dict[str, Any]:
    fed, rounds = server.fed, int(server.fed.rounds)
    server.resume()
    finished_before = server.start_round >= rounds  # resumed after its last round: only the finish runs again
    if server.history:  # rounds.csv follows server.pt, which a stop may have come between
        write_rounds_csv(rounds_table(server.history), server.out / "rounds.csv")
    # as a centralised run's (engine.tracking.log_run_facts): the config under "config" (a walkthrough: spread at
    # the top level, a W&B filter on config.config.model.* missed every federation), the code's SHA, the environment
    facts = {"config": OmegaConf.to_container(server.ccfg, resolve=True), "git_sha": git_sha(), "env": environment()}
    for lg in server.loggers:
        try:
            lg.log_hyperparams(facts)
        except Exception as exc:  # noqa: BLE001
            log.warning("log_hyperparams failed: %s", exc)
    if server.partition_png is not None and server.start_round == 0:
        log_image(server.loggers, "fed/partition", server.partition_png)
    per = fed.get("clients_per_round")
    if is_whole(per) and per > len(server.client_ids):
        log.warning("federation.clients_per_round=%d but the federation has %d clients: every client trains in "
                    "every round", per, len(server.client_ids))
    fdr = server.cfg.trainer.get("fast_dev_run") if is_debug(server.cfg) else None
    local = (f"{int(fdr)} batch{'es' if int(fdr) > 1 else ''} per client (fast_dev_run)" if fdr
             else f"{fed.local_epochs} local epochs")
    artifacts.console.print(
        f"[bold]federation[/bold] {fed.strategy._target_.split('.')[-1]}: {len(server.client_ids)} clients, "
        f"{clients_per_round(len(server.client_ids), fed.get('clients_per_round'))} per round, {rounds} rounds x "
        f"{local}, executor {type(server.executor).__name__}" + (f", shared pool {len(server.pool)}" if server.pool else ""))
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    # no bars in a log file (their last frames only; log_round writes a line per client and round there)
    live = bool(fed.get("progress", True)) and artifacts.is_terminal()
    with Progress(*columns, console=artifacts.console, transient=False, disable=not live) as bar:
        rtask = bar.add_task("rounds", total=rounds, completed=server.start_round)
        ctask = bar.add_task("clients", total=1, visible=server.start_round < rounds)  # a finished run resumed
        for rnd in range(server.start_round, rounds):
            stop.check()  # a SIGTERM stops the federation between clients and rounds (engine/stop.py)
            row = server.run_round(
                rnd, on_start=lambda n, r=rnd: bar.reset(ctask, total=n, description=f"round {r + 1}: clients"),
                on_done=lambda cid, ok: (bar.advance(ctask), stop.check()))
            server.history.append(row)
            improved = server.update_best(rnd, row)
            # logged before server.pt: a stop in between runs the round again rather than leaving a completed round
            # never logged (the CSV gets both rows; W&B, resumed under the same id, keeps the first one it got for
            # that step, equal to the re-run's under trainer.deterministic=true); its best weights follow server.pt,
            # so they always belong to a completed round (resume writes them when a stop came between)
            log_metrics(server.loggers, row, step=rnd + 1)
            log_round(row, rounds)  # per-client and global lines in run.log / non-TTY stdout
            server.checkpoint(rnd)
            if improved:
                server.save_best()
            write_rounds_csv(rounds_table(server.history), server.out / "rounds.csv")
            bar.advance(rtask)
            shown = {k.split("fed/round/")[-1]: v for k, v in row.items()
                     if k.startswith("fed/round/") and any(s in k for s in ("test/", "server_val/", "dropped"))}
            bar.console.print(f"round {rnd + 1}/{rounds}: " + ", ".join(
                f"{k}={fmt(v)}" for k, v in sorted(shown.items())[:8]))
    return _finish(server, finished_before)


def _fit_seconds(server: Server, finished_before: bool) -> float:
    """The federation's wall time; a finished run resumed keeps its ``metrics.json``'s (no round ran now: a
    review found each such resume adding its process's set-up time)."""
    kept = None
    if finished_before:
        try:
            kept = json.loads((server.out / "metrics.json").read_text()).get("fit_seconds")
        except (OSError, ValueError, AttributeError, RecursionError):  # no or a damaged metrics.json: this process's time
            kept = None
    if isinstance(kept, (int, float)) and not isinstance(kept, bool):
        artifacts.console.print(f"resume: all {len(server.history)} rounds were done; the final evaluation runs "
                                f"again, fit_seconds stays {kept:.1f}", soft_wrap=True)
        return float(kept)
    return server.elapsed()


def _test_global(server: Server) -> dict[str, Any]:
    """The final (and best round's) global model on the pooled test set: ``test/*``, ``fed/global/*``,
    ``fed/best/*``, with ``test_per_case.csv`` and the test media."""
    out = server.out
    test_loader = server.loader(server.base.test_dataset)
    overlays = test_overlays(server.template, server.fed)  # segmentation: test_overlays.png, as a centralised run
    final = server.evaluate(server.module_for(server.global_state), test_loader, "test",
                            callbacks=[overlays] if overlays else [])
    per_case = getattr(server.template, "test_per_case", None)
    if per_case:  # each test volume's scores of the final global model (test/*), as a centralised run writes
        artifacts.write_case_csv(out / "test_per_case.csv", per_case)
    log_test_media(server.loggers, server.template, overlays)  # overlays, per-case table, ROC, confusion in W&B
    metrics: dict[str, Any] = {f"fed/global/{k}": v for k, v in final.items()}
    metrics.update(final)  # test/<metric> of the final global model
    if server.best["round"] > 0 and (out / "global_best.pt").is_file():
        best_state = load_global_weights(out / "global_best.pt")
        best_local = local_for(out / "global_best.pt", server.store, server.client_ids)  # FedBN: that round's BN
        best = server.evaluate(server.module_for(best_state, local=best_local), test_loader, "test")
        metrics.update({f"fed/best/{k}": v for k, v in best.items()})
        metrics["fed/best_round"] = server.best["round"]
        metrics[f"{server.monitor}_best"] = server.best["value"]  # server validation: what a sweep optimises
    return metrics


def _finish(server: Server, finished_before: bool = False) -> dict[str, Any]:
    out, metric = server.out, server.main_metric()
    rows = rounds_table(server.history)
    if rows:
        png = plot_rounds({str(server.fed.strategy._target_.split(".")[-1]): rows}, out / "fed_curves.png",
                          metric, title=str(server.cfg.get("exp_name", "federation")))
        log_image(server.loggers, "fed/curves", png)
    save_atomic(server.global_state, out / "global_final.pt")
    # FedBN with the sites' stores on their own nodes: no BN to test the global model with (said once by the server)
    metrics = {} if server.global_view_untrained() else _test_global(server)
    metrics.update({"fed/rounds": len(server.history), "fed/num_clients": len(server.client_ids),
                    "fed/dropped_total": server.dropped_total,
                    "fed/shared_pool": 0 if server.pool is None else len(server.pool),
                    "fit_seconds": _fit_seconds(server, finished_before),
                    "num_parameters": sum(p.numel() for p in server.template.net.parameters())})
    metrics.update(init_metrics(server.init_counts))  # init_weights=: round 0's load into the global model
    if debug_mode(server.cfg):  # any debug= mode
        metrics["debug"] = True  # fast_dev_run: experiments.report leaves it out of its tables
    if server.fed.get("evaluation_matrix"):
        matrix = evaluation_matrix(server)
        write_matrix(matrix, out, metric, matrix_note(server))
        metrics["evaluation_matrix"] = matrix
        metrics["evaluation_matrix_metric"] = metric  # what its cells hold: experiments.report ranks by it
    metrics.update(best_of_rounds(server.history))  # val/<m>_best: the global model's best server validation
    artifacts.write_json(out / "metrics.json", metrics)
    # at the last round's epoch and step: the final model is its global model (a review: with no epoch the final
    # test point was drawn at x=0 by report --curve; a W&B review: at step rounds + 1 the default x axis showed a
    # round that never ran)
    log_metrics(server.loggers, {**{k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                                 **matrix_scalars(metrics.get("evaluation_matrix") or {}),
                                 "epoch": len(server.history)}, step=len(server.history))
    if metrics.get("evaluation_matrix"):
        log_matrix_table(server.loggers, metrics["evaluation_matrix"], str(metrics["evaluation_matrix_metric"]))
    artifacts.print_metrics({k: v for k, v in metrics.items() if k.startswith(("fed/global/", "fed/best/"))},
                            "federation: global model on the pooled test set")
    artifacts.console.print(artifacts.artefacts_line(out))
    return metrics
