"""Type and range checks of the scalar settings every run reads (seed, batch size, epochs, batch limits,
rounds, width, image size, learning rate, the KD losses' weights), before anything is built: a value of the
wrong type otherwise fails deep inside Lightning, the DataLoader or ``seed_everything`` with a traceback
(``trainer.max_epochs=abc`` trained up to the fit loop and ended in a bare ``AssertionError``), where every
other bad input is one line naming the key.

Only what the project's own configs set is checked, and ``null`` / an absent key always passes.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_modules.errors import ConfigError
from lightning_modules.kinds import is_number, is_whole

__all__ = ["SCALARS", "check_scalars"]

#: key -> (kind, lowest allowed value); kinds: ``int``, ``float`` (>= the value), ``pos`` (> the value),
#: ``share`` (a count >= 1 or a fraction in (0, 1]), ``limit`` (a batch count >= 0 or a fraction in [0, 1], as
#: Lightning's ``limit_*_batches`` take it)
SCALARS: dict[str, tuple[str, float]] = {
    "seed": ("int", 0),
    "data.batch_size": ("int", 1),
    "data.num_workers": ("int", 0),
    "trainer.max_epochs": ("int", -1),
    "trainer.min_epochs": ("int", 0),
    "trainer.log_every_n_steps": ("int", 1),
    "trainer.accumulate_grad_batches": ("int", 1),
    "trainer.check_val_every_n_epoch": ("int", 1),
    "trainer.num_sanity_val_steps": ("int", -1),
    "trainer.limit_train_batches": ("limit", 0),
    "trainer.limit_val_batches": ("limit", 0),
    "trainer.limit_test_batches": ("limit", 0),
    "trainer.gradient_clip_val": ("float", 0),
    "federation.rounds": ("int", 1),
    "federation.local_epochs": ("int", 1),
    "federation.num_clients": ("int", 1),
    "federation.clients_per_round": ("share", 0),  # a count, or a fraction of num_clients
    "federation.strategy.mu": ("float", 0),  # ranges beyond the type: the strategies' own constructors
    "federation.strategy.eta": ("float", 0),
    "federation.strategy.tau": ("float", 0),
    "federation.strategy.beta1": ("float", 0),
    "federation.strategy.beta2": ("float", 0),
    "model.width": ("int", 1),  # D-Net / UNet3+ / UNet++ base filters
    "data.image_size": ("int", 1),
    "module.optimizer.lr": ("pos", 0),
}

#: the largest seed ``seed_everything`` takes (NumPy's 32-bit seeds)
SEED_MAX = 2**32 - 1

#: numeric arguments of the KD losses (``distill.loss``): weights and beta / lambda >= 0, temperature and
#: the attention power p > 0 (``distill.loss.beta=abc`` failed at the first training step with a torch
#: TypeError naming no key)
KD_NUMBERS: dict[str, str] = {"beta": "float", "lam": "float", "weight": "float", "temperature": "pos", "p": "pos"}


def _problem(kind: str, low: float, value: Any) -> str | None:
    """Why ``value`` is not a ``kind`` >= ``low``, or None when it is."""
    is_int, is_num = is_whole(value), is_number(value)
    if kind == "int":
        return None if is_int and value >= low else f"must be an integer >= {int(low)}"
    if kind == "float":
        return None if is_num and value >= low else f"must be a number >= {low:g}"
    if kind == "pos":
        return None if is_num and value > low else f"must be a number > {low:g}"
    if kind == "share":
        if is_int and value >= 1 or isinstance(value, float) and 0.0 < value <= 1.0:
            return None
        return "must be a client count >= 1 or a fraction of federation.num_clients in (0, 1]"
    if is_int and value >= 0 or isinstance(value, float) and 0.0 <= value <= 1.0:
        return None
    return "must be a batch count >= 0 or a fraction in [0, 1]"


def check_scalars(cfg: DictConfig) -> None:
    """One :class:`ConfigError` line naming the first key of :data:`SCALARS` whose value is of the wrong
    type or out of range."""
    seed = OmegaConf.select(cfg, "seed", default=None, throw_on_resolution_failure=False)
    if "seed" in cfg and (seed is None or is_whole(seed) and seed > SEED_MAX):
        # a review: seed=null was a TypeError in a datamodule, 2**40 a ValueError in seed_everything
        raise ConfigError(f"seed={seed!r} must be an integer in [0, {SEED_MAX}] (every run is seeded)")
    for key, (kind, low) in SCALARS.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if value is None:
            continue
        why = _problem(kind, low, value)
        if why is not None:
            raise ConfigError(f"{key}={value!r} {why}")
    check_nodes(cfg)
    loss = OmegaConf.select(cfg, "distill.loss", default=None, throw_on_resolution_failure=False)
    if isinstance(loss, DictConfig):
        for name in loss:
            kind = KD_NUMBERS.get(str(name), "float" if str(name).endswith("_weight") else None)
            value = OmegaConf.select(loss, str(name), default=None, throw_on_resolution_failure=False)
            why = None if kind is None or value is None else _problem(kind, 0, value)
            if why is not None:
                raise ConfigError(f"distill.loss.{name}={value!r} {why}")


#: module settings that are configs a class is built from (``_target_`` and its arguments), never a bare value
NODES = {"module.optimizer": "{_target_: torch.optim.SGD, _partial_: true, lr: 0.01, momentum: 0.9}",
         "module.scheduler": "{_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 10}",
         "module.loss": "{_target_: lightning_modules.losses.hybrid.HybridCEDiceLoss}"}


def check_nodes(cfg: DictConfig) -> None:
    """A bare value where a config is built (``module.optimizer=sgd``) is one line (a walkthrough: ``TypeError:
    'str' object is not callable`` once the data and net were built); ``module.scheduler=null`` is no scheduler."""
    for key, example in NODES.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if value is not None and not isinstance(value, DictConfig):
            raise ConfigError(f"{key}={value!r} is a value, not a config to build: replace the config, e.g. "
                              f"'~{key}' '+{key}={example}'")
