"""The federation round loop: ``run_federation(cfg)`` (dispatched by ``experiments/run.py``).

Set-up (once): seed; build and set up the base datamodule with the experiments' builders; carve the
server's shared pool (paper 000 §4.1 step 1; disjoint from every client) off the base training set;
partition the rest with ``federation.partition``; carve each client's validation split from its local
data; write the partition report (Markdown + PNG, also logged). The base datamodule's own validation set
is the server's held-out set for model selection (paper 003 §4 names its absence as the reason FL_global
lags); its test set is the pooled test set.

Rounds: sample clients (seeded by (seed, round): independent of the RNG history, so a resumed run samples
the same clients), broadcast ``strategy.server_message``, run the clients through the executor (failing
clients dropped), check every update carries no data (:func:`~federation.messages.assert_no_data`),
aggregate, evaluate the global model on every client's validation split, on the server's validation set
and on the pooled test set, log ``fed/round/...`` and ``client/<id>/...`` metrics, and checkpoint the
server state atomically (``server.pt``). ``resume=true`` continues after the last completed round.

End: ``rounds.csv``, ``fed_curves.png``, the global weights (final and best by server validation),
``metrics.json`` and, with ``federation.evaluation_matrix=true``, paper 003's Table 1 matrix
(:mod:`federation.matrix`).
Per-client state lives in the :class:`~federation.store.ClientStore` on disk and only the sampled
clients are materialised in a round, so memory does not grow with the number of clients.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.utils.data import DataLoader

from datamodules.subset import IndexSubset, carve_val, sample_cases, sample_groups, sample_labels
from engine import artifacts
from engine.builders import build_datamodule, build_loggers, build_module, check_datamodule
from federation import client as fed_client
from federation.client import (ClientIndices, build_strategy, client_seed, eval_trainer, evaluate,
                               quiet_lightning, register_base)
from federation.curves import plot_rounds
from federation.matrix import evaluation_matrix, main_metric, write_matrix
from federation.executors import ClientJob, SequentialExecutor
from federation.messages import assert_no_data, state_schema
from federation.errors import FederationError
from federation.plan import call_partitioner, sample_clients, write_partition_report
from federation.records import best_of_rounds, fmt, log_round, log_image, log_metrics, rounds_table, write_rounds_csv
from federation.server_state import rng_state, save_atomic, set_rng_state
from federation.sharing import SharedPool
from federation.store import ClientStore
from federation.strategies import Strategy

__all__ = ["run_federation", "FederationError", "sample_clients"]

log = logging.getLogger("federation.loop")
SERVER_CKPT = "server.pt"


# ---------------------------------------------------------------------------------------- helpers
def _client_cfg(cfg: DictConfig) -> DictConfig:
    """Resolved, Hydra-free copy of what a client needs (picklable for Ray workers)."""
    out: dict[str, Any] = {}
    for key in ("seed", "data", "model", "module", "trainer", "federation"):
        value = cfg.get(key)
        out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return OmegaConf.create(out)


def _finite_state(state: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


# ---------------------------------------------------------------------------------------- server
class Server:
    """Holds the run's objects between rounds (kept small: indices, the global state, the strategy)."""

    def __init__(self, cfg: DictConfig) -> None:
        quiet_lightning()
        self.cfg, self.fed = cfg, cfg.federation
        self.out = Path(cfg.paths.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.seed = int(cfg.seed)
        self.ccfg = _client_cfg(cfg)
        pl.seed_everything(self.seed, workers=True, verbose=False)

        self.base = build_datamodule(cfg.data)
        self.base.prepare_data()
        self.base.setup("fit")
        check_datamodule(self.base)
        register_base(self.ccfg.data, self.base)
        train = self.base.train_dataset
        n = len(train)
        # per-sample labels (classification targets, or the largest class of each slice) for the
        # partitioner, the stratified shared pool and the partition report
        self.labels = sample_labels(train)
        self.groups = sample_groups(train)
        self.cases = sample_cases(train)

        frac = float(self.fed.get("shared_fraction", 0.0) or 0.0)
        self.pool: SharedPool | None = None
        remaining = np.arange(n, dtype=np.int64)
        if frac > 0:
            self.pool, remaining = SharedPool.carve(remaining, frac, self.seed, labels=self.labels)
        self.client_ids, parts = call_partitioner(self.fed.partition, self.labels, self.groups, remaining,
                                            self.fed.get("num_clients"), self.seed)
        test_groups = getattr(self.base.test_dataset, "groups", None)
        partial = self.fed.get("partial_labels") or {}
        self.store = ClientStore(self.out / str(self.fed.get("store_dir", "client_store")))
        self.indices: dict[str, ClientIndices] = {}
        for cid, part in zip(self.client_ids, parts):
            tr, va = carve_val(part, float(self.fed.get("client_val_fraction", 0.2)),
                               client_seed(self.seed, -1, cid, "val"), self.cases)
            te = None
            if test_groups is not None and cid in set(np.asarray(test_groups).tolist()):
                te = np.flatnonzero(np.asarray(test_groups) == cid)
            ann = partial.get(cid)
            self.indices[cid] = ClientIndices(tr, va, te, None if ann is None else [int(a) for a in ann])
            self.store.save(cid, "indices", {"train": tr, "val": va, "test": te if te is not None else np.empty(0, np.int64)})
        self._partition_png = write_partition_report(self.out, self.labels, parts, self.client_ids, self.pool,
                                                     self.fed.partition._target_, getattr(self.base, "class_names", None))

        self.template = build_module(cfg)
        self.global_state = {k: v.detach().cpu().clone() for k, v in self.template.net.state_dict().items()}
        self.schema = state_schema(self.global_state)
        self.strategy: Strategy = build_strategy(self.fed.strategy, self.template.net, pool=self.pool, seed=self.seed)
        self.executor = instantiate(self.fed.executor) if self.fed.get("executor") else SequentialExecutor()
        self.in_process = isinstance(self.executor, SequentialExecutor)
        self.monitor = str(cfg.module.get("monitor") or "val/loss")
        self.monitor_mode = "min" if self.monitor.endswith("loss") else "max"
        self.loggers = build_loggers(cfg)
        self.evaluator = eval_trainer(self.ccfg, str(self.out))
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"round": -1, "value": None}
        self.start_round = 0
        self.dropped_total = 0

    # ------------------------------------------------------------------ modules with a given state
    def _module_for(self, state: Mapping[str, torch.Tensor], client_id: str | None = None) -> pl.LightningModule:
        """The template module loaded with ``state``; local-only entries (FedBN) from the client's store,
        or, for the server's view (``client_id=None``), the mean of every stored client's local entries."""
        full = dict(self.template.net.state_dict())
        full.update(state)
        local_keys = [k for k in full if self.strategy.is_local(k)]
        if local_keys:
            if client_id is not None:
                stored = self.store.load(client_id, "local_state", default=None) or {}
                full.update({k: v for k, v in stored.items() if k in full})
            else:
                acc: dict[str, list] = {}
                for cid in self.client_ids:
                    for k, v in (self.store.load(cid, "local_state", default=None) or {}).items():
                        acc.setdefault(k, []).append(v.double())
                for k, vs in acc.items():
                    mean = torch.stack(vs).mean(0)
                    full[k] = mean.round().to(full[k].dtype) if not full[k].is_floating_point() else mean.to(full[k].dtype)
        self.template.net.load_state_dict(full)
        return self.template

    def _loader(self, dataset: Any) -> DataLoader:
        return DataLoader(dataset, batch_size=int(getattr(self.base, "batch_size", 32)), shuffle=False)

    def _client_eval_loader(self, cid: str, split: str) -> DataLoader | None:
        ind = self.indices[cid]
        if split == "test" and ind.test is not None and len(ind.test):
            return self._loader(IndexSubset(self.base.test_dataset, ind.test))
        if len(ind.val) == 0:
            return None
        return self._loader(IndexSubset(self.base.train_dataset, ind.val))

    # ------------------------------------------------------------------ evaluation
    def evaluate_round(self, rnd: int, sampled: list[str]) -> dict[str, float]:
        row: dict[str, float] = {}
        mode = str(self.fed.get("eval_clients", "all"))
        eval_ids = self.client_ids if mode == "all" else (sampled if mode == "sampled" else [])
        per_client: dict[str, dict[str, float]] = {}
        for cid in eval_ids:
            loader = self._client_eval_loader(cid, "val")
            if loader is None:
                continue
            m = evaluate(self.evaluator, self._module_for(self.global_state, cid), loader, "val")
            per_client[cid] = m
            row.update({f"client/{cid}/{k}": v for k, v in m.items()})
        if per_client:
            keys = set.intersection(*(set(m) for m in per_client.values()))
            for k in sorted(keys):
                vals = [m[k] for m in per_client.values() if math.isfinite(m[k])]
                if vals:
                    row[f"fed/round/client_val/{k.split('/', 1)[1]}"] = float(np.mean(vals))
        module = self._module_for(self.global_state)
        if self.base.val_dataset is not None and len(self.base.val_dataset):
            m = evaluate(self.evaluator, module, self._loader(self.base.val_dataset), "val")
            row.update({f"fed/round/server_val/{k.split('/', 1)[1]}": v for k, v in m.items()})
        if self.fed.get("eval_test_every_round", True):
            m = evaluate(self.evaluator, module, self._loader(self.base.test_dataset), "test")
            row.update({f"fed/round/{k}": v for k, v in m.items()})
        return row

    # ------------------------------------------------------------------ checkpoint / resume
    def checkpoint(self, rnd: int) -> None:
        save_atomic({"round": rnd, "global": self.global_state, "strategy": self.strategy.state_dict(),
                            "history": self.history, "best": self.best, "dropped_total": self.dropped_total,
                            "store_index": self.store.index(), "client_ids": self.client_ids,
                            "rng": rng_state()}, self.out / SERVER_CKPT)

    def maybe_resume(self) -> None:
        path = self.out / SERVER_CKPT
        if not self.cfg.get("resume") or not path.is_file():
            if self.cfg.get("resume"):
                log.info("resume: no %s in %s yet, starting fresh", SERVER_CKPT, self.out)
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        if list(state["client_ids"]) != self.client_ids:
            raise FederationError(f"{path} was written for clients {state['client_ids'][:5]}..., this config "
                                  f"partitions into {self.client_ids[:5]}...: not the same federation")
        missing = set(state["store_index"]) - set(self.store.index())
        if missing:
            raise FederationError(f"client store {self.store.root} lacks clients {sorted(missing)[:5]} "
                                  f"recorded in {path}")
        self.global_state = dict(state["global"])
        self.strategy.load_state_dict(state["strategy"])
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.dropped_total = int(state.get("dropped_total", 0))
        self.start_round = int(state["round"]) + 1
        set_rng_state(state["rng"])
        artifacts.console.print(f"[bold]resume:[/bold] {path} (rounds 1..{self.start_round} done)")

    # ------------------------------------------------------------------ one round
    def _jobs(self, rnd: int, ids: list[str]) -> list[ClientJob]:
        jobs = []
        for cid in ids:
            kw: dict[str, Any] = dict(server_message=self.strategy.server_message(self.global_state, rnd, cid),
                                      cfg=self.ccfg, indices=self.indices[cid],
                                      store=self.store if self.in_process else str(self.store.root))
            if self.in_process:
                kw["base"] = self.base
            jobs.append(ClientJob(cid, kw))
        return jobs

    def run_round(self, rnd: int, progress: Progress | None, ctask: Any) -> dict[str, float]:
        sampled = sample_clients(self.client_ids, self.fed.get("clients_per_round"), self.seed, rnd)
        min_clients = int(self.fed.get("min_clients", 1) or 1)
        if min_clients > len(sampled):
            log.warning("federation.min_clients=%d > %d sampled clients; using %d", min_clients, len(sampled),
                        len(sampled))
            min_clients = len(sampled)
        if progress is not None:
            progress.reset(ctask, total=len(sampled), description=f"round {rnd + 1}: clients")

        def done(cid: str, ok: bool) -> None:
            if progress is not None:
                progress.advance(ctask)

        fn = fed_client.run_client
        t0 = time.perf_counter()
        jobs = self._jobs(rnd, sampled)
        sent = {j.client_id: int(j.kwargs["server_message"].config.get("num_shared", 0) or 0) for j in jobs}
        updates, failures = self.executor.map(fn, jobs, done)
        if len(updates) < min_clients and failures:  # retry the failed clients once
            log.warning("round %d: %d of %d clients reported (min_clients=%d); retrying %s once", rnd + 1,
                        len(updates), len(sampled), min_clients, sorted(failures))
            more, failures = self.executor.map(fn, self._jobs(rnd, sorted(failures, key=self.client_ids.index)))
            updates = sorted(updates + more, key=lambda u: self.client_ids.index(u.client_id))
        if len(updates) < min_clients:
            raise FederationError(
                f"round {rnd + 1}: only {len(updates)} of {len(sampled)} clients reported after a retry "
                f"(federation.min_clients={min_clients}); failures: {failures}. Stopping: the global model of "
                f"round {rnd} is kept in {self.out / SERVER_CKPT}")
        for u in updates:
            assert_no_data(u, self.schema)
        new_state = self.strategy.aggregate(self.global_state, updates, rnd)
        if not _finite_state(new_state):
            raise FederationError(f"round {rnd + 1}: aggregation produced non-finite weights; the global "
                                  f"model of round {rnd} is kept")
        self.global_state = {k: v.detach().cpu() for k, v in new_state.items()}
        self.dropped_total += len(failures)
        row: dict[str, float] = {"round": rnd + 1, "fed/round/clients": len(updates),
                                 "fed/round/dropped": len(failures),
                                 "fed/round/seconds_clients": time.perf_counter() - t0}
        total = sum(u.num_samples for u in updates)
        row["fed/round/train_samples"] = total
        row["fed/round/shared_sent"] = sum(sent[u.client_id] for u in updates)
        for key in sorted(set.intersection(*(set(u.metrics) for u in updates))):
            row[f"fed/round/local_val/{key}"] = float(np.mean([u.metrics[key] for u in updates]))
            for u in updates:
                row[f"client/{u.client_id}/local_val/{key}"] = float(u.metrics[key])
        row.update(self.evaluate_round(rnd, sampled))
        return row

    def _update_best(self, rnd: int, row: Mapping[str, float]) -> None:
        key = f"fed/round/server_val/{self.monitor.split('/', 1)[-1]}"
        value = row.get(key)
        if value is None or not math.isfinite(value):
            return
        better = self.best["value"] is None or (value > self.best["value"] if self.monitor_mode == "max"
                                                  else value < self.best["value"])
        if better:
            self.best = {"round": rnd + 1, "value": float(value), "key": key}
            save_atomic(self.global_state, self.out / "global_best.pt")


# ---------------------------------------------------------------------------------------- entry
def run_federation(cfg: DictConfig) -> dict[str, Any]:
    """Run the federation described by ``cfg.federation`` (module docstring); returns the final metrics."""
    t_start = time.perf_counter()
    server = Server(cfg)
    fed = server.fed
    rounds = int(fed.rounds)
    server.maybe_resume()
    for lg in server.loggers:
        try:
            lg.log_hyperparams(OmegaConf.to_container(server.ccfg, resolve=True))
        except Exception as exc:  # noqa: BLE001
            log.warning("log_hyperparams failed: %s", exc)
    if getattr(server, "_partition_png", None) is not None and server.start_round == 0:
        log_image(server.loggers, "fed/partition", server._partition_png)
    artifacts.console.print(
        f"[bold]federation[/bold] {fed.strategy._target_.split('.')[-1]}: {len(server.client_ids)} clients, "
        f"{fed.get('clients_per_round')} per round, {rounds} rounds x {fed.local_epochs} local epochs, "
        f"executor {type(server.executor).__name__}" + (f", shared pool {len(server.pool)}" if server.pool else ""))
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with Progress(*columns, console=artifacts.console, transient=False,
                      disable=not fed.get("progress", True)) as progress:
            rtask = progress.add_task("rounds", total=rounds, completed=server.start_round)
            ctask = progress.add_task("clients", total=1)
            for rnd in range(server.start_round, rounds):
                row = server.run_round(rnd, progress, ctask)
                server.history.append(row)
                server._update_best(rnd, row)
                log_metrics(server.loggers, row, step=rnd + 1)
                log_round(row, rounds)  # per-client and global lines in run.log / non-TTY stdout
                server.checkpoint(rnd)
                progress.advance(rtask)
                shown = {k.split("fed/round/")[-1]: v for k, v in row.items()
                         if k.startswith("fed/round/") and any(s in k for s in ("test/", "server_val/", "dropped"))}
                progress.console.print(f"round {rnd + 1}/{rounds}: " + ", ".join(
                    f"{k}={fmt(v)}" for k, v in sorted(shown.items())[:8]))
    finally:
        server.executor.shutdown()
    return _finish(server, t_start)


def _finish(server: Server, t_start: float) -> dict[str, Any]:
    cfg, out = server.cfg, server.out
    rows = rounds_table(server.history)
    if rows:
        write_rounds_csv(rows, out / "rounds.csv")
        metric = main_metric(server)
        png = plot_rounds({str(server.fed.strategy._target_.split(".")[-1]): rows}, out / "fed_curves.png",
                          metric, title=str(cfg.get("exp_name", "federation")))
        log_image(server.loggers, "fed/curves", png)
    save_atomic(server.global_state, out / "global_final.pt")
    module = server._module_for(server.global_state)
    final = evaluate(server.evaluator, module, server._loader(server.base.test_dataset), "test")
    metrics: dict[str, Any] = {f"fed/global/{k}": v for k, v in final.items()}
    metrics.update(final)  # test/<metric> of the final global model (the value a sweep optimises)
    if server.best["round"] > 0 and (out / "global_best.pt").is_file():
        best_state = torch.load(out / "global_best.pt", map_location="cpu", weights_only=True)
        best = evaluate(server.evaluator, server._module_for(best_state), server._loader(server.base.test_dataset), "test")
        metrics.update({f"fed/best/{k}": v for k, v in best.items()})
        metrics["fed/best_round"] = server.best["round"]
    metrics.update({"fed/rounds": len(server.history), "fed/num_clients": len(server.client_ids),
                    "fed/dropped_total": server.dropped_total,
                    "fed/shared_pool": 0 if server.pool is None else len(server.pool),
                    "fit_seconds": time.perf_counter() - t_start,
                    "num_parameters": sum(p.numel() for p in server.template.net.parameters())})
    if server.fed.get("evaluation_matrix"):
        matrix = evaluation_matrix(server)
        write_matrix(matrix, out, main_metric(server))
        metrics["evaluation_matrix"] = matrix
    metrics.update(best_of_rounds(server.history))  # val/<m>_best: the global model's best server validation
    artifacts.write_json(out / "metrics.json", metrics)
    log_metrics(server.loggers, {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                 step=len(server.history) + 1)
    for lg in server.loggers:
        try:
            lg.finalize("success")
        except Exception:  # noqa: BLE001
            pass
    artifacts.print_metrics({k: v for k, v in metrics.items() if k.startswith(("fed/global/", "fed/best/"))},
                            "federation: global model on the pooled test set")
    artifacts.console.print(f"[bold]artefacts:[/bold] {out}  (metrics.json, rounds.csv, fed_curves.png, "
                            f"partition.md/png, server.pt, global_final.pt)")
    return metrics
