"""The client runner: "datamodule for my partition + LightningModule + Trainer, fit, evaluate", the same
run wrapper as a centralised run (:func:`engine.fit.fit_and_evaluate`).

:func:`run_client` is what every transport (in-process, Ray, Flower) calls once per sampled client and
round. It builds the client's
:class:`~datamodules.subset.SubsetDataModule` (local indices + shared indices from the server message),
the LightningModule from ``cfg.module`` and a Trainer from ``cfg.trainer`` with the experiments'
builders, loads the global weights (``strategy.client_receive`` keeps FedBN's local BN entries, read from
the :class:`~federation.store.ClientStore`, or in its first round the ``init_weights=`` file's entries that the
message carries: :mod:`federation.init_local`), adds FedProx's proximal term when the server config asks
for it, fits for ``federation.local_epochs`` (optionally early-stopped on its validation split, paper
000 step 5 "until the model converges"), validates (the accuracy the data-sharing strategy reads, step
5), saves its local-only state (and, for the evaluation matrix, its best local checkpoint by its own
validation metric: paper 003's FL_local) to the store and returns ``strategy.make_update(...)``. Only weights,
a sample count and scalar metrics leave (checked against the model's state schema).

The exchanged state is ``module.net.state_dict()`` (the network, not metric buffers of the module). A
distillation module federates its student this way: ``net`` is the student, the frozen teacher is
``module.teacher`` (loaded at the client from ``module.teacher_ckpt``; ``federation.client_module.<client
id>`` overrides module keys for one client, e.g. the site's own FedBN teacher) and is never sent. State a
module keeps private between rounds (``private_state()`` / ``load_private_state()``: the KD loss's
adapters) stays in the client's store, never in the update.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from callbacks.best_weights import BestWeights
from callbacks.metric_goal import goal
from datamodules.subset import SubsetDataModule
from engine.builders import build_datamodule, build_module, build_trainer
from engine.fit import evaluate as _evaluate
from engine.fit import fit_and_evaluate
from federation.core.messages import ClientUpdate, ServerMessage
from federation.core.partial_labels import PartialLabels
from federation.core.sampling import client_seed
from federation.core.strategies import DataSharing, Strategy, proximal_loss_term, strategy_class
from federation.core.strategies.fedbn import NoBatchNorm
from federation.init_local import start_local
from federation.store import ClientStore
from federation.store_owner import FEDERATION_ID, claim_store, store_round
from lightning_modules.base import is_argument_error
from lightning_modules.errors import ConfigError

__all__ = ["ClientIndices", "run_client", "train_local", "client_datamodule", "client_module_cfg", "best_local_store",
           "build_strategy", "model_named", "get_base_datamodule", "register_base", "client_seed", "quiet_lightning",
           "evaluate", "eval_trainer"]

log = logging.getLogger("federation.runner")
_BASE_CACHE: dict[str, pl.LightningDataModule] = {}
_EVAL_TRAINERS: dict[str, pl.Trainer] = {}


@dataclass
class ClientIndices:
    """What the server's partition gives a client: indices only (into the base datamodule's sets)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None = None            # into base.test_dataset (a site's own test cases)
    annotated: list[int] | None = None        # partial labels: classes this client annotates
    extra: dict[str, Any] = field(default_factory=dict)


def quiet_lightning() -> None:
    """Silence Lightning's per-Trainer banners (one Trainer per client and round)."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def _data_key(data_cfg: Any) -> str:
    plain = OmegaConf.to_container(data_cfg, resolve=True) if isinstance(data_cfg, DictConfig) else data_cfg
    if isinstance(plain, dict):
        plain = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in plain.items()}
    return hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def register_base(data_cfg: Any, dm: pl.LightningDataModule) -> None:
    """Make a set-up base datamodule available to clients in this process (no rebuild)."""
    _BASE_CACHE[_data_key(data_cfg)] = dm


def get_base_datamodule(data_cfg: Any) -> pl.LightningDataModule:
    """The base datamodule for ``data_cfg``, built and set up once per process (Ray workers too)."""
    key = _data_key(data_cfg)
    if key not in _BASE_CACHE:
        dm = build_datamodule(data_cfg)
        dm.prepare_data()
        dm.setup("fit")
        _BASE_CACHE[key] = dm
    return _BASE_CACHE[key]


def model_named(cfg: Any, net: torch.nn.Module) -> str:
    """How a refusal names the run's model: its Hydra choice (``model=small_cnn``), else the net's class, with
    ``model.norm`` where the model has one (a walkthrough: FedBN's refusal of a net without BatchNorm named none).
    A federated distillation's stages build nets that are no Hydra choice: their class names them."""
    from hydra.core.hydra_config import HydraConfig

    from engine.wandb_tracking import model_options

    choice = HydraConfig.get().runtime.choices.get("model") if HydraConfig.initialized() else None
    if choice not in model_options(OmegaConf.select(cfg, "model._target_", default=None)):
        choice = None  # a stage's net (the federated teacher's) is not what model= chose (a review)
    name = f"model={choice}" if choice else f"the net {type(net).__name__}"
    norm = OmegaConf.select(cfg, "model.norm", default=None)
    return name if norm is None else f"{name} (model.norm={norm})"


def build_strategy(strategy_cfg: Any, net: torch.nn.Module | None = None, named: str | None = None,
                   **extra: Any) -> Strategy:
    """Instantiate ``federation.strategy``; ``model=net`` is passed to strategies that take it (FedBN)
    and each of ``extra`` (e.g. ``pool``, ``seed``) to those whose constructor names it. ``named``: how a refusal
    names the model (:func:`model_named`; the net's class when not given)."""
    plain = OmegaConf.to_container(strategy_cfg, resolve=True) if isinstance(strategy_cfg, DictConfig) \
        else dict(strategy_cfg)
    try:  # a Strategy class, nothing else (a trust review: a crafted config's subprocess.Popen was built here)
        cls = strategy_class(plain.pop("_target_", None))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    params = inspect.signature(cls.__init__).parameters
    if "model" in params and net is not None:
        plain.setdefault("model", net)
    for k, v in extra.items():
        if k in params and v is not None:
            plain.setdefault(k, v)
    if issubclass(cls, DataSharing) and plain.get("pool") is None and plain.get("n_shared") is None:
        plain["n_shared"] = 0  # client side: only client_keys/client_receive/make_update are used
    try:
        return cls(**plain)
    except NoBatchNorm as err:
        who = named or (f"the net {type(net).__name__}" if net is not None else "no model was given and it")
        raise ConfigError(f"federation.strategy ({cls.__name__}): {err}, but {who} has no BatchNorm layer") from err
    except (ValueError, TypeError) as err:  # a bad value (mu=-1, mode=bogus) or key: one line, not a traceback
        if isinstance(err, TypeError) and not is_argument_error(err):
            raise  # a TypeError from inside the constructor is a bug to see, not the user's value
        raise ConfigError(f"federation.strategy ({cls.__name__}): {err}") from err


def _fed(cfg: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(cfg, f"federation.{key}", default=default)


def _module_monitor(cfg: DictConfig) -> str:
    return str(OmegaConf.select(cfg, "module.monitor", default="val/loss") or "val/loss")


def eval_trainer(cfg: DictConfig, root_dir: str | None = None) -> pl.Trainer:
    """A quiet Trainer for validate/test passes (no logger, checkpoint or progress bar), built once per
    process and trainer config (a Trainer validates any number of modules)."""
    quiet_lightning()
    key = _data_key({"trainer": cfg.get("trainer"), "root": root_dir})
    if key not in _EVAL_TRAINERS:
        kw: dict[str, Any] = dict(enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
        if root_dir is not None:
            kw["default_root_dir"] = root_dir
        _EVAL_TRAINERS[key] = build_trainer(cfg, callbacks=[], logger=False, **kw)
    return _EVAL_TRAINERS[key]


def evaluate(trainer: pl.Trainer, module: pl.LightningModule, loader: Any, stage: str = "val",
             callbacks: Sequence[pl.Callback] = ()) -> dict[str, float]:
    """``{metric: value}`` of one validate/test pass over ``loader`` (keys keep their ``val/``/``test/``).
    ``callbacks``: attached to the shared trainer for this pass only (the final test's overlays)."""
    trainer.callbacks.extend(callbacks)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _evaluate(trainer, module, loader, stage)
    finally:
        for cb in callbacks:
            trainer.callbacks.remove(cb)


def client_datamodule(cfg: DictConfig, base: pl.LightningDataModule, indices: ClientIndices,
                       shared: Any, seed: int) -> SubsetDataModule:
    item_fn = val_fn = None
    if indices.annotated is not None:  # the site's own labels, for training and for its validation split
        item_fn, val_fn = (PartialLabels(indices.annotated, int(base.num_classes), int(_fed(cfg, "ignore_index", 255)),
                                         unannotated=str(_fed(cfg, "unannotated", "ignore")), for_validation=v)
                           for v in (False, True))
    # the site's loaders take data.num_workers (SubsetDataModule's default; each client's fit starts its workers
    # anew, so many small clients are faster with 0)
    return SubsetDataModule(base, indices.train, indices.val, shared_indices=shared,
                            test_indices=indices.test, batch_size=getattr(base, "batch_size", None),
                            seed=seed, train_item_fn=item_fn, val_item_fn=val_fn)


def train_local(cfg: DictConfig, datamodule: SubsetDataModule, init_state: Mapping[str, torch.Tensor] | None,
                epochs: int, seed: int, loss_terms: Mapping[str, Any] | None = None,
                early_stopping: Mapping[str, Any] | None = None, root_dir: str | None = None,
                module: pl.LightningModule | None = None, keep_best: bool = False
                ) -> tuple[pl.LightningModule, dict[str, float]]:
    """Fit ``module`` (default: a fresh one from ``cfg.module``), loaded with ``init_state`` when given, on
    ``datamodule`` for ``epochs`` epochs; returns the module and its validation metrics after training
    (empty when the datamodule has no validation split). Used by clients, FL_local fine-tuning,
    standalone and centralised baselines alike. ``keep_best``: validate every epoch and return the weights of
    the best one by ``module.monitor`` (:class:`callbacks.best_weights.BestWeights`; the matrix's baselines)."""
    quiet_lightning()
    if module is None:
        pl.seed_everything(seed, workers=True, verbose=False)
        module = build_module(cfg)
    if init_state is not None:
        module.net.load_state_dict(dict(init_state))
    for name, fn in (loss_terms or {}).items():
        module.add_loss_term(name, fn)
    has_val = datamodule.val_dataset is not None and len(datamodule.val_dataset) > 0
    callbacks: list[pl.Callback] = []
    kw: dict[str, Any] = dict(max_epochs=int(epochs), min_epochs=1, enable_progress_bar=False,
                              enable_checkpointing=False, enable_model_summary=False)
    if root_dir is not None:
        kw["default_root_dir"] = root_dir
    if early_stopping and early_stopping.get("enabled") and has_val:
        callbacks.append(client_early_stopping(early_stopping, _module_monitor(cfg)))
    if keep_best and has_val:
        callbacks.append(BestWeights(_module_monitor(cfg)))
    if callbacks:
        kw["check_val_every_n_epoch"] = 1
    else:
        kw["limit_val_batches"] = 0  # validate once after fit, below
    trainer = build_trainer(cfg, callbacks=callbacks, logger=False, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics, _ = fit_and_evaluate(trainer, module, datamodule, evaluate_on="val",
                                      evaluator=eval_trainer(cfg, root_dir))
    return module, metrics


def client_early_stopping(settings: Mapping[str, Any], default_monitor: str) -> pl.Callback:
    """``federation.early_stopping`` as Lightning's callback on the client's validation split (paper 000 step 5),
    its ``mode`` by default the monitor's way (:func:`callbacks.metric_goal.goal`: ``val/hd95`` is min)."""
    from pytorch_lightning.callbacks import EarlyStopping

    monitor = settings.get("monitor") or default_monitor
    return EarlyStopping(monitor=monitor, mode=settings.get("mode") or goal(monitor),
                         patience=int(settings.get("patience", 2)), min_delta=float(settings.get("min_delta", 0.0)))


def client_module_cfg(cfg: DictConfig, client_id: str) -> DictConfig:
    """``cfg`` with ``federation.client_module.<client_id>`` merged into ``cfg.module`` (a per-client module
    setting, e.g. the teacher weights a site distils from); ``cfg`` itself when there is none."""
    per = _fed(cfg, "client_module", None)
    over = per.get(client_id) if per else None
    if not over:
        return cfg
    bad = sorted(k for k in over if k in ("_target_", "net"))
    if bad:
        from federation.errors import FederationError

        raise FederationError(f"federation.client_module.{client_id} sets {bad}: a client may not change the "
                              f"module class or the federated net")
    out = cfg.copy()
    out.module = OmegaConf.merge(cfg.module, over)
    return out


def _keeps_best_local(cfg: DictConfig) -> bool:
    """The evaluation matrix's FL_local row reads each client's best local checkpoint (paper 003)."""
    return bool(_fed(cfg, "evaluation_matrix", False)) and \
        str(_fed(cfg, "matrix.fl_local", "best_local")) == "best_local"


def best_local_store(store: ClientStore) -> ClientStore:
    """Where the full best-local checkpoints live: beside the per-client state, not in it, because that
    small state file is read for every client every round and must not carry a whole model."""
    return ClientStore(store.root / "best_local")


def _save_if_best(store: ClientStore, client_id: str, rnd: int, state: Mapping[str, torch.Tensor],
                  reported: Mapping[str, float], monitor: str) -> None:
    """Keep ``state`` as the client's ``best_local`` when its own validation ``monitor`` improved."""
    key = monitor.split("/", 1)[-1]
    value = reported.get(key)
    if value is None or not math.isfinite(float(value)):  # NaN (e.g. AUC of a one-class split) never compares
        return
    best = store.load(client_id, "best_local_meta", default=None)
    lower = goal(monitor) == "min"
    if best is None or (value < best["value"] if lower else value > best["value"]):
        best_local_store(store).update(client_id, {"best_local": {"state": dict(state), "round": rnd,
                                                                  "value": float(value)}}, round=rnd)
        store.save(client_id, "best_local_meta", {"round": rnd, "value": float(value), "monitor": monitor})
    else:  # a stopped attempt at this round may have kept its weights as the best: they are not
        best_local_store(store).rollback(client_id, rnd)


def run_client(client_id: str, server_message: ServerMessage, cfg: DictConfig, indices: ClientIndices,
               store: ClientStore | str, base: pl.LightningDataModule | None = None) -> ClientUpdate:
    """One round of local training for ``client_id`` (see the module docstring)."""
    store = store if isinstance(store, ClientStore) else ClientStore(store)
    base = base if base is not None else get_base_datamodule(cfg.data)
    rnd = int(server_message.round)
    seed = client_seed(int(cfg.seed), rnd, client_id)
    config = dict(server_message.config)
    shared = config.get("shared_indices")
    dm = client_datamodule(cfg, base, indices, shared, seed)

    pl.seed_everything(seed, workers=True, verbose=False)
    module = build_module(client_module_cfg(cfg, client_id))  # the strategy needs the net (FedBN: BN keys)
    strategy = build_strategy(cfg.federation.strategy, module.net, model_named(cfg, module.net))
    claim_store(store, best_local_store(store), client_id, config.get(FEDERATION_ID))  # another run's: moved aside
    saved = store.load_all(client_id, round=rnd)  # one read: local-only state and history before this round
    stored = saved.get("local_state") or {}
    local_state = module.net.state_dict()
    if not stored:  # its first round: the local layers (FedBN's BN) start from init_weights=, sent by the server
        start_local(local_state, server_message.init_local, strategy.is_local, client_id)
    local_state.update({k: v for k, v in stored.items() if k in local_state})
    if saved.get("private_state") and hasattr(module, "load_private_state"):
        module.load_private_state(saved["private_state"])  # e.g. the KD adapters: stay at the client
    state = strategy.client_receive(local_state, server_message.weights)

    terms = {}
    mu = float(config.get("proximal_mu", 0.0) or 0.0)
    if mu > 0:
        terms["proximal"] = proximal_loss_term(dict(server_message.weights), mu, attr="net")
    es = _fed(cfg, "early_stopping", None)
    es = OmegaConf.to_container(es, resolve=True) if isinstance(es, DictConfig) else es
    module, metrics = train_local(cfg, dm, state, int(_fed(cfg, "local_epochs", 1)), seed, terms, es,
                                  root_dir=str(store.root), module=module)
    new_state = {k: v.detach().cpu() for k, v in module.net.state_dict().items()}
    bad = next((k for k, v in new_state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:  # before anything is stored: a diverged client leaves its state as the round found it
        raise FloatingPointError(f"client {client_id}: local training gave non-finite weights ({bad}) in round "
                                 f"{rnd + 1}; nothing of this round is kept")
    local_only = {k: v for k, v in new_state.items() if strategy.is_local(k)}
    reported = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("val/") and math.isfinite(v)}
    history = list(saved.get("history") or [])
    history.append({"round": rnd, "num_samples": len(dm.train_dataset), "num_shared": dm.num_shared, **reported})
    record = {"local_state": local_only, "history": history, "last_round": rnd}
    if config.get(FEDERATION_ID):
        record[FEDERATION_ID] = str(config[FEDERATION_ID])
    if hasattr(module, "private_state"):
        record["private_state"] = {k: v.detach().cpu() for k, v in module.private_state().items()}
    def write() -> None:
        store.update(client_id, record, round=rnd)  # replaces what a stopped attempt at this round wrote
        if _keeps_best_local(cfg):
            _save_if_best(store, client_id, rnd, new_state, reported, _module_monitor(cfg))

    store_round(store, best_local_store(store), client_id, rnd, write)
    return strategy.make_update(client_id, new_state, len(dm.train_dataset), reported)
