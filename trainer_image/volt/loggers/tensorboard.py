"""TensorBoardLogger: event files via torch.utils.tensorboard (needs the tensorboard package)."""
from __future__ import annotations

import argparse
import os
import warnings
from typing import Any, Dict, Optional, Union

import torch

from volt.loggers.base import (
    _VersionedDirLogger,
    _sanitize_hparams,
    add_prefix,
    flatten_dict,
    metrics_to_scalars,
    params_to_dict,
    rank_zero_experiment,
    rank_zero_only,
)

HPARAMS_FILE = "hparams.yaml"


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLogger(_VersionedDirLogger):
    """Log to TensorBoard event files in ``<save_dir>/<name>/version_<N>[/<sub_dir>]``.

    ``default_hp_metric`` registers an ``hp_metric`` scalar (-1 until the user
    logs one) so TensorBoard's HPARAMS tab shows the run.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        save_dir: Union[str, "os.PathLike[str]"],
        name: Optional[str] = "lightning_logs",
        version: Optional[Union[int, str]] = None,
        log_graph: bool = False,
        default_hp_metric: bool = True,
        prefix: str = "",
        sub_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        **kwargs: Any,
    ) -> None:
        if not tensorboard_available():
            raise ImportError(
                "TensorBoardLogger needs the `tensorboard` package, which is not installed: "
                "`pip install tensorboard`, or use volt.loggers.CSVLogger"
            )
        if version is not None and not isinstance(version, (int, str)):
            raise TypeError(
                f"TensorBoardLogger(version=...) must be an int, a str or None, got {type(version).__name__}"
            )
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._kwargs = kwargs
        self._experiment: Any = None
        self._hparams: Dict[str, Any] = {}

    @property
    def log_dir(self) -> str:
        log_dir = self._version_dir()
        if self._sub_dir:
            log_dir = os.path.join(log_dir, self._sub_dir)
        return os.path.expandvars(os.path.expanduser(log_dir))

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``torch.utils.tensorboard.SummaryWriter`` (rank 0 only)."""
        if self._experiment is None:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(self.log_dir, exist_ok=True)
            self._experiment = SummaryWriter(log_dir=self.log_dir, **self._kwargs)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        metrics = add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        scalars = metrics_to_scalars({k: v for k, v in metrics.items() if not isinstance(v, dict)})
        for key, value in scalars.items():
            self.experiment.add_scalar(key, value, step)
        for key, value in metrics.items():
            if isinstance(value, dict):
                self.experiment.add_scalars(key, metrics_to_scalars(value), step)

    @rank_zero_only
    def log_hyperparams(
        self,
        params: Union[Dict[str, Any], argparse.Namespace, None] = None,
        metrics: Optional[Dict[str, Any]] = None,
    ) -> None:
        from torch.utils.tensorboard.summary import hparams

        params = params_to_dict(params)
        self._hparams.update(params)
        self._save_hparams_file()
        if metrics is None:
            if not self._default_hp_metric:
                return
            metrics = {"hp_metric": -1}
        metrics = metrics_to_scalars(metrics)
        self.log_metrics(metrics, 0)
        flat = {k: _tb_value(v) for k, v in flatten_dict(params).items()}
        exp, ssi, sei = hparams(flat, metrics)
        writer = self.experiment._get_file_writer()
        writer.add_summary(exp)
        writer.add_summary(ssi)
        writer.add_summary(sei)

    @rank_zero_only
    def log_graph(self, model: torch.nn.Module, input_array: Optional[torch.Tensor] = None) -> None:
        if not self._log_graph:
            return
        if input_array is None:
            input_array = getattr(model, "example_input_array", None)
        if input_array is None:
            # Called at fit start: a missing example must not stop training (as in Lightning).
            warnings.warn(
                "TensorBoardLogger(log_graph=True) could not log the graph: set `model.example_input_array` "
                "or pass `input_array` to log_graph"
            )
            return
        from volt.utilities import move_data_to_device

        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.experiment.add_graph(model, move_data_to_device(input_array, device))

    @rank_zero_only
    def save(self) -> None:
        if self._experiment is not None:
            self._experiment.flush()
            self._save_hparams_file()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
            self._experiment = None

    def _save_hparams_file(self) -> None:
        if not self._hparams:
            return
        import yaml

        os.makedirs(self.log_dir, exist_ok=True)
        path = os.path.join(self.log_dir, HPARAMS_FILE)
        with open(path + ".tmp", "w") as f:
            yaml.safe_dump(_sanitize_hparams(dict(self._hparams)), f, sort_keys=False)
        os.replace(path + ".tmp", path)

    def __getstate__(self) -> Dict[str, Any]:
        # A SummaryWriter holds threads and files; it is re-created after unpickling.
        state = self.__dict__.copy()
        state["_experiment"] = None
        return state


def _tb_value(value: Any) -> Any:
    """TensorBoard's hparams accept numbers, strings, bools and tensors; str() the rest."""
    if isinstance(value, (int, float, str, bool, torch.Tensor)):
        return value
    return str(value)
