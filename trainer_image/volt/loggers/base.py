"""The Logger base class. Only global rank 0 writes logs, through ``rank_zero_only``
(``volt.utilities.rank_zero``; re-exported here, where volt had it before)."""
from __future__ import annotations

import argparse
import functools
import os
from abc import ABC, abstractmethod
from typing import Any, Callable, Dict, Mapping, MutableMapping, Optional, Union

import torch

from volt.utilities.rank_zero import rank_zero_only


class DummyExperiment:
    """What ``logger.experiment`` is off rank 0: every method call does nothing.

    User code such as ``self.logger.experiment.add_image(...)`` then runs
    unchanged on every rank, and only rank 0 writes.
    """

    def _noop(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Callable[..., None]:
        return self._noop

    def __getitem__(self, idx: Any) -> "DummyExperiment":
        return self  # loggers whose experiment is a list

    def __bool__(self) -> bool:
        return False


def rank_zero_experiment(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """For ``experiment`` properties: the real object on rank 0, a DummyExperiment elsewhere."""

    @functools.wraps(fn)
    def experiment(self: Any) -> Any:
        if rank_zero_only.rank > 0:
            return DummyExperiment()
        return fn(self)

    return experiment


def flatten_dict(params: Mapping[str, Any], separator: str = "/", prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``; Namespaces count as dicts."""
    out: Dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{separator}{key}" if prefix else str(key)
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        if isinstance(value, Mapping):
            out.update(flatten_dict(value, separator, name))
        else:
            out[name] = value
    return out


def params_to_dict(params: Union[Mapping[str, Any], argparse.Namespace, None]) -> Dict[str, Any]:
    """Hyper-parameters as a plain dict (accepts a dict, Namespace, AttributeDict or None)."""
    if params is None:
        return {}
    if isinstance(params, argparse.Namespace):
        return dict(vars(params))
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(f"hyper-parameters must be a dict or argparse.Namespace, got {type(params).__name__}")


def metrics_to_scalars(metrics: Mapping[str, Any]) -> Dict[str, float]:
    """Convert metric values (tensors, numbers) to Python numbers.

    Loggers receive metrics once per logging interval, so the one host sync per
    tensor here is at the cadence the user asked for, not per step.
    """
    out: Dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"metric {key!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
            value = value.item()
        out[key] = value
    return out


def add_prefix(metrics: Mapping[str, Any], prefix: str, separator: str = "-") -> Dict[str, Any]:
    if not prefix:
        return dict(metrics)
    return {f"{prefix}{separator}{k}": v for k, v in metrics.items()}


class Logger(ABC):
    """Base class for experiment loggers (Lightning's ``Logger`` interface).

    Subclasses implement ``name``, ``version``, ``log_metrics`` and
    ``log_hyperparams``; writing methods should be wrapped in ``rank_zero_only``.
    """

    @property
    @abstractmethod
    def name(self) -> Optional[str]:
        """Experiment name."""

    @property
    @abstractmethod
    def version(self) -> Optional[Union[int, str]]:
        """Experiment version (``version_N`` directories use the int)."""

    @property
    def root_dir(self) -> Optional[str]:
        """Parent directory of all versions of this experiment, if the logger writes files."""
        return None

    @property
    def log_dir(self) -> Optional[str]:
        """Directory of this version's files, if the logger writes files."""
        return None

    @property
    def save_dir(self) -> Optional[str]:
        """The ``save_dir`` the logger was created with."""
        return None

    @property
    def group_separator(self) -> str:
        return "/"

    @property
    def experiment(self) -> Any:
        """The backing writer object (e.g. a SummaryWriter); None for simple loggers."""
        return None

    @abstractmethod
    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        """Record ``metrics`` at ``step``."""

    @abstractmethod
    def log_hyperparams(self, params: Union[Dict[str, Any], argparse.Namespace], *args: Any, **kwargs: Any) -> None:
        """Record the run's hyper-parameters."""

    def log_graph(self, model: torch.nn.Module, input_array: Optional[torch.Tensor] = None) -> None:
        """Record the model graph (loggers that cannot ignore it)."""

    def save(self) -> None:
        """Flush buffered records to storage."""

    def finalize(self, status: str) -> None:
        """Called once at the end of a run with ``"success"``, ``"failed"`` or ``"finished"``."""
        self.save()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Called by ModelCheckpoint after each checkpoint it writes."""

    def sync_version(self, broadcast: Callable[[Any], Any]) -> None:
        """Adopt global rank 0's version (``broadcast`` = ``trainer.strategy.broadcast``).

        Loggers that pick ``version_N`` by listing directories call this once,
        on every rank, before first use: otherwise a rank that looks after rank 0
        created ``version_N`` would pick ``N+1`` and report another ``log_dir``.
        """


class DummyLogger(Logger):
    """A logger that records nothing (what ``fast_dev_run`` and the tuner use)."""

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


class _VersionedDirLogger(Logger):
    """Shared by the file loggers: ``<save_dir>/<name>/version_<N>``, N auto-incremented."""

    _name: str
    _save_dir: str
    _version: Optional[Union[int, str]]

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> Union[int, str]:
        if self._version is None:
            self._version = _next_version(self.root_dir)
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    def _version_dir(self) -> str:
        """``root_dir/version_N``, or ``root_dir/<version>`` for a string version."""
        version = self.version
        return os.path.join(self.root_dir, version if isinstance(version, str) else f"version_{version}")

    def sync_version(self, broadcast: Callable[[Any], Any]) -> None:
        self._version = broadcast(self.version)


def _next_version(root_dir: str) -> int:
    """The first unused ``version_N`` number under ``root_dir``."""
    if not os.path.isdir(root_dir):
        return 0
    versions = []
    for entry in os.scandir(root_dir):
        if entry.is_dir() and entry.name.startswith("version_"):
            suffix = entry.name[len("version_"):]
            if suffix.isdigit():
                versions.append(int(suffix))
    return max(versions) + 1 if versions else 0


def _sanitize_hparams(params: MutableMapping[str, Any]) -> Dict[str, Any]:
    """Values YAML can store; anything else becomes its repr (never a crash at fit start)."""
    import yaml

    out: Dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, argparse.Namespace):
            value = vars(value)
        if isinstance(value, Mapping):
            out[str(key)] = _sanitize_hparams(dict(value))
            continue
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, tuple):
            value = list(value)
        try:
            yaml.safe_dump(value)
            out[str(key)] = value
        except yaml.YAMLError:
            out[str(key)] = repr(value)
    return out
