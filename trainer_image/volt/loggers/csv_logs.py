"""CSVLogger: metrics.csv (one row per logged step) and hparams.yaml, no dependencies."""
from __future__ import annotations

import argparse
import csv
import logging
import os
from typing import Any, Dict, List, Optional, Union

from volt.loggers.base import (
    _VersionedDirLogger,
    _sanitize_hparams,
    add_prefix,
    metrics_to_scalars,
    params_to_dict,
    rank_zero_experiment,
    rank_zero_only,
)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"


class _CSVWriter:
    """Buffers metric rows and appends them to ``metrics.csv`` on ``save``.

    The header is the union of all keys seen so far, with ``step`` first; when
    a new key appears the file is rewritten once with the wider header.
    """

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_path = os.path.join(log_dir, METRICS_FILE)
        self.hparams: Dict[str, Any] = {}
        self._hparams_dirty = False  # hparams.yaml is rewritten only after log_hparams
        self._pending: List[Dict[str, Any]] = []
        self._columns: List[str] = []
        os.makedirs(log_dir, exist_ok=True)
        if os.path.isfile(self.metrics_path):
            with open(self.metrics_path, newline="") as f:
                self._columns = next(csv.reader(f), [])

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int]) -> None:
        row = {"step": step}
        row.update(metrics)
        self._pending.append(row)

    def log_hparams(self, params: Dict[str, Any]) -> None:
        self.hparams.update(params)
        self._hparams_dirty = True

    def save(self) -> None:
        # save() runs at every flush: re-dumping unchanged hparams there cost a YAML dump per flush.
        if self._hparams_dirty:
            self._save_hparams()
            self._hparams_dirty = False
        if not self._pending:
            return
        new_keys = [k for row in self._pending for k in row if k not in self._columns]
        if new_keys:
            self._rewrite_with_columns(list(dict.fromkeys(new_keys)))
        with open(self.metrics_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, restval="")
            writer.writerows(self._pending)
        self._pending = []

    def _rewrite_with_columns(self, new_keys: List[str]) -> None:
        old_rows: List[Dict[str, str]] = []
        if os.path.isfile(self.metrics_path):
            with open(self.metrics_path, newline="") as f:
                old_rows = list(csv.DictReader(f))
        columns = self._columns + new_keys
        if "step" in columns:  # step first, like Lightning's file
            columns = ["step"] + [c for c in columns if c != "step"]
        tmp = self.metrics_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(old_rows)
        os.replace(tmp, self.metrics_path)
        self._columns = columns

    def _save_hparams(self) -> None:
        import yaml

        tmp = os.path.join(self.log_dir, HPARAMS_FILE + ".tmp")
        with open(tmp, "w") as f:
            yaml.safe_dump(_sanitize_hparams(self.hparams), f, sort_keys=False)
        os.replace(tmp, os.path.join(self.log_dir, HPARAMS_FILE))


class CSVLogger(_VersionedDirLogger):
    """Log to ``<save_dir>/<name>/version_<N>/metrics.csv`` and ``hparams.yaml``.

    Rows are buffered and written every ``flush_logs_every_n_steps`` steps,
    on ``save()`` and at the end of the run.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: Union[str, "os.PathLike[str]"],
        name: Optional[str] = "lightning_logs",
        version: Optional[Union[int, str]] = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        if not isinstance(flush_logs_every_n_steps, int) or flush_logs_every_n_steps < 1:
            raise ValueError(
                f"CSVLogger(flush_logs_every_n_steps={flush_logs_every_n_steps!r}) must be a positive int"
            )
        if version is not None and not isinstance(version, (int, str)):
            raise TypeError(f"CSVLogger(version=...) must be an int, a str or None, got {type(version).__name__}")
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._prefix = prefix
        self._flush_every = flush_logs_every_n_steps
        self._experiment: Optional[_CSVWriter] = None
        self._next_flush_step = flush_logs_every_n_steps - 1

    @property
    def log_dir(self) -> str:
        return self._version_dir()

    @property
    @rank_zero_experiment
    def experiment(self) -> _CSVWriter:
        """The writer (created on first use, on rank 0 only)."""
        if self._experiment is None:
            self._experiment = _CSVWriter(self.log_dir)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: Union[Dict[str, Any], argparse.Namespace, None] = None, *args: Any, **kwargs: Any) -> None:
        self.experiment.log_hparams(params_to_dict(params))
        self.experiment.save()

    @rank_zero_only
    def log_metrics(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        metrics = add_prefix(metrics_to_scalars(metrics), self._prefix, self.LOGGER_JOIN_CHAR)
        if step is None:
            step = len(self.experiment._pending)
        self.experiment.log_metrics(metrics, step)
        # Flush once at least `flush_logs_every_n_steps` steps passed, whatever
        # steps the trainer logs at (log_every_n_steps need not divide it).
        if step >= self._next_flush_step:
            self.save()
            self._next_flush_step = step + self._flush_every

    @rank_zero_only
    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is None:  # nothing was logged: create no directory
            return
        self.save()
