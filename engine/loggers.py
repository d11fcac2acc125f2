"""A CSV logger that keeps history across ``resume``: Lightning's CSVLogger deletes ``metrics.csv`` when its
folder exists (so a resumed run lost every epoch before the resume) and cannot widen the header of a file
whose columns it did not log itself in this process."""
from __future__ import annotations

import csv
import os

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


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
