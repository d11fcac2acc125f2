"""A CSV logger that keeps history across ``resume``: Lightning's CSVLogger deletes ``metrics.csv`` when its
folder exists (so a resumed run lost every epoch before the resume) and cannot widen the header of a file
whose columns it did not log itself in this process. What the interrupted run logged after its last
checkpoint is dropped on resume (:func:`forget_from`): those steps run again, and an audit found each of
them twice in ``metrics.csv``."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterable

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from lightning_modules.atomic import temp_beside


class KeepingExperimentWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` (its header seeds the known columns) instead of deleting it."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as fh:
                self.metrics_keys = sorted(next(csv.reader(fh), []))

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


def _before(row: dict[str, str], step: int) -> bool:
    try:
        return int(float(row.get("step") or "")) < step
    except ValueError:  # a row without a step (none are written so) is kept
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
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            header, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if _before(r, step)]
        if len(kept) == len(rows):
            continue
        fd, tmp = temp_beside(Path(path))
        with os.fdopen(fd, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)
