"""Who takes part: the checks on ``federation.*`` before any work, the partition and its report.

The partitioners are pure functions in :mod:`federation.core.partition`; :func:`call_partitioner` calls the
configured one with what its signature asks for. A parameter that belongs to *another* partitioner (the
exp's ``k`` of ``pathological`` after ``federation/partition=dirichlet`` on the command line) is dropped with
a warning, so switching partitioner just works; a parameter no partitioner takes is an error (a typo).
:func:`federation.partition_files.write_partition_report` writes ``partition.md`` / ``partition.json`` /
``partition.png`` with the client ids the rest of the run uses (site names under ``by_site``).
"""
from __future__ import annotations

import difflib
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from hydra.utils import get_method, get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from datamodules.subset import carve_val, sample_cases, sample_groups, sample_labels
from federation.core.partial_labels import PartialLabels, check_partial_spec, unknown_client_key
from federation.core.partition import PARTITIONERS, remote_sites
from federation.core.sampling import client_seed, sample_clients  # noqa: F401 (re-exported)
from federation.core.sharing import SharedPool
from federation.config_shapes import check_federation_shapes, check_is_federation
from federation.errors import FederationError
from federation.runner import ClientIndices

__all__ = ["check_federation_config", "call_partitioner", "is_remote_sites", "sample_clients", "split_clients",
           "ClientSplit"]

log = logging.getLogger("federation.plan")
_DATA_ARGS = {"labels", "groups", "indices", "n", "num_clients", "seed"}

#: ``federation.matrix``'s choices, first the default: checked here before any round, read in :mod:`federation.matrix`
MATRIX_CHOICES = {"fl_local": ("best_local", "finetune"), "select": ("best", "last")}


def _int(fed: Any, key: str, minimum: int, allow_none: bool = False) -> None:
    value = fed.get(key)
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FederationError(f"federation.{key}={value}: must be an integer >= {minimum}"
                              + (" or null" if allow_none else ""))


#: the ``federation.*`` settings (``experiments/configs/federation/default.yaml``, its config groups, and the
#: data-sharing strategy's ``shared_fraction``); ``tests/test_fed_loop.py`` keeps it equal to default.yaml's keys
FEDERATION_KEYS = frozenset({
    "rounds", "num_clients", "clients_per_round", "local_epochs", "min_clients", "client_val_fraction",
    "partition_unit", "early_stopping", "eval_clients", "eval_test_every_round", "store_dir", "client_module",
    "partial_labels", "unannotated", "ignore_index", "evaluation_matrix", "matrix_metric", "matrix", "privacy",
    "progress", "strategy", "partition", "executor", "shared_fraction", "test_overlays"})
def check_federation_config(fed: Any) -> None:
    """Refuse ``federation.*`` values that cannot work, before any data is built (one line each)."""
    check_is_federation(fed)
    unknown = sorted(str(k) for k in fed if str(k) not in FEDERATION_KEYS)
    if unknown:  # a walkthrough: ++federation.roundz=3 ran one round without a word (other groups refuse it)
        close = difflib.get_close_matches(unknown[0], sorted(FEDERATION_KEYS), n=1)
        raise FederationError(f"federation.{unknown[0]} is no federation setting"
                              + (f" (did you mean federation.{close[0]}?)" if close else
                                 f"; they are: {', '.join(sorted(FEDERATION_KEYS))}"))
    check_federation_shapes(fed)
    _int(fed, "rounds", 1)
    _int(fed, "num_clients", 1, allow_none=True)
    _int(fed, "local_epochs", 1)
    _int(fed, "test_overlays", 0, allow_none=True)
    _int(fed, "min_clients", 1, allow_none=True)
    per = fed.get("clients_per_round")
    if isinstance(per, bool) or (per is not None and not isinstance(per, (int, float))):
        raise FederationError(f"federation.clients_per_round={per}: give an int count or a float fraction in (0, 1]")
    if isinstance(per, float) and not 0.0 < per <= 1.0:
        raise FederationError(f"federation.clients_per_round={per}: a float is a fraction of the clients and must "
                              f"be in (0, 1]; give an int for a count")
    if isinstance(per, int) and per < 1:
        raise FederationError(f"federation.clients_per_round={per}: must be >= 1")
    val = fed.get("client_val_fraction", 0.2)
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0.0 <= float(val) < 1.0:
        raise FederationError(f"federation.client_val_fraction={val}: must be a fraction in [0, 1)")
    strategy = fed.get("strategy") or {}
    if float(val) == 0.0 and str(strategy.get("_target_", "")).endswith("DataSharing") \
            and strategy.get("mode", "part") == "part":
        raise FederationError("federation.client_val_fraction=0 leaves the clients no validation split, but data "
                              "sharing (mode=part, paper 000 step 6) allocates by each client's validation accuracy")
    frac = fed.get("shared_fraction")
    if frac is not None and not 0.0 <= float(frac) < 1.0:
        raise FederationError(f"federation.shared_fraction={frac}: must be in [0, 1)")
    _check_pool_use(strategy, float(frac or 0.0))
    unit = fed.get("partition_unit", "case")
    if unit not in ("case", "sample"):
        raise FederationError(f"federation.partition_unit={unit}: expected case (whole patients per client) or sample")
    mode = fed.get("unannotated", "ignore")
    if mode not in PartialLabels.MODES:
        raise FederationError(f"federation.unannotated={mode}: expected one of {', '.join(PartialLabels.MODES)}")
    if fed.get("evaluation_matrix"):  # checked at the end otherwise, after every round had trained
        matrix = fed.get("matrix") or {}
        for key, allowed in MATRIX_CHOICES.items():
            value = matrix.get(key)
            if value is not None and str(value) not in allowed:
                raise FederationError(f"federation.matrix.{key}={value}: expected {' or '.join(allowed)}")
    if is_remote_sites(fed.get("partition")):
        _check_remote_sites(fed)
    from federation.transports.checks import check_executor_config  # each executor's checks live there

    check_executor_config(fed)


def _check_remote_sites(fed: Any) -> None:
    """A real deployment's ``federation.partition.sites``: distinct, non-empty names, and ``num_clients`` null or
    their count. A walkthrough: ``launch=false`` wrote a config with no sites, ``[]`` or a name twice (exit 0),
    refused only inside the ServerApp, after ``flwr run`` on the server host."""
    try:
        sites = OmegaConf.select(fed, "partition.sites", default=None) if isinstance(fed, DictConfig) \
            else (fed.get("partition") or {}).get("sites")
    except Exception:  # noqa: BLE001 - ``???`` read strictly
        sites = None
    names = [str(s) for s in sites] if isinstance(sites, (list, tuple, ListConfig)) else []
    if not names or len(set(names)) != len(names) or any(not n.strip() for n in names):
        given = " is not set" if sites is None else f"={list(sites) if names else sites}"
        raise FederationError(f"federation.partition.sites{given}: name each site once, "
                              f"as its node config's site=\"<name>\" says, e.g. "
                              f"'federation.partition.sites=[hospital_a,hospital_b]'")
    num = fed.get("num_clients")
    if num is not None and num != len(names):
        raise FederationError(f"federation.num_clients={num} but federation.partition.sites names {len(names)} "
                              f"sites: set federation.num_clients=null")


def _check_pool_use(strategy: Any, frac: float) -> None:
    """A review: data sharing (mode part/all) without a shared pool ran as plain FedAvg without a word, and a pool
    under a strategy that never sends it took its share of the clients' training data silently."""
    from federation.core.strategies import strategy_class

    target = str(strategy.get("_target_", ""))
    try:
        sharing = bool(target) and strategy_class(target).moves_data
    except ValueError:
        return  # a target that names no strategy: building it says so
    mode = strategy.get("mode", "part") if sharing else None
    if sharing and mode != "none" and frac == 0.0:
        raise FederationError(f"federation.shared_fraction=0 with data sharing (mode={mode}): the server holds no "
                              "shared pool, so no client receives data and the run is plain FedAvg; give a fraction "
                              "in (0, 1) (federation/strategy=datashare sets 0.1)")
    if frac > 0.0 and not sharing:
        log.warning("federation.shared_fraction=%s carves a shared pool off the clients' training data that %s never "
                    "sends (only data sharing does): the clients train on %.0f%% less; set it to 0 unless this run "
                    "is meant to see the data a data-sharing run's clients see", frac,
                    target.rsplit(".", 1)[-1] or "the strategy", 100 * frac)


def check_matrix_metric(fed: Any, module: Any) -> None:
    """``federation.matrix_metric`` names a ``test/`` key ``module`` logs (its ``test_metric_keys()``), else one
    line listing them, before any round: a walkthrough's ``dice_tumor`` on liver-only sites trained every round
    and every matrix row, then wrote a table of dashes (the curves plot it too) and exited 0."""
    metric = fed.get("matrix_metric")
    keys = module.test_metric_keys() if callable(getattr(module, "test_metric_keys", None)) else None
    if not metric or not keys or f"test/{metric}" in keys:
        return
    raise FederationError(f"federation.matrix_metric={metric}: {type(module).__name__} logs no test/{metric}; "
                          f"it logs {', '.join(k.split('/', 1)[1] for k in keys)}")


def check_teacher_given(cfg: Any) -> None:
    """A federation of a module with a frozen teacher (``module=distillation``) needs the teacher's checkpoint: a
    federation trains no teacher first (a centralised distillation does), and without one every client distilled
    from a randomly initialised teacher without a word (a review)."""
    module = cfg.get("module")
    if module is not None and "teacher_ckpt" in module and OmegaConf.select(module, "teacher_ckpt") is None:
        raise FederationError("distill.teacher.ckpt=null: a federation of module=distillation distils from a trained "
                              "teacher and trains none first; give its checkpoint (distill.teacher.ckpt=<file>), or "
                              "run +exp=fed_kits_hlfd, whose fed_distill trains it by federation first")


def _known_params() -> set[str]:
    return {p for fn in PARTITIONERS.values() for p in inspect.signature(fn).parameters} - _DATA_ARGS


def names_its_clients(pcfg: Any) -> bool:
    """Whether the partitioner names its clients after the data's sites or groups (it takes ``groups`` or
    ``sites``), not ``0 .. num_clients-1``."""
    return bool({"groups", "sites"} & set(inspect.signature(get_method(str(pcfg["_target_"]))).parameters))


def is_remote_sites(partition: Any) -> bool:
    """Whether a ``federation.partition`` config is :func:`~federation.core.partition.remote_sites` (the server
    holds none of the sites' data): its ``_target_`` is resolved and compared with the function, not as text."""
    target = getattr(partition, "get", lambda *_: None)("_target_", None)
    if not target:
        return False
    try:
        return get_object(str(target)) is remote_sites
    except Exception:  # noqa: BLE001 - an unknown target is reported where the partition is built
        return False


def call_partitioner(pcfg: Any, labels: np.ndarray | None, groups: np.ndarray | None, remaining: np.ndarray,
                     num_clients: int | None, seed: int, by_volume: bool = False
                     ) -> tuple[list[str], list[np.ndarray]]:
    """Call ``federation.partition`` (a ``_target_`` config) with what its signature asks for: ``groups``
    (by site), ``labels`` (label skew), ``seed``, ``num_clients``. Returns (client ids, index arrays)."""
    plain = OmegaConf.to_container(pcfg, resolve=True) if isinstance(pcfg, DictConfig) else dict(pcfg)
    target = plain.pop("_target_")
    fn = get_method(target)
    name = target.rsplit(".", 1)[-1]
    params = inspect.signature(fn).parameters
    for key in [k for k in plain if k not in params]:
        if key in _known_params():
            log.warning("federation.partition.%s=%s ignored: it belongs to another partitioner, not %s",
                        key, plain[key], name)
            plain.pop(key)
        else:
            raise FederationError(f"federation.partition.{key}={plain[key]}: {name} takes "
                                  f"{sorted(set(params) - _DATA_ARGS)}")
    try:
        if "sites" in params:  # named remote sites: the ids are the names, the server holds no site data
            parts = fn(remaining, **plain)
            ids = [str(x) for x in plain.get("sites") or []]
            if num_clients not in (None, len(ids)):
                raise FederationError(f"federation.num_clients={num_clients} but federation.partition.sites names "
                                      f"{len(ids)} sites: set federation.num_clients=null")
            return ids, parts
        if "groups" in params:
            if groups is None:
                raise FederationError("federation.partition by_site needs a multi-site datamodule (data with "
                                      "per-sample groups, e.g. datamodules.multisite.MultiSiteDataModule)")
            parts = fn(groups=groups, indices=remaining, **plain)
            ids = [str(g) for g in np.unique(groups[remaining])]
            if num_clients not in (None, len(ids)):
                raise FederationError(f"federation.num_clients={num_clients} but the data has {len(ids)} sites "
                                      f"{ids}: set federation.num_clients=null")
            return ids, parts
        if num_clients is None:
            raise FederationError(f"federation.num_clients=null: the {name} partitioner needs a number of clients")
        if int(num_clients) > len(remaining):
            raise FederationError(f"federation.num_clients={num_clients} is more than the {len(remaining)} "
                                  + ("whole volumes (or image groups) left for clients (federation.partition_unit=case)" if by_volume
                                     else "training samples left for clients"))
        kw = dict(plain)
        if "seed" in params:
            kw.setdefault("seed", seed)
        kw["num_clients"] = int(num_clients)
        if "labels" in params:
            if labels is None:
                raise FederationError(f"federation.partition={name} needs per-sample labels, which this data lacks")
            parts = fn(labels=labels, indices=remaining, **kw)
        else:
            parts = fn(remaining, **kw)
    except ValueError as exc:  # the partitioner's own check on a parameter value
        counted = " (a sample here is a whole volume or image group: federation.partition_unit=case)" if by_volume else ""
        raise FederationError(f"federation.partition ({name}): {exc}{counted}") from exc
    return [str(i) for i in range(len(parts))], parts


def _partition_cases(pcfg: Any, labels: np.ndarray | None, cases: np.ndarray, remaining: np.ndarray,
                     num_clients: int | None, seed: int) -> tuple[list[str], list[np.ndarray]]:
    """The partitioner applied to whole cases (patients/volumes) instead of slices: each case of
    ``remaining`` is one unit, with its slices' most frequent label where the partitioner skews labels; each
    client gets every slice of its cases."""
    case_of = np.asarray(cases)[remaining]
    uniq, inverse = np.unique(case_of, return_inverse=True)
    case_labels = None
    if labels is not None:
        lab = np.asarray(labels)[remaining]
        case_labels = np.array([np.bincount(lab[inverse == i].astype(np.int64)).argmax() for i in range(len(uniq))])
    ids, case_parts = call_partitioner(pcfg, case_labels, None, np.arange(len(uniq), dtype=np.int64), num_clients,
                                       seed, by_volume=True)
    return ids, [np.sort(remaining[np.isin(inverse, part)]) for part in case_parts]


@dataclass
class ClientSplit:
    """Who holds what: the shared pool (paper 000), the client ids, their raw parts and their indices."""
    pool: SharedPool | None
    client_ids: list[str]
    parts: list[np.ndarray]
    indices: dict[str, ClientIndices]


def annotated_classes(fed: Any, client_ids: Sequence[str] | None, num_classes: int | None) -> dict[str, list[int]]:
    """``federation.partial_labels`` checked by :func:`federation.core.partial_labels.check_partial_spec`:
    ``{client id: annotated class ids}``; a bad key or class is one :class:`FederationError` line."""
    try:
        return check_partial_spec(fed.get("partial_labels"), client_ids, num_classes)
    except ValueError as exc:
        raise FederationError(str(exc)) from None


def split_clients(fed: Any, train: Any, test: Any, seed: int, num_classes: int | None = None) -> ClientSplit:
    """The one partition of a federation, as the server makes it and a Flower node re-derives it.

    Carve the shared pool (paper 000 §4.1 step 1; disjoint from every client) off the training set,
    partition the rest with ``federation.partition`` (by whole case where the data has cases, unless
    ``federation.partition_unit=sample``), carve each client's validation split (by case where
    the data has cases) and attach its own test cases (by site) and partial-label annotation.
    """
    labels, groups, cases = sample_labels(train), sample_groups(train), sample_cases(train)
    remaining = np.arange(len(train), dtype=np.int64)
    frac = float(fed.get("shared_fraction", 0.0) or 0.0)
    pool = None
    if frac > 0:
        pool, remaining = SharedPool.carve(remaining, frac, seed, labels=labels, cases=cases)
    by_group = names_its_clients(fed.partition)
    if cases is not None and not by_group and fed.get("partition_unit", "case") == "case":
        ids, parts = _partition_cases(fed.partition, labels, cases, remaining, fed.get("num_clients"), seed)
    else:
        ids, parts = call_partitioner(fed.partition, labels, groups, remaining, fed.get("num_clients"), seed)
    name = str(fed.partition.get("_target_", "?")).rsplit(".", 1)[-1]
    empty = [cid for cid, part in zip(ids, parts) if len(part) == 0]
    if empty and name != "remote_sites":  # remote sites hold their data themselves: empty here by design
        raise FederationError(f"federation.partition {name} leaves client(s) {', '.join(empty[:5])} without any "
                              f"data: give fewer clients or other partition settings")
    if cases is not None and len(parts) > 1:
        owners: dict[str, set[str]] = {}
        case_of = np.asarray(cases)
        for cid, part in zip(ids, parts):
            for case in np.unique(case_of[part]):
                owners.setdefault(case, set()).add(cid)
        split = sum(len(o) > 1 for o in owners.values())
        if split:  # slice-level partitioners: one patient's slices at several hospitals
            log.warning("federation.partition %s puts slices of %d of %d volumes at more than one client "
                        "(federation.partition_unit=sample); a hospital holds whole patients: use "
                        "federation.partition_unit=case", name, split, len(owners))
    test_groups = getattr(test, "groups", None)
    site_of_test = None if test_groups is None else np.asarray(test_groups)
    partial = annotated_classes(fed, [str(c) for c in ids], num_classes)
    unknown = unknown_client_key(fed.get("client_module") or {}, ids, "federation.client_module")
    if unknown:  # a walkthrough: a misspelt site's setting was ignored without a word
        raise FederationError(unknown)
    indices: dict[str, ClientIndices] = {}
    single = []  # clients whose only volume also gives their validation slices
    for cid, part in zip(ids, parts):
        tr, va = carve_val(part, float(fed.get("client_val_fraction", 0.2)), client_seed(seed, -1, cid, "val"), cases)
        if cases is not None and len(va) and len(np.unique(np.asarray(cases)[part])) == 1:
            single.append(cid)
        te = None
        if site_of_test is not None and cid in set(site_of_test.tolist()):
            te = np.flatnonzero(site_of_test == cid)
        indices[cid] = ClientIndices(tr, va, te, partial.get(str(cid)))
    if single:
        log.warning("%d client(s) (%s) hold a single volume, so their validation slices come from the volume they "
                    "train on: their val/* scores are optimistic; give fewer clients to have whole validation "
                    "volumes", len(single), ", ".join(single[:5]))
    return ClientSplit(pool, list(ids), list(parts), indices)
