"""The federated server: set-up, one round at a time, evaluation and ``server.pt`` (a small public API).

Set-up (once): seed; build and set up the base datamodule with the engine's builders; carve the server's
shared pool (paper 000 §4.1 step 1; disjoint from every client) off the base training set; partition the
rest with ``federation.partition``; carve each client's validation split from its local data; write the
partition report. The base datamodule's validation set is the server's held-out set for model selection
(paper 003 §4 names its absence as the reason FL_global lags); its test set is the pooled test set.

A round (:meth:`Server.run_round`): sample clients (seeded by (seed, round) only), broadcast
``strategy.server_message``, run the clients through the executor (failing ones dropped, retried once
when fewer than ``min_clients`` reported), check every update carries no data, aggregate, evaluate the
global model (every client's validation split, the server's validation set, the pooled test set).
:meth:`Server.checkpoint` / :meth:`Server.resume` write and read ``server.pt`` atomically.

Public API used by :mod:`federation.loop` and :mod:`federation.matrix`: :meth:`module_for`, :meth:`loader`,
:meth:`client_loader`, :meth:`client_datamodule`, :meth:`evaluate`, :meth:`main_metric` and the attributes
``client_ids``, ``indices``, ``store``, ``base``, ``global_state``, ``strategy``, ``seed``, ``monitor``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from datamodules.loaders import eval_loader
from datamodules.subset import (IndexSubset, SubsetDataModule, sample_cases, sample_groups, sample_labels,
                                val_carved_from_train)
from engine.builders import build_datamodule, build_module, check_datamodule, check_monitors
from engine.init_weights import init_from_config
from engine.loggers import build_loggers
from engine.one_process import check_one_process_trainer
from federation import runner
from federation.core.messages import assert_no_data, state_schema
from federation.core.sampling import clients_per_round, sample_clients
from federation.core.strategies import Strategy
from federation.core.strategies.base import MissingFromUpdates
from federation.errors import FederationError
from federation.init_local import init_local_entries
from federation.partition_files import write_partition_report
from federation.plan import (check_federation_config, check_matrix_metric, check_teacher_given, is_remote_sites,
                             split_clients)
from federation.runner import build_strategy, eval_trainer, model_named, quiet_lightning, register_base
from federation.server_eval import evaluate_round, global_view_untrained, update_best
from federation.server_resume import SERVER_CKPT, client_stores, resume_server, save_checkpoint
from federation.store_owner import FEDERATION_ID, federation_id
from federation.server_state import save_atomic
from federation.deploy import LocalStates, mean_local, save_best_local, stored_local
from federation.store import ClientStore
from federation.transports import ClientJob
from federation.transports import executor_kind
from federation.transports.inprocess import SequentialExecutor

__all__ = ["Server"]

log = logging.getLogger("federation.server")


def client_cfg(cfg: DictConfig) -> DictConfig:
    """Resolved, Hydra-free copy of what a client needs (picklable for Ray workers and Flower nodes)."""
    out: dict[str, Any] = {}
    for key in ("seed", "data", "model", "module", "trainer", "federation"):  # no init_weights: messages carry it
        value = cfg.get(key)
        out[key] = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    return OmegaConf.create(out)


def _finite(state: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


class Server:
    """Holds the run's objects between rounds (kept small: indices, the global state, the strategy)."""

    def __init__(self, cfg: DictConfig, executor: Any | None = None) -> None:
        quiet_lightning()
        self.t_start, self.seconds_before = time.perf_counter(), 0.0  # fit_seconds across resumes (server.pt)
        self.cfg, self.fed = cfg, cfg.federation
        check_federation_config(self.fed)
        check_one_process_trainer(cfg.trainer)
        check_teacher_given(cfg)
        if is_remote_sites(self.fed.partition):
            on_nodes = getattr(executor, "data_on_nodes", False) if executor is not None else \
                executor_kind(self.fed) == "flower"
            if not on_nodes:
                raise FederationError("federation/partition=remote_sites: the server holds none of the sites' data; "
                                      "it runs only as a real Flower deployment (federation/executor=flower "
                                      "federation.executor.launch=false, docs/deployment.md)")
        self.out = Path(cfg.paths.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.seed = int(cfg.seed)
        self.ccfg = client_cfg(cfg)
        pl.seed_everything(self.seed, workers=True, verbose=False)

        self.base = build_datamodule(cfg.data)
        self.base.prepare_data()
        self.base.setup("fit")
        check_datamodule(self.base)
        register_base(self.ccfg.data, self.base)
        train = self.base.train_dataset
        self.labels, self.groups, self.cases = sample_labels(train), sample_groups(train), sample_cases(train)

        split = split_clients(self.fed, train, self.base.test_dataset, self.seed,
                              getattr(self.base, "num_classes", None))
        self.pool, self.client_ids, self.indices, parts = split.pool, split.client_ids, split.indices, split.parts
        per_round, wanted = clients_per_round(len(self.client_ids), self.fed.get("clients_per_round")), \
            int(self.fed.get("min_clients", 1) or 1)
        if wanted > per_round:  # a walkthrough: run_round capped it without a word
            log.warning("federation.min_clients=%d but a round samples %d clients (federation.clients_per_round=%s, "
                        "%d clients): min_clients is capped to the %d clients sampled per round", wanted, per_round,
                        self.fed.get("clients_per_round"), len(self.client_ids), per_round)
        self.store = ClientStore(self.out / str(self.fed.get("store_dir", "client_store")))
        self.remote = not any(len(p) for p in parts)  # remote_sites: the sites' data is on their own nodes
        self.partition_png = None if self.remote else write_partition_report(
            self.out, self.labels, parts, self.client_ids, self.pool, self.fed.partition._target_,
            getattr(self.base, "class_names", None), self.fed.get("partial_labels"),
            {cid: (len(ind.train), len(ind.val)) for cid, ind in self.indices.items()},
            multi_label=getattr(self.base, "task", None) == "multi-label")

        sched = cfg.module.get("scheduler")
        if sched:  # a review: the default module's cosine over trainer.max_epochs silently never decayed
            log.warning("module.scheduler (%s) restarts every round: each round builds a fresh optimiser and "
                        "schedule (as Flower's and FLARE's clients do) and trains federation.local_epochs=%s "
                        "epoch(s); set module.scheduler=null for a constant learning rate (the fed_* experiments do)",
                        str(sched.get("_target_", "?")).rsplit(".", 1)[-1], self.fed.get("local_epochs"))
        self.template = build_module(cfg)
        check_monitors(cfg, self.template, ("module.monitor", "federation.early_stopping.monitor"))  # not a round on
        check_matrix_metric(self.fed, self.template)
        self.federation_id = federation_id(self.out)  # kept by a resume; a site's store is claimed with it
        # init_weights=: round 0's global model and the matrix's baselines start from it (a resume: server.pt's)
        resuming = bool(cfg.get("resume")) and (self.out / SERVER_CKPT).is_file()  # its log says round 0's model only
        self.init_counts = init_from_config(cfg, self.template.net, quiet=resuming)  # metrics.json's init_weights/*
        self.init_state = None if self.init_counts is None else \
            {k: v.detach().cpu().clone() for k, v in self.template.net.state_dict().items()}
        self.global_state = {k: v.detach().cpu().clone() for k, v in self.template.net.state_dict().items()}
        self.schema = state_schema(self.global_state)
        named = model_named(cfg, self.template.net)  # FedBN's refusal of a net without BatchNorm names the model
        self.strategy: Strategy = build_strategy(self.fed.strategy, self.template.net, named, pool=self.pool,
                                                 seed=self.seed)
        self.init_local = init_local_entries(self.init_state, self.strategy.is_local)  # sent: no client reads the file
        from federation.transports.flower.privacy import check_dp_statistics  # (plan.py's import, lazily too)

        check_dp_statistics(self.fed, self.global_state, self.strategy.is_local)  # before any client trains
        self.monitor = str(cfg.module.get("monitor") or "val/loss")
        self.evaluator = eval_trainer(self.ccfg, str(self.out))
        self.loggers = build_loggers(cfg)  # after what can fail but the executor: a W&B run is opened last
        if executor is None:  # last: nothing after it can fail and leave its Ray instance running (a review)
            try:
                executor = instantiate(self.fed.executor) if self.fed.get("executor") else SequentialExecutor()
            except BaseException:
                from federation.records import close_loggers

                close_loggers(self.loggers, "failed")  # run_federation's finally is not reached
                raise
        self.executor = executor
        self.in_process = bool(getattr(executor, "in_process", False))
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"round": -1, "value": None}
        self.start_round = 0
        self.dropped_total = 0
        self._untrained_warned: set[str] = set()
        self._mean_cache: tuple[tuple, dict[str, torch.Tensor]] | None = None
        self._untrained_said = False

    # ------------------------------------------------------------------ public helpers (matrix, loop)
    def main_metric(self) -> str:
        """``federation.matrix_metric``, else the module's monitor without its split."""
        metric = self.fed.get("matrix_metric")
        return str(metric) if metric else self.monitor.split("/", 1)[-1]

    def module_for(self, state: Mapping[str, torch.Tensor], client_id: str | None = None,
                   local: LocalStates | None = None) -> pl.LightningModule:
        """The template module loaded with ``state``; local-only entries (FedBN) of the client (``client_id``)
        or, for the server's view (``None``), the mean of every client's, from ``local`` ({client: entries}
        of the round ``state`` is from) or else the client store (the last round's). A client that has not
        trained yet (client sampling) has no entries of its own: it gets the server's view, the mean of every
        client's (a review: it was scored with freshly initialised batch norm)."""
        full = dict(self.template.net.state_dict())
        full.update(state)
        if any(self.strategy.is_local(k) for k in full):
            if local is not None:
                own = {client_id: local[client_id]} if client_id is not None and local.get(client_id) else {}
            else:  # one client's view reads that client's store file only, not every client's
                own = stored_local(self.store, [client_id]) if client_id is not None else {}
            if client_id is not None and not own and client_id not in self._untrained_warned:
                self._untrained_warned.add(client_id)
                log.info("client %s has no local entries (%s) yet: evaluated with the mean of the other "
                         "clients'", client_id, self.strategy.name)
            view = mean_local(own) if own else (mean_local(local) if local is not None else self._stored_mean())
            full.update({k: v for k, v in view.items() if k in full})
        self.template.net.load_state_dict(full)
        return self.template

    def global_view_untrained(self) -> bool:
        """Whether the server's view has no trained local entries (:func:`federation.server_eval.global_view_untrained`;
        server validation, test and the best round are then skipped)."""
        return global_view_untrained(self)

    def _stored_mean(self) -> dict[str, torch.Tensor]:
        """The mean of every client's stored local entries (the server's view), read again only when a store
        file changed: evaluating N clients that have not trained yet read all N files N times (O(N^2) reads
        a round with FedBN and client sampling; a profile found 25,320 reads in 3 rounds of 100 clients)."""
        key = self.store.version()
        if self._mean_cache is None or self._mean_cache[0] != key:
            self._mean_cache = (key, mean_local(stored_local(self.store, self.client_ids)))
        return self._mean_cache[1]

    def loader(self, dataset: Any) -> DataLoader:
        """An evaluation loader batched as the base datamodule batches evaluation items (whole 3D volumes
        one at a time, mixed-size 2D slices padded; :func:`datamodules.loaders.eval_loader`)."""
        return eval_loader(self.base, dataset)

    def client_loader(self, cid: str, split: str) -> DataLoader | None:
        """``split="test"``: the client's own test cases (its site's), else its validation split (training
        cases as evaluated: whole volumes for 3D patch data)."""
        ind = self.indices[cid]
        if split == "test" and ind.test is not None and len(ind.test):
            return self.loader(IndexSubset(self.base.test_dataset, ind.test))
        return self.loader(val_carved_from_train(self.base, ind.val, ind.train)) if len(ind.val) else None

    def client_datamodule(self, cid: str, seed: int) -> SubsetDataModule:
        return runner.client_datamodule(self.ccfg, self.base, self.indices[cid], None, seed)

    def evaluate(self, module: pl.LightningModule, loader: Any, stage: str = "val",
                 callbacks: Sequence[pl.Callback] = ()) -> dict[str, float]:
        return runner.evaluate(self.evaluator, module, loader, stage, callbacks)

    # ------------------------------------------------------------------ evaluation
    def evaluate_round(self, sampled: list[str]) -> dict[str, float]:
        """The round's scores of the global model (:func:`federation.server_eval.evaluate_round`)."""
        return evaluate_round(self, sampled)

    # ------------------------------------------------------------------ checkpoint / resume
    def checkpoint(self, rnd: int) -> None:
        """``server.pt`` after round ``rnd`` (:func:`federation.server_resume.save_checkpoint`)."""
        save_checkpoint(self, rnd)

    def elapsed(self) -> float:
        """The federation's time so far: this process's and, resumed, the stopped processes' (from server.pt;
        a walkthrough found a resumed run's fit_seconds counting its last process only)."""
        return self.seconds_before + time.perf_counter() - self.t_start

    def resume(self) -> None:
        """Continue after ``server.pt``'s last round (:func:`federation.server_resume.resume_server`)."""
        resume_server(self)

    # ------------------------------------------------------------------ one round
    def jobs(self, rnd: int, ids: list[str]) -> list[ClientJob]:
        """The round's :class:`ClientJob` s: live objects in process, a store path otherwise."""
        out = []
        for cid in ids:
            msg = self.strategy.server_message(self.global_state, rnd, cid)
            msg = replace(msg, init_local=self.init_local) if self.init_local else msg
            msg = replace(msg, config={**msg.config, FEDERATION_ID: self.federation_id})  # whose state a store holds
            kw: dict[str, Any] = dict(server_message=msg, cfg=self.ccfg, indices=self.indices[cid],
                                      store=self.store if self.in_process else str(self.store.root))
            if self.in_process:
                kw["base"] = self.base
            out.append(ClientJob(cid, kw))
        return out

    def run_round(self, rnd: int, on_start: Callable[[int], None] | None = None,
                  on_done: Callable[[str, bool], None] | None = None) -> dict[str, float]:
        """Round ``rnd`` (0-based): sample, train, check, aggregate, evaluate; returns its row of metrics."""
        sampled = sample_clients(self.client_ids, self.fed.get("clients_per_round"), self.seed, rnd)
        min_clients = min(int(self.fed.get("min_clients", 1) or 1), len(sampled))
        if on_start is not None:
            on_start(len(sampled))
        fn = runner.run_client
        t0 = time.perf_counter()
        jobs = self.jobs(rnd, sampled)
        sent = {j.client_id: int(j.kwargs["server_message"].config.get("num_shared", 0) or 0) for j in jobs}
        updates, failures = self.executor.map(fn, jobs, on_done)
        if len(updates) < min_clients and failures:  # retry the failed clients once
            log.warning("round %d: %d of %d clients reported (min_clients=%d); retrying %s once", rnd + 1,
                        len(updates), len(sampled), min_clients, sorted(failures))
            more, failures = self.executor.map(fn, self.jobs(rnd, sorted(failures, key=self.client_ids.index)))
            updates = sorted(updates + more, key=lambda u: self.client_ids.index(u.client_id))
        if len(updates) < min_clients:
            if (self.out / SERVER_CKPT).is_file():
                kept = f"the global model of round {rnd} is kept in {self.out / SERVER_CKPT}"
            else:  # a walkthrough: "the global model of round 0 is kept in nowhere (no round completed)"
                kept = "no round completed, so no global model was saved"
            raise FederationError(
                f"round {rnd + 1}: only {len(updates)} of {len(sampled)} clients reported after a retry "
                f"(federation.min_clients={min_clients}); failures: {failures}. Stopping: {kept}")
        for cid in failures:  # a dropped client's round is not kept: what it stored goes (a review: a client
            self.store.close_round(cid, rnd)  # (first: one still running, past a timeout, keeps nothing either)
            for store in client_stores(self):  # dropped for NaN weights kept its NaN BN, which then spoilt
                store.rollback(cid, rnd)  # FedBN's server evaluation and stopped resume)
        for u in updates:
            assert_no_data(u, self.schema)
        try:
            new_state = self.strategy.aggregate(self.global_state, updates, rnd)
        except MissingFromUpdates as err:  # what the updates lack (a metric it allocates by): one line, not a traceback
            raise FederationError(f"round {rnd + 1}: {err.args[0] if err.args else err}") from err
        if not _finite(new_state):
            raise FederationError(f"round {rnd + 1}: aggregation produced non-finite weights; the global "
                                  f"model of round {rnd} is kept")
        self.global_state = {k: v.detach().cpu() for k, v in new_state.items()}
        self.dropped_total += len(failures)
        row: dict[str, float] = {"round": rnd + 1, "fed/round/clients": len(updates),
                                 "fed/round/dropped": len(failures),
                                 "fed/round/seconds_clients": time.perf_counter() - t0,
                                 "fed/round/train_samples": sum(u.num_samples for u in updates),
                                 "fed/round/shared_sent": sum(sent[u.client_id] for u in updates)}
        row.update({f"client/{u.client_id}/num_samples": u.num_samples for u in updates})  # FedAvg's n_k, as each said
        for key in sorted(set.union(*(set(u.metrics) for u in updates))):  # a class a site does not label is
            scored = [u.metrics[key] for u in updates if math.isfinite(u.metrics.get(key, math.nan))]  # not scored
            if scored:  # there (a walkthrough: its 1.0 went into the mean), so the mean is of the sites that do
                row[f"fed/round/local_val/{key}"] = float(np.mean(scored))
            for u in updates:
                if key in u.metrics:
                    row[f"client/{u.client_id}/local_val/{key}"] = float(u.metrics[key])
        row.update(self.evaluate_round(sampled))
        return row

    def update_best(self, rnd: int, row: Mapping[str, float]) -> bool:
        """Whether round ``rnd`` is the best so far (:func:`federation.server_eval.update_best`)."""
        return update_best(self, rnd, row)

    def save_best(self) -> None:
        """``global_best.pt`` (and FedBN's local entries of the same round) from the current global state."""
        save_best_local(self.store, self.client_ids, self.out)  # FedBN: the BN of this round, kept with it
        save_atomic(self.global_state, self.out / "global_best.pt")
