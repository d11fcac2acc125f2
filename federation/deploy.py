"""A federation's model as it is deployed: its global weights with the entries that never left the sites
(FedBN's batch-norm layers, paper 004) filled in, either as one site runs it or, as the server evaluated it for
the run's own ``test/*``, with the mean of every client's entries.

The entries must be those of the same round as the weights: ``global_final.pt`` takes the client store's (the
last round's), ``global_best.pt`` the snapshot the server took when it saved them (``global_best_local.pt``,
:func:`save_best_local`). Without this a FedBN ``global_best.pt`` segments with batch-norm statistics no client
trained (the server keeps their initial values: FedBN never averages them), and the best round's weights met the
last round's statistics in ``fed/best/test/*``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from omegaconf import DictConfig

from federation.core.strategies.base import strategy_class
from federation.errors import FederationError
from federation.resume_checks import check_model_entries, store_dir_inside
from federation.server_state import save_atomic
from federation.store import ClientStore
from federation.store_owner import FEDERATION_ID, ID_FILE
from lightning_modules.safe_load import load_checkpoint
from lightning_modules.targets import extra_prefixes, under_prefixes

BEST_LOCAL = "global_best_local.pt"
LocalStates = Mapping[str, Mapping[str, torch.Tensor]]


def stored_local(store: ClientStore, client_ids: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """``{client: its local-only entries}`` as the store holds them now (clients with none left out)."""
    out = {cid: store.load(cid, "local_state", default=None) or {} for cid in client_ids}
    return {cid: dict(v) for cid, v in out.items() if v}


def save_best_local(store: ClientStore, client_ids: list[str], run_dir: Path) -> None:
    """Beside ``global_best.pt``, when it is saved: every client's local entries of that round (FedBN's BN)."""
    local = stored_local(store, client_ids)
    path = Path(run_dir) / BEST_LOCAL
    if local:
        save_atomic(local, path)
    else:
        path.unlink(missing_ok=True)


def mean_local(local: LocalStates) -> dict[str, torch.Tensor]:
    """The mean over clients of each local-only entry (``{}`` when no client keeps any); integer entries
    (``num_batches_tracked``) are rounded."""
    acc: dict[str, list[torch.Tensor]] = {}
    for entries in local.values():
        for k, v in entries.items():
            acc.setdefault(k, []).append(v)
    out = {}
    for k, vs in acc.items():
        mean = torch.stack([v.double() for v in vs]).mean(0)
        out[k] = mean.to(vs[0].dtype) if vs[0].is_floating_point() else mean.round().to(vs[0].dtype)
    return out


def local_for(weights: Path, store: ClientStore, client_ids: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """The clients' local entries of the round ``weights`` holds: the best round's snapshot for
    ``global_best.pt``, the store (the last round) otherwise (:func:`local_source` says which)."""
    source = local_source(weights, store)
    if source != store.root:
        local = load_checkpoint(source, "best round's local entries")
        if not isinstance(local, dict) or not all(isinstance(v, dict) for v in local.values()):
            raise FederationError(f"{source} is not a {{client: state}} of tensors")
        return {str(c): dict(v) for c, v in local.items() if c in client_ids}
    return stored_local(store, client_ids)


def local_source(weights: Path, store: ClientStore) -> Path:
    """Where the local entries of ``weights``' round are: ``global_best_local.pt`` beside ``global_best.pt``
    when the server wrote one, else the store's folder."""
    snapshot = Path(weights).parent / BEST_LOCAL
    return snapshot if Path(weights).name == "global_best.pt" and snapshot.is_file() else store.root


def keeps_local(fed: DictConfig) -> bool:
    """Whether the federation's strategy keeps entries at the sites (``Strategy.keeps_local``: FedBN), asked
    of the class the config names, or ``local_keys`` / ``local_prefixes`` given. The config may be a handed-over
    run folder's, so its ``_target_`` is data: only a :class:`Strategy` of the project's ``federation`` package
    (or an ``allow_targets`` prefix) is imported, anything else is one line (a security review: resolving the
    name first imported whatever module it named, code shipped beside the run included)."""
    strategy = fed.get("strategy") or {}
    target = str(strategy.get("_target_", ""))
    if not under_prefixes(target, ("federation", *extra_prefixes())):
        raise FederationError(f"federation.strategy._target_={target!r} refused: a run config may only name the "
                              f"project's strategies (federation.*; trust more with allow_targets=[prefix])")
    try:
        cls = strategy_class(target)
    except ValueError as err:
        raise FederationError(str(err)) from None
    return bool(cls.keeps_local or strategy.get("local_keys") or strategy.get("local_prefixes"))


def _own_file(path: Path, run_dir: Path, what: str) -> None:
    """``path`` (a client store file, ``global_best_local.pt``) is a regular file of the run folder ``run_dir``:
    a handed-over folder's ``client_store/0.pt`` linked to another run's file (or a best-round snapshot linked
    elsewhere) had that file's BN entries filled into these weights (an audit)."""
    path = Path(path)
    if path.is_symlink():
        raise FederationError(f"{path}: the run's {what} is a link (to {os.readlink(path)}), not a file of the run "
                              f"folder; a run's files are its own (copy the file in place of the link)")
    if not path.is_file():
        raise FederationError(f"{path}: the run's {what} is not a regular file")
    if not path.resolve().is_relative_to(Path(run_dir).resolve()):
        raise FederationError(f"{path}: the run's {what} is outside the run folder {run_dir}; predict from the run "
                              f"folder (its config, weights, client store and {BEST_LOCAL} together)")


def _none_kept(weights: Path, fed: DictConfig, where: Path) -> FederationError:
    """The one line for a store that holds no client's local entries: a real deployment's server store (each site
    kept its own node ``store=``). Filled with nothing, the weights would run with batch norm as initialised."""
    name = str(fed.strategy._target_).rsplit(".", 1)[-1]
    return FederationError(f"{weights}: {where} holds no client's local entries ({name}'s batch norm; a real "
                           f"deployment keeps them in each site's own node store=), so these weights have untrained "
                           f"batch norm; copy a site's <store>/<site>.pt into the run's client store and pass "
                           f"client=<site>")


def _this_federations(store: ClientStore, clients: list[str], run_dir: Path) -> None:
    """The store files to be read are this run's federation's (``federation_id.txt``), not a site's file of a later
    federation copied in (a review: a second federation's batch norm was filled in without a word)."""
    id_file = Path(run_dir) / ID_FILE
    run_id = id_file.read_text(errors="replace").strip() if id_file.is_file() else None
    for cid in clients if run_id else []:
        held = store.load(cid, FEDERATION_ID)
        if held is not None and held != run_id:
            raise FederationError(f"{store.path(cid)} holds the state of another federation ({held}), not this run's "
                                  f"({run_id}, {id_file}): copy the site's own file for it, <store>/{cid}.pt while "
                                  f"this was its latest federation, else <store>/earlier/{run_id}/{cid}.pt")


def deployed_state(weights: Path, run_dir: Path, run_cfg: DictConfig, state: Mapping[str, torch.Tensor],
                   site: str | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """``(state, what was filled in)``: ``state`` (the federation's global ``weights``) with the local-only
    entries of client ``site`` (a client of the store, e.g. a hospital with ``partition=by_site``), else their
    mean over the clients; unchanged for a run that is no federation or whose clients keep nothing. A FedBN
    run whose client store is not in ``run_dir``, or holds no client's entries (a real deployment's: the sites
    kept theirs), is one line: its BN layers would be untrained."""
    fed = run_cfg.get("federation")
    if not isinstance(fed, DictConfig) or not keeps_local(fed):
        return dict(state), ""
    # the config is a handed-over run's (data): its store must be inside the run folder, not another run's
    store_dir = store_dir_inside(run_dir, fed.get("store_dir", "client_store"), f"{Path(run_dir) / 'config.yaml'}")
    if not store_dir.is_dir():
        raise FederationError(f"{weights}: the federation kept entries at its clients "
                              f"({str(fed.strategy._target_).rsplit('.', 1)[-1]}'s batch norm) and their store "
                              f"{store_dir} is missing; predict from the run folder (or copy its client store "
                              f"and {BEST_LOCAL} beside the config)")
    store = ClientStore(store_dir)
    clients = store.index()
    if not clients:
        raise _none_kept(weights, fed, store_dir)
    for cid in clients:  # read below: the run's own files, not links to another run's
        _own_file(store.path(cid), run_dir, f"client store file of {cid!r}")
    _this_federations(store, clients if site is None else [c for c in clients if c == site], run_dir)
    snapshot = Path(weights).parent / BEST_LOCAL
    if Path(weights).name == "global_best.pt" and (snapshot.is_symlink() or snapshot.exists()):
        _own_file(snapshot, run_dir, f"best round's local entries ({BEST_LOCAL})")
    if site is not None and site not in clients:
        raise FederationError(f"{site!r} is no client of {store_dir} (clients: {clients}): its batch norm "
                              f"cannot be chosen; predict's client=<one of them> picks one, client=mean their mean")
    local, source = local_for(weights, store, clients), local_source(weights, store)
    if not local:
        raise _none_kept(weights, fed, source)
    if site is not None and site not in local:
        raise FederationError(f"client {site!r} kept no local entries in {store_dir} for {Path(weights).name} (it "
                              f"never trained?): its batch norm cannot be filled in; predict's client=mean takes the "
                              f"clients' mean")
    chosen = {site: local[site]} if site is not None else local
    for cid, entries in chosen.items():  # filled into these weights: their shapes and dtypes, finite
        where = source if source != store.root else store.path(cid)
        check_model_entries({k: v for k, v in entries.items() if k in state}, state, where, f"local entries of {cid!r}",
                            every=False, hint="not entries of these weights' federation")
    filled = {k: v for k, v in mean_local(chosen).items() if k in state}
    if not filled:
        return dict(state), ""
    what = (f"client {site}'s" if site is not None else f"the mean of {len(chosen)} clients'") + \
        f" {len(filled)} local entries ({source})"
    if Path(weights).name == "global_best.pt" and source == store.root:
        what += (f"; warning: {BEST_LOCAL} is missing beside it, so these are the last round's entries with the best "
                 f"round's weights (copy {BEST_LOCAL} along with global_best.pt)")
    return {**state, **filled}, what
