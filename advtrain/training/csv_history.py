"""A CSV logger whose history survives a resume in the same run dir.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its folder is not empty
("Previous log files in this directory will be deleted"), so a run resumed in its own dir
(``advtrain-train ckpt_path=<run>/checkpoints/last.ckpt``) would lose the epochs before
the interruption. This logger appends to the file instead: the rows written so far are
kept, the header grows when new columns appear.
"""

from __future__ import annotations

import csv

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """``ExperimentWriter`` that keeps an existing ``metrics.csv`` and its columns."""

    def _check_log_dir_exists(self) -> None:
        # called by the parent's __init__ in place of the check that deletes the file
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(next(csv.reader(file), []))


class HistoryCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` (same arguments) that appends to an
    existing ``metrics.csv`` (one history for a resumed run)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        """The writer (rank 0): created on first use, appending to the file it finds."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
