"""CometLogger: parameters, metrics and the model graph in a Comet experiment.

Needs ``comet-ml``, which volt does not depend on: the library is imported
when a logger is created, so ``import volt.loggers`` works without it.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from typing import TYPE_CHECKING, Any, Dict, Literal, Mapping, Optional, Union

import torch
from torch import nn

from volt.loggers.base import Logger, params_to_dict, rank_zero_experiment, rank_zero_only
from volt.loggers.artifacts import version_tuple

if TYPE_CHECKING:  # pragma: no cover
    from comet_ml import ExistingExperiment, Experiment, OfflineExperiment

    CometExperiment = Union[Experiment, ExistingExperiment, OfflineExperiment]

log = logging.getLogger(__name__)

FRAMEWORK_NAME = "volt"
MIN_COMET_VERSION = "3.44.4"  # comet_ml.start() and the framework logging calls
# Pre-2.5 Lightning argument names: (old, new).
_RENAMED_KWARGS = (("experiment_name", "name"), ("save_dir", "offline_directory"))


def comet_available() -> bool:
    return importlib.util.find_spec("comet_ml") is not None


class CometLogger(Logger):
    """Log to Comet through ``comet_ml.start``.

    ``online=False`` keeps the experiment offline: an archive in
    ``offline_directory`` (written when the experiment ends, at the latest at
    process exit) for ``comet upload``. The experiment is created with the
    logger on global rank 0 only; other ranks get a DummyExperiment. Extra
    keyword arguments (``name``, ``offline_directory``, ``log_code``, ``tags``
    ...) go to ``comet_ml.ExperimentConfig``. ``finalize`` flushes but does not
    end the experiment, so it can be used after ``fit``.
    """

    def __init__(
        self,
        *,
        api_key: Optional[str] = None,
        workspace: Optional[str] = None,
        project: Optional[str] = None,
        experiment_key: Optional[str] = None,
        mode: Optional[Literal["get_or_create", "get", "create"]] = None,
        online: Optional[bool] = None,
        prefix: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        if not comet_available():
            raise ModuleNotFoundError(
                "CometLogger needs the `comet-ml` package, which is not installed: `pip install comet-ml`",
                name="comet_ml",
            )
        for old, new in _RENAMED_KWARGS:
            if old in kwargs:
                value = kwargs.pop(old)
                log.warning("CometLogger(%s=...) is deprecated: use %s=...", old, new)
                kwargs.setdefault(new, value)
        if "project_name" in kwargs:
            log.warning("CometLogger(project_name=...) is deprecated: use project=...")
            value = kwargs.pop("project_name")
            project = value if project is None else project
        if "offline" in kwargs:
            log.warning("CometLogger(offline=...) is deprecated: use online=...")
            value = kwargs.pop("offline")
            online = (not value) if online is None else online

        self._api_key = api_key
        self._workspace = workspace
        self._project_name = project
        self._experiment_key = experiment_key
        self._mode = mode
        self._online = online
        self._prefix = prefix
        self._kwargs = kwargs
        self._experiment: Optional["CometExperiment"] = None

        # comet_ml patches ML libraries it finds at import unless told not to; volt logs explicitly.
        os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
        import comet_ml

        if version_tuple(comet_ml.__version__) < version_tuple(MIN_COMET_VERSION):
            raise ImportError(
                f"CometLogger needs comet-ml>={MIN_COMET_VERSION}, found {comet_ml.__version__}: "
                f"`pip install -U 'comet-ml>={MIN_COMET_VERSION}'`"
            )
        self._comet_config = comet_ml.ExperimentConfig(**kwargs)
        if rank_zero_only.rank == 0:  # the other ranks never create one
            self._create_experiment()

    def _create_experiment(self) -> None:
        import comet_ml

        experiment = comet_ml.start(
            api_key=self._api_key,
            workspace=self._workspace,
            project=self._project_name,
            experiment_key=self._experiment_key,
            mode=self._mode,
            online=self._online,
            experiment_config=self._comet_config,
        )
        if experiment is None:
            raise comet_ml.exceptions.ExperimentNotFound("comet_ml.start() returned no experiment")
        self._experiment = experiment
        self._experiment_key = experiment.get_key()
        self._project_name = experiment.project_name
        experiment.log_other("Created from", FRAMEWORK_NAME)

    @property
    @rank_zero_experiment
    def experiment(self) -> "CometExperiment":
        """The Comet experiment (rank 0 only); re-created from its key after unpickling."""
        if self._experiment is None:
            self._create_experiment()
        assert self._experiment is not None
        return self._experiment

    def __getstate__(self) -> Dict[str, Any]:
        # The experiment holds threads and connections: keep its key so a copy can continue it.
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_experiment_key"] = self._experiment.get_key()
        state["_experiment"] = None
        return state

    @property
    def save_dir(self) -> Optional[str]:
        """The offline directory, if one was configured."""
        return self._comet_config.offline_directory

    @property
    def name(self) -> Optional[str]:
        """The project name."""
        return self._project_name

    @property
    def version(self) -> Optional[str]:
        """The experiment key, once the experiment exists (never creates one)."""
        return self._experiment.get_key() if self._experiment is not None else None

    # --- logging ------------------------------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: Union[Dict[str, Any], argparse.Namespace, None]) -> None:
        self.experiment.__internal_api__log_parameters__(
            parameters=params_to_dict(params), framework=FRAMEWORK_NAME, flatten_nested=True, source="manual"
        )

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        values = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        # Comet keeps the epoch as the metrics' context, not as a metric of its own.
        epoch = values.pop("epoch", None)
        if isinstance(epoch, torch.Tensor):
            epoch = epoch.item()
        if isinstance(epoch, float) and epoch.is_integer():
            epoch = int(epoch)  # volt's loggers get floats; Comet's epoch is an int, as Lightning sends it
        self.experiment.__internal_api__log_metrics__(
            values, step=step, epoch=epoch, prefix=self._prefix, framework=FRAMEWORK_NAME
        )

    def log_graph(self, model: nn.Module, input_array: Optional[torch.Tensor] = None) -> None:
        """Record the model's structure (its repr); ``input_array`` is not needed."""
        if self._experiment is not None:
            self._experiment.__internal_api__set_model_graph__(graph=model, framework=FRAMEWORK_NAME)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is None:  # not rank 0, or nothing was created
            return
        self._experiment.flush()
