"""Checks of an Optuna search (``hparams_search=``, Hydra's Optuna sweeper) before its sweeper starts, and the
one fix its storage needs here; :mod:`experiments.hydra_checks` calls them when a sweep starts."""
from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, ListConfig

from callbacks.metric_goal import goal
from engine.objective import objective_key, test_objective_line

log = logging.getLogger(__name__)


OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
OPTUNA_DIRECTIONS = ("minimize", "maximize")


def optuna_sweep(config: DictConfig) -> bool:
    sweeper = config.get("hydra", {}).get("sweeper") or {}
    return str(sweeper.get("_target_", "")) == OPTUNA_SWEEPER


def sweep_config_line(config: DictConfig) -> str | None:
    """Why a sweep cannot start, before its sweeper runs a trial: an objective that is a test metric, an Optuna
    direction Optuna refuses (its ValueError was a traceback after the sweeper had started); ``None`` if none."""
    refused = test_objective_line(config)
    if refused is not None or not optuna_sweep(config):
        return refused
    direction = config.hydra.sweeper.get("direction")
    values = list(direction) if isinstance(direction, (list, tuple, ListConfig)) else [direction]
    names = [getattr(v, "name", v) for v in values]  # hydra_optuna_sweeper's Direction enum, or its name
    if not names or any(n not in OPTUNA_DIRECTIONS for n in names):
        shown = f"[{','.join(map(str, names))}]" if isinstance(direction, (list, tuple, ListConfig)) else direction
        return (f"hydra.sweeper.direction={shown} is not an Optuna direction: use "
                f"{' or '.join(OPTUNA_DIRECTIONS)} (a list of them for several objectives)")
    if len(names) == 1:  # a review: optimized_metric=val/loss_best with the shipped maximize was taken silently
        key = objective_key(config)
        wanted = "minimize" if goal(key) == "min" else "maximize"
        if names[0] != wanted:
            log.warning("hydra.sweeper.direction=%s but optimized_metric=%s improves the other way (%s, by its "
                        "name): the search will select the worst trials; set hydra.sweeper.direction=%s unless "
                        "the name misleads", names[0], key, goal(key), wanted)
    return None


def commit_optuna_alembic_stamp() -> None:
    """Let Optuna 2.x keep a study in a database (``hydra.sweeper.storage=sqlite:///...``) under SQLAlchemy 2.

    hydra-optuna-sweeper 1.x pins ``optuna<3``; the ``dev`` extra's Flower 1.42 needs ``sqlalchemy>=2``. Optuna
    2.x stamps a new storage's schema revision (alembic) on a connection it never commits, which SQLAlchemy 1.x
    autocommitted; under 2.x the stamp was rolled back and every storage failed with an AssertionError in
    ``get_current_version`` (walkthrough). The stamp is made in a transaction that commits, as Optuna 3.1 does
    (optuna/optuna#4304). Optuna 3 and later, and Optuna 2 under SQLAlchemy 1.x, are left as they are."""
    try:
        import alembic.migration
        import optuna
        import sqlalchemy
        from optuna.storages._rdb import storage as rdb
    except ImportError:
        return
    manager = getattr(rdb, "_VersionManager", None)
    if (not optuna.__version__.startswith("2.") or sqlalchemy.__version__.split(".")[0] in ("0", "1")
            or manager is None or not hasattr(manager, "_set_alembic_revision")):
        return

    def _set_alembic_revision(self: Any, revision: str) -> None:
        script = self._create_alembic_script()
        with self.engine.begin() as connection:  # committed when the block ends
            alembic.migration.MigrationContext.configure(connection).stamp(script, revision)

    manager._set_alembic_revision = _set_alembic_revision
