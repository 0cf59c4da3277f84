"""MLFlowLogger: metrics, hyper-parameters and checkpoints in an MLflow tracking store.

Needs ``mlflow`` or ``mlflow-skinny``, which volt does not depend on: the library
is imported when a logger is created, so ``import volt.loggers`` works without it.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Literal, Mapping, Optional, Union
from urllib.parse import unquote, urlparse

import torch

from volt.loggers.artifacts import checkpoint_settings, checkpoints_to_log, version_tuple
from volt.loggers.base import Logger, _sanitize_hparams, add_prefix, params_to_dict, rank_zero_experiment, rank_zero_only

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

LOCAL_FILE_URI_PREFIX = "file:"
# Lightning truncates parameter values to 250 characters; kept so both engines log the same values.
_PARAM_VALUE_LIMIT = 250
_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
_INVALID_METRIC_CHARS = re.compile(r"[^a-zA-Z0-9_/. -]+")
# Trainer statuses -> MLflow RunStatus names ("interrupted" is volt's KeyboardInterrupt status).
_RUN_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# ModelCheckpoint settings recorded next to each uploaded checkpoint (those the callback has).
def mlflow_available() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def _require_mlflow(synchronous: Optional[bool]) -> None:
    if not mlflow_available():
        raise ModuleNotFoundError(
            "MLFlowLogger needs the `mlflow` package, which is not installed: "
            "`pip install mlflow` (or `pip install mlflow-skinny`)",
            name="mlflow",
        )
    if synchronous is not None:
        import mlflow

        if version_tuple(mlflow.__version__) < (2, 8):
            raise ImportError(
                f"MLFlowLogger(synchronous=...) needs mlflow>=2.8.0, found {mlflow.__version__}: "
                "`pip install -U 'mlflow>=2.8.0'`"
            )


class MLFlowLogger(Logger):
    """Log to MLflow: one run per logger, in experiment ``experiment_name``.

    ``tracking_uri`` defaults to ``$MLFLOW_TRACKING_URI`` as set when this module
    was imported, else to the local file store ``file:<save_dir>``. The run is
    created on first use, on global rank 0 only; other ranks get a
    DummyExperiment. ``log_model`` uploads ModelCheckpoint's files as artifacts:
    ``"all"`` after each save, ``True`` at the end of the run (after each save
    when ``save_top_k == -1``), ``False`` never.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str = "lightning_logs",
        run_name: Optional[str] = None,
        # Read at import, as Lightning does: mlflow.set_tracking_uri() (run by `experiment`) exports
        # the variable, and a later logger must not inherit an earlier logger's store from it.
        tracking_uri: Optional[str] = os.environ.get("MLFLOW_TRACKING_URI"),
        tags: Optional[Dict[str, Any]] = None,
        save_dir: Optional[str] = "./mlruns",
        log_model: Literal[True, False, "all"] = False,
        prefix: str = "",
        artifact_location: Optional[str] = None,
        run_id: Optional[str] = None,
        synchronous: Optional[bool] = None,
    ) -> None:
        _require_mlflow(synchronous)
        if log_model not in (True, False, None, "all"):
            raise ValueError(f"MLFlowLogger(log_model={log_model!r}) must be True, False or 'all'")
        if not tracking_uri:
            tracking_uri = f"{LOCAL_FILE_URI_PREFIX}{save_dir}"
        self._experiment_name = experiment_name
        self._experiment_id: Optional[str] = None
        self._tracking_uri = tracking_uri
        self._run_name = run_name
        self._run_id = run_id
        self.tags = dict(tags) if tags else None
        self._log_model = log_model
        self._logged_model_time: Dict[str, float] = {}
        self._checkpoint_callback: Any = None
        self._prefix = prefix
        self._artifact_location = artifact_location
        self._log_batch_kwargs = {} if synchronous is None else {"synchronous": synchronous}
        self._initialized = False

        from mlflow.tracking import MlflowClient

        # Created here, as in Lightning, so that a bad tracking URI fails at construction.
        self._mlflow_client = MlflowClient(tracking_uri)

    # --- the run ----------------------------------------------------------------------------
    @property
    @rank_zero_experiment
    def experiment(self) -> "MlflowClient":
        """The ``MlflowClient``; the experiment and run exist once this returns (rank 0 only)."""
        if self._initialized:
            return self._mlflow_client
        import mlflow

        mlflow.set_tracking_uri(self._tracking_uri)
        client = self._mlflow_client
        if self._run_id is not None:  # resume logging into an existing run
            self._experiment_id = client.get_run(self._run_id).info.experiment_id
        else:
            if self._experiment_id is None:
                self._experiment_id = self._get_or_create_experiment()
            run = client.create_run(experiment_id=self._experiment_id, tags=_resolve_tags(self._run_tags()))
            self._run_id = run.info.run_id
        self._initialized = True
        return client

    def _get_or_create_experiment(self) -> str:
        client = self._mlflow_client
        found = client.get_experiment_by_name(self._experiment_name)
        if found is not None and found.lifecycle_stage != "deleted":
            return found.experiment_id
        log.info("MLflow experiment %r not found: creating it", self._experiment_name)
        return client.create_experiment(name=self._experiment_name, artifact_location=self._artifact_location)

    def _run_tags(self) -> Optional[Dict[str, Any]]:
        if self._run_name is None:
            return self.tags
        from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

        self.tags = dict(self.tags or {})
        if MLFLOW_RUN_NAME in self.tags:
            log.warning("MLFlowLogger: run_name=%r replaces the %s tag", self._run_name, MLFLOW_RUN_NAME)
        self.tags[MLFLOW_RUN_NAME] = self._run_name
        return self.tags

    @property
    def run_id(self) -> Optional[str]:
        """The run's id (creates the run on first access)."""
        _ = self.experiment
        return self._run_id

    @property
    def experiment_id(self) -> Optional[str]:
        """The experiment's id (creates the experiment and run on first access)."""
        _ = self.experiment
        return self._experiment_id

    @property
    def name(self) -> Optional[str]:
        """The experiment id (what ModelCheckpoint puts in its default directory)."""
        return self.experiment_id

    @property
    def version(self) -> Optional[str]:
        """The run id."""
        return self.run_id

    @property
    def save_dir(self) -> Optional[str]:
        """The local store's directory for a ``file:`` tracking URI, else None."""
        if not self._tracking_uri.startswith(LOCAL_FILE_URI_PREFIX):
            return None
        path = self._tracking_uri[len(LOCAL_FILE_URI_PREFIX):]
        if path.startswith("//"):  # file:///abs/path or file://host/abs/path
            path = unquote(urlparse(self._tracking_uri).path)
        return path

    # --- logging ------------------------------------------------------------------------------
    @rank_zero_only
    def log_hyperparams(self, params: Union[Dict[str, Any], argparse.Namespace, None]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params_to_dict(params))
        batch = [Param(key=key, value=str(value)[:_PARAM_VALUE_LIMIT]) for key, value in flat.items()]
        for start in range(0, len(batch), _PARAMS_PER_BATCH):
            self.experiment.log_batch(
                run_id=self.run_id, params=batch[start:start + _PARAMS_PER_BATCH], **self._log_batch_kwargs
            )

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        from mlflow.entities import Metric

        timestamp_ms = int(time.time() * 1000)
        batch = []
        for key, value in add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR).items():
            if isinstance(value, str):
                log.warning("MLFlowLogger: discarding metric %s=%r (a string)", key, value)
                continue
            clean = _INVALID_METRIC_CHARS.sub("", key)
            if clean != key:
                warnings.warn(
                    f"MLflow allows only letters, digits and '_', '/', '.', ' ', '-' in metric names: "
                    f"{key!r} is logged as {clean!r}",
                    RuntimeWarning,
                )
                key = clean
            if isinstance(value, torch.Tensor):
                value = value.item()
            batch.append(Metric(key=key, value=value, timestamp=timestamp_ms, step=step or 0))
        self.experiment.log_batch(run_id=self.run_id, metrics=batch, **self._log_batch_kwargs)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        if not self._initialized:  # nothing was logged: create no run
            return
        if self._checkpoint_callback is not None:
            self._log_checkpoints(self._checkpoint_callback)
        if self.experiment.get_run(self.run_id):
            self.experiment.set_terminated(self.run_id, _RUN_STATUS.get(status, status))

    # --- checkpoints ---------------------------------------------------------------------------
    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback  # uploaded by finalize()

    def _log_checkpoints(self, checkpoint_callback: Any) -> None:
        """Upload each new (or rewritten) checkpoint to ``<stem>/`` with metadata.yaml and aliases.txt."""
        import yaml

        for mtime, path, score in checkpoints_to_log(checkpoint_callback, self._logged_model_time):
            artifact_path = Path(path).stem
            self.experiment.log_artifact(self._run_id, path, artifact_path)
            metadata = {
                "score": score.item() if isinstance(score, torch.Tensor) else score,
                "original_filename": Path(path).name,
                "Checkpoint": checkpoint_settings(checkpoint_callback),
            }
            aliases = ["latest", "best"] if path == checkpoint_callback.best_model_path else ["latest"]
            with tempfile.TemporaryDirectory() as tmp:
                with open(os.path.join(tmp, "metadata.yaml"), "w") as f:
                    yaml.safe_dump(_sanitize_hparams(metadata), f, default_flow_style=False)
                with open(os.path.join(tmp, "aliases.txt"), "w") as f:
                    f.write(str(aliases))
                self.experiment.log_artifacts(self._run_id, tmp, artifact_path)
            # By mtime as well as name: last.ckpt keeps its name and is rewritten.
            self._logged_model_time[path] = mtime


def flatten_params(params: Mapping[str, Any], delimiter: str = "/", parent: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}, "l": [{"c": 2}]}`` -> ``{"a/b": 1, "l/0/c": 2}``.

    Dataclass instances and Namespaces count as mappings; a non-empty list made
    only of mappings is flattened by index (Lightning's parameter names).
    """
    out: Dict[str, Any] = {}
    for key, value in params.items():
        name = f"{parent}{delimiter}{key}" if parent else str(key)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        elif isinstance(value, argparse.Namespace):
            value = vars(value)
        if isinstance(value, Mapping):
            out.update(flatten_params(value, delimiter, name))
        elif isinstance(value, list) and value and all(isinstance(item, Mapping) for item in value):
            for i, item in enumerate(value):
                out.update(flatten_params(item, delimiter, f"{name}{delimiter}{i}"))
        else:
            out[name] = value
    return out


def _resolve_tags(tags: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """MLflow's context tags (user, source name and type, git commit) added to ``tags``."""
    try:
        from mlflow.tracking.context.registry import resolve_tags
    except ImportError:  # very old mlflow
        return tags
    return resolve_tags(tags)
