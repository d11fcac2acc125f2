"""The run's loggers: :func:`build_loggers` builds ``cfg.logger`` (a W&B run keeps one id per run folder), and
:class:`ResumableCSVLogger` is a CSV logger that keeps history across ``resume``: Lightning's CSVLogger deletes
``metrics.csv`` when its folder exists (so a resumed run lost every epoch before the resume) and cannot widen the
header of a file whose columns it did not log itself in this process. What the interrupted run logged after its
last checkpoint is dropped on resume (:func:`forget_from`): those steps run again, and an audit found each of
them twice in ``metrics.csv``."""
from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from engine.artifacts import atomic_write_text
from engine.builders import instantiate_config
from engine.tracking import WANDB_RUN_ID, wandb_mode
from lightning_modules.atomic import atomic_output
from lightning_modules.errors import ConfigError


class KeepingExperimentWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` (its header seeds the known columns) instead of deleting it."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            self.metrics_keys = sorted(_read_log(self.metrics_file_path, header_only=True)[0])

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        return


class ResumableCSVLogger(CSVLogger):
    """:class:`~pytorch_lightning.loggers.CSVLogger` whose ``metrics.csv`` keeps the epochs of earlier runs
    in the same folder (``resume=true`` / ``resume=<run dir>``) and gains columns as new metrics appear."""

    @property
    @rank_zero_experiment
    def experiment(self) -> KeepingExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def _read_log(path: str, header_only: bool = False) -> tuple[list[str], list[dict[str, str]]]:
    """A ``metrics.csv``'s header and rows; one :class:`ConfigError` naming the file when it is no CSV text (an audit:
    a stray byte, or a field over csv's size limit, was a traceback on resume)."""
    try:
        with open(path, newline="") as fh:
            if header_only:
                return next(csv.reader(fh), []), []
            reader = csv.DictReader(fh)
            return reader.fieldnames or [], list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"{path} does not read as a CSV log ({err}); move it aside to "
                          f"resume with a new one") from None


def _before(row: dict[str, str], step: int) -> bool:
    try:
        return int(float(row.get("step") or "")) < step
    except (ValueError, OverflowError):  # a row without a step (none are written so; nan, inf: an audit) is kept
        return True


def forget_from(loggers: Iterable[Any], step: int) -> None:
    """Drop the rows at ``step`` and after from each resumable CSV log: the steps a resumed run (from a
    checkpoint at ``global_step == step``) logs again. The file is replaced atomically."""
    for logger in loggers:
        if not isinstance(logger, ResumableCSVLogger):
            continue
        path = logger.experiment.metrics_file_path
        if not os.path.isfile(path):
            continue
        header, rows = _read_log(path)
        kept = [r for r in rows if _before(r, step)]
        if len(kept) == len(rows):
            continue
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)


def is_main_run(cfg: DictConfig) -> bool:
    """Whether ``cfg`` writes into the command's own run dir (Hydra's), not a sub-run's (a distillation's
    teacher, a federated distillation's arms and stages); True outside a Hydra command (tests, notebooks)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        main = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None, throw_on_missing=False)
    except ValueError:  # no Hydra command
        return True
    return main is None or Path(str(cfg.paths.output_dir)).resolve() == Path(str(main)).resolve()


def wandb_run_id(output_dir: str | Path, given: Any = None) -> str:
    """The W&B run id of a run dir, created once and kept in ``wandb_id.txt`` so ``resume=true`` continues
    the same W&B run. Only global rank 0 creates it: ranks started by SLURM or torchrun build their loggers at
    once, and each wrote its own id (the last one written was not the one rank 0 logged to, so a resume started a
    new W&B run); a Lightning logger logs from rank 0 only, so another rank's id is never used."""
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    path = Path(output_dir) / "wandb_id.txt"
    if path.is_file():
        run_id = path.read_text(errors="replace").strip()
        if not WANDB_RUN_ID.fullmatch(run_id):
            raise ConfigError(f"{path} holds {run_id[:40]!r}, not a W&B run id (letters, digits, '-', '_'); "
                              f"delete the file to start a new W&B run")
        if given is not None and str(given) != run_id:
            raise ConfigError(f"logger.wandb.id={given} but this run dir logs to the W&B run {run_id} ({path}); "
                              f"leave logger.wandb.id out to continue it")
        return run_id
    # a review: +logger.wandb.id=<id> was replaced by a new id without a word
    run_id = str(given) if given is not None else uuid.uuid4().hex[:12]
    if getattr(rank_zero_only, "rank", 0) == 0:
        atomic_write_text(path, run_id + "\n")
    return run_id


def build_loggers(cfg: DictConfig, job_type: str | None = None, wandb: bool = True) -> list[Any]:
    """Loggers of ``cfg.logger``; a W&B logger gets the run dir's stable id (and ``resume='allow'``). ``wandb=False``
    leaves W&B loggers out: a fast_dev_run Trainer swaps its loggers for a dummy, so one built there opened no run
    but left ``wandb_id.txt`` and ``wandb_identity.json`` naming a run that never was (a review)."""
    loggers = []
    for name, lg in (cfg.get("logger") or {}).items():
        if lg is None or "_target_" not in lg or (not wandb and str(lg._target_).endswith("WandbLogger")):
            continue
        extra: dict[str, Any] = {}
        if lg._target_.endswith("WandbLogger"):
            from engine.wandb_tracking import with_identity

            lg = with_identity(cfg, lg)  # name, tags and config.run: exp, model, strategy, partition, seed...
            given = lg.get("id")
            given = given if given is None or is_main_run(cfg) else None  # a sub-run (a teacher, an arm): its own id
            extra = {"id": wandb_run_id(cfg.paths.output_dir, given), "resume": lg.get("resume") or "allow",
                     "mode": wandb_mode(lg.get("mode"))}
            if job_type:
                extra["job_type"] = job_type
        logger = instantiate_config(lg, f"logger.{name}", **extra)
        _drop_unset_anonymous(logger)
        loggers.append(logger)
    return loggers


def _drop_unset_anonymous(logger: Any) -> None:
    """Lightning's WandbLogger always hands ``wandb.init`` an ``anonymous`` argument (None unless asked), and
    wandb >= 0.23 (anonymous mode removed, wandb/wandb#10909) warns "The anonymous setting has no effect"
    on any value but its unset default; None meant "never" anyway, so leaving it out changes nothing."""
    init = getattr(logger, "_wandb_init", None)
    if type(logger).__name__ == "WandbLogger" and isinstance(init, dict) and init.get("anonymous", 0) is None:
        del init["anonymous"]
