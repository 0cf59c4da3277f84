"""WandbLogger: metrics, config, media and checkpoints in a Weights & Biases run.

Needs ``wandb``, which volt does not depend on: the library is imported on
first use, so ``import volt.loggers`` works without it.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Literal, Mapping, Optional, Union

import torch
from torch import nn

from volt.loggers.base import Logger, add_prefix, params_to_dict, rank_zero_experiment, rank_zero_only
from volt.loggers.artifacts import checkpoint_settings, checkpoints_to_log

if TYPE_CHECKING:  # pragma: no cover
    from wandb import Artifact
    from wandb.sdk.wandb_run import Run

# The x axis every metric is plotted against (define_metric), as in Lightning.
STEP_METRIC = "trainer/global_step"


def wandb_available() -> bool:
    return importlib.util.find_spec("wandb") is not None


class WandbLogger(Logger):
    """Log to a W&B run (``wandb.init`` on first use, on global rank 0 only).

    ``offline=True`` (or ``WANDB_MODE=offline``) writes the run under
    ``<save_dir>/wandb`` for a later ``wandb sync``. Metrics logged with a step
    carry it as ``trainer/global_step``, the x axis of every metric.
    ``log_model`` logs ModelCheckpoint's files as ``model`` artifacts with
    ``latest``/``best`` aliases: ``"all"`` after each save, ``True`` when the
    run succeeds (after each save when ``save_top_k == -1``). Extra keyword
    arguments go to ``wandb.init`` (``entity``, ``group``, ``tags``, ``mode`` ...).
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        name: Optional[str] = None,
        save_dir: Union[str, "os.PathLike[str]", None] = ".",
        version: Optional[str] = None,
        offline: bool = False,
        dir: Union[str, "os.PathLike[str]", None] = None,
        id: Optional[str] = None,
        anonymous: Optional[bool] = None,
        project: Optional[str] = None,
        log_model: Union[Literal["all"], bool] = False,
        experiment: Optional["Run"] = None,
        prefix: str = "",
        checkpoint_name: Optional[str] = None,
        add_file_policy: Literal["mutable", "immutable"] = "mutable",
        **kwargs: Any,
    ) -> None:
        if not wandb_available():
            raise ModuleNotFoundError(
                "WandbLogger needs the `wandb` package, which is not installed: `pip install wandb`", name="wandb"
            )
        if offline and log_model:
            raise ValueError(
                f"WandbLogger(offline=True, log_model={log_model!r}): checkpoints cannot be uploaded offline; "
                "set offline=False to log them"
            )
        self._offline = offline
        self._log_model = log_model
        self._prefix = prefix
        self._experiment = experiment
        self._logged_model_time: Dict[str, float] = {}
        self._checkpoint_callbacks: Dict[int, Any] = {}
        self.add_file_policy = add_file_policy

        # `dir` is the wandb.init spelling of save_dir; it counts when save_dir is left at its default.
        if dir is not None and (save_dir is None or os.fspath(save_dir) == "."):
            save_dir = dir
        init: Dict[str, Any] = {
            "name": name,
            "project": project or os.environ.get("WANDB_PROJECT", "lightning_logs"),
            "dir": None if save_dir is None else os.fspath(save_dir),
            "id": version or id,
            "resume": "allow",
        }
        if anonymous:  # wandb warns about the setting even when it is None
            init["anonymous"] = "allow"
        if offline:
            init["mode"] = "offline"
        init.update(kwargs)
        self._wandb_init = init
        self._project = init.get("project")
        self._save_dir = init.get("dir")
        self._name = init.get("name")
        self._id = init.get("id")
        self._checkpoint_name = checkpoint_name

    # --- the run --------------------------------------------------------------------------
    @property
    @rank_zero_experiment
    def experiment(self) -> "Run":
        """The ``wandb`` run (created on first access; rank 0 only)."""
        if self._experiment is None:
            import wandb

            attach_id = getattr(self, "_attach_id", None)
            if wandb.run is not None:
                warnings.warn(
                    "a wandb run is already in progress: WandbLogger logs to it. "
                    "Call `wandb.finish()` before creating the logger for a new run."
                )
                self._experiment = wandb.run
            elif attach_id is not None and hasattr(wandb, "_attach"):
                self._experiment = wandb._attach(attach_id)  # a copy unpickled in another process
            else:
                self._experiment = wandb.init(**self._wandb_init)
                self._define_step_metric()
        return self._experiment

    def _define_step_metric(self) -> None:
        define_metric = getattr(self._experiment, "define_metric", None)
        if define_metric is None:
            return
        if self._wandb_init.get("sync_tensorboard"):
            define_metric("*", step_metric="global_step")
        else:
            define_metric(STEP_METRIC)
            define_metric("*", step_metric=STEP_METRIC, step_sync=True)

    def __getstate__(self) -> Dict[str, Any]:
        # A run holds a connection to the wandb service: keep what finds it again, drop the object.
        state = self.__dict__.copy()
        if self._experiment is not None:
            state["_id"] = getattr(self._experiment, "id", None)
            state["_attach_id"] = getattr(self._experiment, "_attach_id", None)
            state["_name"] = getattr(self._experiment, "name", self._name)
        state["_experiment"] = None
        return state

    @property
    def save_dir(self) -> Optional[str]:
        return self._save_dir

    @property
    def name(self) -> Optional[str]:
        """The project name (the run's display name is ``logger.experiment.name``)."""
        return self._project

    @property
    def version(self) -> Optional[str]:
        """The run id, or the id given to the constructor while no run exists (creates none)."""
        return self._experiment.id if self._experiment else self._id

    # --- logging ------------------------------------------------------------------------------
    def watch(
        self, model: nn.Module, log: Optional[str] = "gradients", log_freq: int = 100, log_graph: bool = True
    ) -> None:
        """Log gradients (``log="all"``: and parameters) every ``log_freq`` steps, and the graph."""
        self.experiment.watch(model, log=log, log_freq=log_freq, log_graph=log_graph)

    @rank_zero_only
    def log_hyperparams(self, params: Union[Dict[str, Any], argparse.Namespace, None]) -> None:
        config = {key: _config_value(value) for key, value in params_to_dict(params).items()}
        self.experiment.config.update(config, allow_val_change=True)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: Optional[int] = None) -> None:
        metrics = add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        if step is not None and not self._wandb_init.get("sync_tensorboard"):
            self.experiment.log({**metrics, STEP_METRIC: step})
        else:
            self.experiment.log(metrics)

    @rank_zero_only
    def log_table(
        self,
        key: str,
        columns: Optional[List[str]] = None,
        data: Optional[List[List[Any]]] = None,
        dataframe: Any = None,
        step: Optional[int] = None,
    ) -> None:
        """Log a ``wandb.Table`` from ``columns`` and ``data`` rows, or from a pandas ``dataframe``."""
        import wandb

        self.log_metrics({key: wandb.Table(columns=columns, data=data, dataframe=dataframe)}, step)

    @rank_zero_only
    def log_text(
        self,
        key: str,
        columns: Optional[List[str]] = None,
        data: Optional[List[List[str]]] = None,
        dataframe: Any = None,
        step: Optional[int] = None,
    ) -> None:
        """Log text as a table (see ``log_table``)."""
        self.log_table(key, columns, data, dataframe, step)

    @rank_zero_only
    def log_image(self, key: str, images: List[Any], step: Optional[int] = None, **kwargs: Any) -> None:
        """Log images (tensors, arrays, PIL images or paths); each kwarg is a list with one value per image."""
        self._log_media("Image", key, images, step, kwargs)

    @rank_zero_only
    def log_audio(self, key: str, audios: List[Any], step: Optional[int] = None, **kwargs: Any) -> None:
        """Log audio clips (arrays or paths); each kwarg (``caption``, ``sample_rate`` ...) is a list."""
        self._log_media("Audio", key, audios, step, kwargs)

    @rank_zero_only
    def log_video(self, key: str, videos: List[Any], step: Optional[int] = None, **kwargs: Any) -> None:
        """Log videos (arrays or paths); each kwarg (``caption``, ``fps``, ``format`` ...) is a list."""
        self._log_media("Video", key, videos, step, kwargs)

    def _log_media(self, kind: str, key: str, items: List[Any], step: Optional[int], kwargs: Dict[str, Any]) -> None:
        if not isinstance(items, list):
            raise TypeError(f"WandbLogger.log_{kind.lower()}: expected a list, got {type(items).__name__}")
        for name, values in kwargs.items():
            if len(values) != len(items):
                raise ValueError(
                    f"WandbLogger.log_{kind.lower()}: {name} has {len(values)} items for {len(items)} {kind.lower()}s"
                )
        import wandb

        media_type = getattr(wandb, kind)
        media = [media_type(item, **{k: v[i] for k, v in kwargs.items()}) for i, item in enumerate(items)]
        self.log_metrics({key: media}, step)

    # --- artifacts ------------------------------------------------------------------------------
    @staticmethod
    @rank_zero_only
    def download_artifact(
        artifact: str,
        save_dir: Union[str, "os.PathLike[str]", None] = None,
        artifact_type: Optional[str] = None,
        use_artifact: Optional[bool] = True,
    ) -> str:
        """Download ``artifact`` (linked to the current run when there is one) and return its directory."""
        import wandb

        if wandb.run is not None and use_artifact:
            found = wandb.run.use_artifact(artifact)
        else:
            found = wandb.Api().artifact(artifact, type=artifact_type)
        return found.download(root=None if save_dir is None else os.fspath(save_dir))

    def use_artifact(self, artifact: str, artifact_type: Optional[str] = None) -> "Artifact":
        """Record that this run uses ``artifact``; returns it."""
        return self.experiment.use_artifact(artifact, type=artifact_type)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self._log_model == "all" or (self._log_model is True and checkpoint_callback.save_top_k == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callbacks[id(checkpoint_callback)] = checkpoint_callback  # logged by finalize()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        # The run stays open (later fit/validate/test calls log to it); wandb finishes it at exit.
        if status != "success" or self._experiment is None:
            return  # checkpoints are logged only for a run that succeeded
        for checkpoint_callback in self._checkpoint_callbacks.values():
            self._log_checkpoints(checkpoint_callback)

    def _log_checkpoints(self, checkpoint_callback: Any) -> None:
        import wandb

        for mtime, path, score in checkpoints_to_log(checkpoint_callback, self._logged_model_time):
            metadata = {
                "score": score.item() if isinstance(score, torch.Tensor) else score,
                "original_filename": Path(path).name,
                type(checkpoint_callback).__name__: checkpoint_settings(checkpoint_callback),
            }
            if not self._checkpoint_name:
                self._checkpoint_name = f"model-{self.experiment.id}"
            artifact = wandb.Artifact(name=self._checkpoint_name, type="model", metadata=metadata)
            artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
            aliases = ["latest", "best"] if path == checkpoint_callback.best_model_path else ["latest"]
            self.experiment.log_artifact(artifact, aliases=aliases)
            self._logged_model_time[path] = mtime


def _config_value(value: Any) -> Any:
    """What goes into ``run.config``: a class by name, a callable by what it returns, else JSON or str()."""
    if inspect.isclass(value):
        value = value.__name__
    elif callable(value):
        try:
            result = value()
            value = value.__name__ if callable(result) else result
        except Exception:  # a callable that needs arguments: its name is the best description
            value = getattr(value, "__name__", None)
    if value is None or isinstance(value, (bool, int, float, str, list, dict)):
        return value
    try:
        json.dumps(value)
        return value
    except (TypeError, OverflowError):
        return str(value)
