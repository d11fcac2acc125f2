"""Paper 003's Table 1 (and SegViz's comparison): every model of a federation on every client's test set.

Rows: ``FL_global``; each client's ``<id>_FL_local``; each client's standalone ``<id>_baseline``; and a
``centralised`` model trained on the union of the clients' data (under partial labels, each site's data
with that site's annotation: pooled, not relabelled). Columns: each client's test set (its
site's test cases, or its local validation split when the data has no sites), the pooled test set and
the mean over client columns. Values are ``test/<metric>`` (``federation.matrix_metric``).

FL_local (paper 003 §3: "the local model" each client keeps): by default the client's **best local
checkpoint** of the federation, i.e. the weights it trained in the round where its own validation
metric was best (saved in the client store by :func:`federation.runner.run_client`);
``federation.matrix.fl_local=finetune`` instead fine-tunes the final global model on the client's data
for ``matrix.local_epochs``. A client with no stored best (never sampled) falls back to fine-tuning.

Model selection is alike for every row (paper 003 §4: "In the client training, we always keep the model with the
highest local validation metrics"): FL_local is the client's best round; the rows the matrix trains (baselines,
centralised, fine-tuned FL_local) keep their best epoch on their validation split (the client's own; the pooled
splits for centralised; without one, the last epoch) by ``module.monitor`` (``matrix.select: best``; ``last``: their last epoch, as before the
forty-fifth session, when a review found the asymmetry tilting FL_local against the baselines). FL_global is the
final aggregate, as in the paper (no server-side selection).

Columns: ``mean`` is the unweighted mean over client columns (each site counts once); ``pooled`` scores the union
of the clients' test cases, each case once, which is paper 003 Table 1's site average (there weighted by each
site's number of test volumes: 84 and 100).
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
from rich.table import Table
from torch.utils.data import ConcatDataset

from datamodules.subset import SubsetDataModule
from engine import artifacts
from engine.wandb_tracking import debug_mode
from federation.core.sampling import client_seed, clients_per_round, round_half_up
from federation.plan import MATRIX_CHOICES
from federation.runner import best_local_store, train_local

if TYPE_CHECKING:
    from federation.server import Server

__all__ = ["evaluation_matrix", "matrix_note", "write_matrix"]

log = logging.getLogger("federation.matrix")


def _fl_local(server: Server, cid: str, mode: str, epochs: int) -> pl.LightningModule:
    if mode not in MATRIX_CHOICES["fl_local"]:
        raise ValueError(f"federation.matrix.fl_local={mode!r}: expected {' or '.join(MATRIX_CHOICES['fl_local'])}")
    if mode == "best_local":
        best = best_local_store(server.store).load(cid, "best_local", default=None)
        if best is not None:
            module = server.module_for(server.global_state, cid)
            module.net.load_state_dict(best["state"])
            return module
        log.warning("client %s has no best local checkpoint (never sampled?): FL_local fine-tunes the global model", cid)
    seed = client_seed(server.seed, 10_000, cid, "fl_local")
    dm = server.client_datamodule(cid, seed)
    init = dict(server.module_for(server.global_state, cid).net.state_dict())
    module, _ = train_local(server.ccfg, dm, init, epochs, seed, root_dir=str(server.store.root),
                            keep_best=keeps_best(server.fed))
    return module


def keeps_best(fed) -> bool:
    """``federation.matrix.select``: ``best`` (default) keeps a trained row's best validation epoch, ``last`` its last."""
    select = str((fed.get("matrix") or {}).get("select", MATRIX_CHOICES["select"][0]))
    if select not in MATRIX_CHOICES["select"]:
        raise ValueError(f"federation.matrix.select={select!r}: expected {' or '.join(MATRIX_CHOICES['select'])}")
    return select == "best"


def budgets(fed, num_clients: int) -> dict[str, int]:
    """Epochs of each kind of row: ``federation`` (what a client trained in the federation on average: rounds x
    local epochs x the share of clients sampled per round, rounded), ``standalone`` and ``centralised``
    (``matrix.*_epochs``; null: the federation's, so the rows compare at one budget; a review: the default 2
    against the federation's 10 x 2 decided the table, and a later one: 5 of 20 clients per round train a quarter
    of rounds x local epochs)."""
    mcfg = fed.get("matrix") or {}
    n = max(1, int(num_clients))
    share = clients_per_round(n, fed.get("clients_per_round")) / n
    per_client = max(1, int(round_half_up(int(fed.get("rounds", 1)) * int(fed.get("local_epochs", 1)) * share)))
    return {"federation": per_client,
            **{k: per_client if mcfg.get(f"{k}_epochs") is None else int(mcfg.get(f"{k}_epochs"))
               for k in ("standalone", "centralised")}}


def evaluation_matrix(server: Server) -> dict[str, dict[str, float]]:
    """The matrix described in the module docstring, as ``{row: {column: value}}``."""
    fed = server.fed
    mcfg = fed.get("matrix") or {}
    key = f"test/{server.main_metric()}"
    ids = server.client_ids[: int(mcfg.get("max_clients", 8) or len(server.client_ids))]
    cols = {cid: server.client_loader(cid, "test") for cid in ids}
    cols = {k: v for k, v in cols.items() if v is not None}
    cols["pooled"] = server.loader(server.base.test_dataset)
    has_local = any(server.strategy.is_local(k) for k in server.global_state)

    def score(module: pl.LightningModule, client_local: str | None = None) -> dict[str, float]:
        out = {}
        for col, loader in cols.items():
            mod = module
            if client_local is None and has_local:
                # FL_global under FedBN: each client column is evaluated with that client's local BN
                mod = server.module_for(server.global_state, col if col != "pooled" else None)
            out[col] = server.evaluate(mod, loader, "test").get(key, math.nan)
        client_vals = [v for c, v in out.items() if c != "pooled" and math.isfinite(v)]
        out["mean"] = float(np.mean(client_vals)) if client_vals else math.nan
        return out

    rows: dict[str, dict[str, float]] = {"FL_global": score(server.module_for(server.global_state))}
    ccfg, base = server.ccfg, server.base
    mode = str(mcfg.get("fl_local", MATRIX_CHOICES["fl_local"][0]))
    local_epochs = int(mcfg.get("local_epochs", fed.get("local_epochs", 1)))
    epochs = budgets(fed, len(server.client_ids))
    best = keeps_best(fed)  # the baselines and centralised row (and _fl_local's fine-tuning) alike
    for cid in ids:
        rows[f"{cid}_FL_local"] = score(_fl_local(server, cid, mode, local_epochs), cid)
    if mcfg.get("standalone", True):
        for cid in ids:
            dm = server.client_datamodule(cid, client_seed(server.seed, 20_000, cid))
            module, _ = train_local(ccfg, dm, server.init_state, epochs["standalone"],  # init_weights= or fresh
                                    client_seed(server.seed, 20_000, cid, "baseline"),
                                    root_dir=str(server.store.root), keep_best=best)
            rows[f"{cid}_baseline"] = score(module, cid)
    if mcfg.get("centralised", True):
        train = np.concatenate([server.indices[c].train for c in server.client_ids])
        val = np.concatenate([server.indices[c].val for c in server.client_ids])
        dm = SubsetDataModule(base, np.sort(train), np.sort(val), seed=server.seed)
        if any(server.indices[c].annotated is not None for c in server.client_ids):
            # partial labels: the pooled data keep each site's own annotation (the same labels, pooled),
            # not annotations of organs no site has labelled on those cases
            sites = [server.client_datamodule(c, server.seed) for c in server.client_ids]
            dm.train_dataset = ConcatDataset([site.train_dataset for site in sites])
            # and its best epoch is chosen on the sites' own labels too (a review: the pooled validation split kept
            # full labels, so the selection read organs no site annotated)
            own = [site.val_dataset for site in sites if site.val_dataset is not None and len(site.val_dataset)]
            dm.val_dataset = ConcatDataset(own) if own else None
        module, _ = train_local(ccfg, dm, server.init_state, epochs["centralised"],
                                client_seed(server.seed, 30_000, "central"), root_dir=str(server.store.root),
                                keep_best=best)
        rows["centralised"] = score(module, "central")
    return rows


def matrix_note(server: Server) -> str | None:
    """What a reader of the matrix must know: client columns that are the client's validation split (the data
    has no sites), on which ``fl_local=best_local`` chose each client's round, so its own cell is optimistic
    against FL_global and the standalone row (a review); ``None`` when every column is a held-out test set."""
    mcfg = server.fed.get("matrix") or {}
    ids = server.client_ids[: int(mcfg.get("max_clients", 8) or len(server.client_ids))]
    on_val = [c for c in ids if (server.indices[c].test is None or not len(server.indices[c].test))
              and len(server.indices[c].val)]  # a client with neither has no column (a review)
    notes = []
    if debug_mode(server.cfg):  # a walkthrough: a fast_dev_run's matrix read like results (its pooled column was
        notes.append(f"**A debug run (debug mode {debug_mode(server.cfg)}): its rows trained and were scored on a "
                     f"few batches; these figures are not results.**")  # the pooled column was its first site's
        return " ".join(notes)
    if on_val:
        notes.append(f"Columns {', '.join(on_val[:8])} are those clients' validation splits (the data has no "
                     f"sites, so they have no test cases of their own).")
        if str(mcfg.get("fl_local", MATRIX_CHOICES["fl_local"][0])) == "best_local":
            notes.append("Each <client>_FL_local is the round its validation score was best, chosen on that same "
                         "split: its own cell is optimistic; matrix.fl_local=finetune, or data with sites, avoids it.")
    strategy = getattr(server, "strategy", None)
    if strategy is not None and any(strategy.is_local(k) for k in getattr(server, "global_state", {})):
        # a walkthrough: FedBN's FL_global pooled cell (0.1195) sat beside its site columns' mean (0.1213) over
        # equal test cases per site, with nothing saying it is another model
        notes.append(f"FL_global's client columns use each client's own local entries ({strategy.name}, e.g. "
                     f"FedBN's batch norm), its pooled column their mean over the clients, a model no site holds.")
    epochs = budgets(server.fed, len(server.client_ids))
    rows = [k for k in ("standalone", "centralised") if mcfg.get(k, True) and epochs[k] != epochs["federation"]]
    if rows:
        k = clients_per_round(len(server.client_ids), server.fed.get("clients_per_round"))
        sampled = "" if k == len(server.client_ids) else f", {k} of {len(server.client_ids)} clients per round"
        notes.append(f"Budgets differ: a client trained {epochs['federation']} epochs in the federation "
                     f"({server.fed.get('rounds')} rounds x {server.fed.get('local_epochs', 1)}{sampled}), the "
                     + " and the ".join(f"{k} row(s) {epochs[k]}" for k in rows)
                     + " (federation.matrix.<row>_epochs; null gives the federation's).")
    return " ".join(notes) or None


def write_matrix(rows: dict[str, dict[str, float]], out: Path, metric: str, note: str | None = None) -> None:
    """``evaluation_matrix.md`` / ``.csv`` in ``out`` (atomic) and a rich table on the console; ``note``
    (:func:`matrix_note`) under the Markdown table and logged as a warning."""
    cols = list(next(iter(rows.values())))
    md = [f"| model \\ test set ({metric}) | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    md += [f"| {r} | " + " | ".join(artifacts.fmt(v.get(c), 4) for c in cols) + " |" for r, v in rows.items()]
    if note:
        md += ["", note]
        log.warning("evaluation matrix: %s", note)
    artifacts.atomic_write_text(out / "evaluation_matrix.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", *cols])
    for r, v in rows.items():
        w.writerow([r, *[v.get(c) for c in cols]])
    artifacts.atomic_write_text(out / "evaluation_matrix.csv", buf.getvalue())
    table = Table(title=f"evaluation matrix (test/{metric})")
    table.add_column("model")
    for c in cols:
        table.add_column(c, justify="right")
    for r, v in rows.items():
        table.add_row(r, *[artifacts.fmt(v.get(c), 4) for c in cols])
    artifacts.console.print(table)
