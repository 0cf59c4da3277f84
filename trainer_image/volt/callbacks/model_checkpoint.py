"""ModelCheckpoint: save checkpoints periodically, keep the top-k, and name the latest.

Triggers (mutually exclusive, as in Lightning): ``every_n_train_steps``,
``train_time_interval`` or ``every_n_epochs`` (the default, 1). At each trigger
the callback saves a top-k checkpoint (ranked by ``monitor``, or simply the
latest when ``monitor`` is None) and ``last.ckpt`` when ``save_last``.

Writes go through ``trainer.save_checkpoint`` on every rank (rank 0 writes,
atomically). After each full checkpoint rank 0 updates ``latest.json`` in the
checkpoint directory, which ``fit(ckpt_path="last")`` reads.

Under DDP, rank 0 decides what to save (which file, whether it is in the
top-k) and broadcasts that once per save point; the time-based trigger is
checked only every ``trainer.log_every_n_steps`` batches, never with a
per-step collective.
"""
from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import torch

from volt import checkpoint as ckpt_io
from volt.callbacks.base import ignores_outputs
from volt.callbacks.checkpoint_base import Checkpoint
from volt.contract import ENV_CHECKPOINT_DIR, ENV_CHECKPOINT_EVERY_N_STEPS, job_contract

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

#: keep_last on a TrainingJob's checkpoint volume ($VOLT_CHECKPOINT_DIR set) when nothing else says.
JOB_DEFAULT_KEEP_LAST = 3


def _stage_name(trainer: "Trainer") -> str:
    fn = trainer.state.fn
    return str(getattr(fn, "value", fn))


def _is_distributed(trainer: "Trainer") -> bool:
    return getattr(trainer, "world_size", 1) > 1


def _to_float(value: Any) -> float:
    if isinstance(value, torch.Tensor):
        return float(value.detach().float().item())
    return float(value)


def _resolve_keep_last(keep_last: Optional[int]) -> int:
    """``keep_last``, else ``$VOLT_CHECKPOINT_KEEP_LAST``, else 3 on a TrainingJob's volume, else 1."""
    if keep_last is not None:
        if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1:
            raise ValueError(f"ModelCheckpoint(keep_last={keep_last!r}) must be an int >= 1")
        return keep_last
    job = job_contract()
    if job.checkpoint_keep_last is not None:
        return job.checkpoint_keep_last
    return JOB_DEFAULT_KEEP_LAST if job.checkpoint_dir else 1


class ModelCheckpoint(Checkpoint):
    """Save the model periodically (Lightning's ``ModelCheckpoint`` arguments and attributes).

    Args:
        dirpath: directory for checkpoints. Default: ``<log_dir>/checkpoints`` of the
            first logger, else ``<default_root_dir>/checkpoints``; ``$VOLT_CHECKPOINT_DIR``
            (set by the TrainingJob) overrides it.
        filename: template such as ``"{epoch}-{step}"`` or ``"{epoch:02d}-{val_loss:.2f}"``.
        monitor: metric (a key of ``trainer.callback_metrics``) that ranks checkpoints.
        mode: ``"min"`` or ``"max"``: which direction of ``monitor`` is better.
        save_top_k: keep the k best (-1: all, 0: none besides ``last``).
        save_last: also write ``last.ckpt`` at every trigger (``"link"``: a symlink).
        save_weights_only: write only the model weights (not resumable, not in the manifest).
        every_n_train_steps / train_time_interval / every_n_epochs: the trigger.
        save_on_train_epoch_end: save at train epoch end rather than after validation.
        auto_insert_metric_name: ``{epoch}`` becomes ``epoch=3`` in file names.
        enable_version_counter: add ``-v1``, ``-v2``... instead of overwriting an existing file.
        save_on_exception: when training raises, save ``<name>-exception.ckpt`` (single process
            only, like OnExceptionCheckpoint).
        period: 1.x name of ``every_n_epochs``.
        keep_last: retention: a file the top-k/last rotation drops is deleted only once it is not
            among the checkpoints of the ``keep_last`` newest steps in ``latest.json``, so a corrupt
            latest checkpoint has valid ones to fall back to. Default: ``$VOLT_CHECKPOINT_KEEP_LAST``,
            else 3 on a TrainingJob's volume (``$VOLT_CHECKPOINT_DIR`` set), else 1 (Lightning's
            behaviour: only what top-k and ``last`` keep, plus the manifest's file).
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="
    CHECKPOINT_NAME_LAST = "last"
    FILE_EXTENSION = ckpt_io.CHECKPOINT_SUFFIX
    STARTING_VERSION = 1

    def __init__(
        self,
        dirpath: Optional[Union[str, "os.PathLike[str]"]] = None,
        filename: Optional[str] = None,
        monitor: Optional[str] = None,
        verbose: bool = False,
        save_last: Optional[Union[bool, str]] = None,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        mode: str = "min",
        auto_insert_metric_name: bool = True,
        every_n_train_steps: Optional[int] = None,
        train_time_interval: Optional[timedelta] = None,
        every_n_epochs: Optional[int] = None,
        save_on_train_epoch_end: Optional[bool] = None,
        enable_version_counter: bool = True,
        save_on_exception: bool = False,
        period: Optional[int] = None,
        keep_last: Optional[int] = None,
    ) -> None:
        super().__init__()
        if period is not None:
            if every_n_epochs is not None:
                raise ValueError("ModelCheckpoint: pass either `period` (1.x) or `every_n_epochs`, not both")
            every_n_epochs = period
        if not isinstance(save_top_k, int) or save_top_k < -1:
            raise ValueError(f"ModelCheckpoint(save_top_k={save_top_k!r}) must be an int >= -1")
        if mode not in ("min", "max"):
            raise ValueError(f"ModelCheckpoint(mode={mode!r}) must be 'min' or 'max'")
        if save_last not in (None, True, False, "link"):
            raise ValueError(f"ModelCheckpoint(save_last={save_last!r}) must be a bool, None or 'link'")
        if monitor is not None and not isinstance(monitor, str):
            raise TypeError(f"ModelCheckpoint(monitor=...) must be a metric name (str), got {type(monitor).__name__}")
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(
                f"ModelCheckpoint(save_top_k={save_top_k}, monitor=None) is not a valid configuration: "
                "without `monitor` there is nothing to rank, so use save_top_k in (-1, 0, 1) or set `monitor`"
            )
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"ModelCheckpoint({name}={value!r}) must be an int >= 0")
        if train_time_interval is not None and not isinstance(train_time_interval, timedelta):
            raise TypeError(
                f"ModelCheckpoint(train_time_interval=...) must be a datetime.timedelta, got {type(train_time_interval).__name__}"
            )
        if filename is not None and not isinstance(filename, str):
            raise TypeError(f"ModelCheckpoint(filename=...) must be a str, got {type(filename).__name__}")

        self.monitor = monitor
        self.verbose = verbose
        self.save_last = save_last
        self.save_top_k = save_top_k
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.auto_insert_metric_name = auto_insert_metric_name
        self.filename = filename
        self._save_on_train_epoch_end = save_on_train_epoch_end
        self._enable_version_counter = enable_version_counter
        self.save_on_exception = save_on_exception
        self._dirpath_arg = None if dirpath is None else os.path.realpath(os.path.expanduser(os.fspath(dirpath)))
        self.dirpath: Optional[str] = self._dirpath_arg
        self._init_triggers(every_n_train_steps, every_n_epochs, train_time_interval)
        self.keep_last = _resolve_keep_last(keep_last)

        self.best_k_models: Dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value: torch.Tensor = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.best_model_score: Optional[torch.Tensor] = None
        self.best_model_path = ""
        self.last_model_path = ""
        self.current_score: Optional[torch.Tensor] = None

        self._last_global_step_saved = 0  # nothing to save before the first step
        self._last_checkpoint_saved = ""
        self._last_time_checked: Optional[float] = None
        self._train_batches_seen = 0
        self._validation_ran = False
        self._warned_missing_monitor = False
        self._pending_state: Optional[Dict[str, Any]] = None
        # Files the rotation dropped that retention still keeps (deleted once out of the keep_last newest).
        self._released: List[str] = []

    def _init_triggers(
        self, every_n_train_steps: Optional[int], every_n_epochs: Optional[int], train_time_interval: Optional[timedelta]
    ) -> None:
        given = [
            name
            for name, value in (
                ("every_n_train_steps", every_n_train_steps),
                ("every_n_epochs", every_n_epochs),
                ("train_time_interval", train_time_interval),
            )
            if value is not None
        ]
        if len(given) > 1:
            raise ValueError(
                f"ModelCheckpoint: {', '.join(given)} are mutually exclusive; set only one trigger"
            )
        if not given:
            job_steps = job_contract().checkpoint_every_n_steps
            if job_steps is not None:
                # The TrainingJob's checkpoint.everyNSteps, for scripts that set no trigger.
                every_n_train_steps = job_steps
                log.info("ModelCheckpoint: every_n_train_steps=%d from %s", every_n_train_steps,
                         ENV_CHECKPOINT_EVERY_N_STEPS)
            else:
                every_n_epochs = 1
        self._every_n_train_steps = every_n_train_steps or 0
        self._every_n_epochs = every_n_epochs or 0
        self._train_time_interval = train_time_interval

    # --- identity ----------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
        )

    @property
    def every_n_epochs(self) -> int:
        return self._every_n_epochs

    @property
    def every_n_train_steps(self) -> int:
        return self._every_n_train_steps

    @property
    def train_time_interval(self) -> Optional[timedelta]:
        return self._train_time_interval

    # --- hooks ----------------------------------------------------------------------
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        dirpath = self._resolve_dirpath(trainer)
        if _is_distributed(trainer):
            # Loggers pick version_N by listing directories; make every rank agree with rank 0.
            dirpath = trainer.strategy.broadcast(dirpath)
        self.dirpath = dirpath
        if trainer.is_global_zero and stage == "fit":
            removed = ckpt_io.remove_stale_temp_files(dirpath)
            if removed:
                log.info("ModelCheckpoint: removed %d partial checkpoint(s) left in %s by a killed writer", removed, dirpath)
            if self.save_top_k != 0 and os.path.isdir(dirpath) and os.listdir(dirpath):
                log.info("Checkpoint directory %s exists and is not empty", dirpath)
        if self._pending_state is not None:
            self._apply_state(self._pending_state)
            self._pending_state = None

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._last_time_checked = time.monotonic()

    @ignores_outputs
    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._every_n_train_steps < 1 and self._train_time_interval is None:
            return  # epoch-based: nothing to do per batch
        self._train_batches_seen += 1
        if self._should_skip_saving_checkpoint(trainer):
            return
        by_steps = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        by_time = self._train_time_interval is not None and self._time_interval_elapsed(trainer)
        if not (by_steps or by_time):
            return
        self._save_checkpoints(trainer)

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer):
            if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
                self._save_checkpoints(trainer)

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if trainer.sanity_checking:
            return
        self._validation_ran = True
        if not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer):
            if self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0:
                self._save_checkpoints(trainer)

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        if not self.save_on_exception or self.dirpath is None:
            return
        from volt.callbacks.on_exception_checkpoint import save_after_exception

        name = self.format_checkpoint_name(self._monitor_candidates(trainer))
        path = name[: -len(self.FILE_EXTENSION)] + self.CHECKPOINT_JOIN_CHAR + "exception" + self.FILE_EXTENSION
        save_after_exception(trainer, path, self.dirpath, exception, "ModelCheckpoint(save_on_exception=True)")

    # --- state -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
            "released_paths": list(self._released),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        if self.dirpath is None:
            # Restored before setup resolved the directory: finish in setup.
            self._pending_state = dict(state_dict)
            return
        self._apply_state(state_dict)

    def _apply_state(self, state: Dict[str, Any]) -> None:
        saved_dir = state.get("dirpath")
        self.best_model_path = state.get("best_model_path", "")
        if saved_dir is not None and os.path.realpath(saved_dir) == os.path.realpath(self.dirpath or ""):
            self.best_model_score = state.get("best_model_score")
            self.current_score = state.get("current_score")
            self.best_k_models = dict(state.get("best_k_models", {}))
            self.kth_best_model_path = state.get("kth_best_model_path", "")
            self.kth_value = state.get("kth_value", self.kth_value)
            self.last_model_path = state.get("last_model_path", "")
            self._released = [p for p in state.get("released_paths", []) if p not in self._released] + self._released
        else:
            warnings.warn(
                f"The checkpoint directory changed from {saved_dir!r} to {self.dirpath!r}: only best_model_path "
                "is restored, the top-k bookkeeping starts over in the new directory"
            )

    # --- decisions ---------------------------------------------------------------------
    def _should_skip_saving_checkpoint(self, trainer: "Trainer") -> bool:
        return (
            bool(trainer.fast_dev_run)
            or _stage_name(trainer) != "fit"
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _should_save_on_train_epoch_end(self, trainer: "Trainer") -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        # Validation that runs every epoch ends before on_train_epoch_end: save
        # there, after both. Otherwise validation decides when to save.
        if trainer.check_val_every_n_epoch != 1:
            return False
        num_val_batches = trainer.num_val_batches
        if isinstance(num_val_batches, (list, tuple)):
            num_val_batches = sum(num_val_batches)
        if not num_val_batches:
            return True
        return trainer.val_check_interval == 1.0

    def _time_interval_elapsed(self, trainer: "Trainer") -> bool:
        assert self._train_time_interval is not None
        distributed = _is_distributed(trainer)
        if distributed and self._train_batches_seen % max(1, trainer.log_every_n_steps) != 0:
            return False  # ranks compare clocks only at the logging cadence
        now = time.monotonic()
        prev = self._last_time_checked
        elapsed = prev is not None and (now - prev) >= self._train_time_interval.total_seconds()
        if distributed:
            elapsed = bool(trainer.strategy.broadcast(elapsed))
        if elapsed:
            self._last_time_checked = now
        return elapsed

    def _monitor_candidates(self, trainer: "Trainer") -> Dict[str, Any]:
        candidates = dict(trainer.callback_metrics)
        # Logged "epoch"/"step" values may be floats; file names want ints ("{epoch:02d}").
        epoch, step = candidates.get("epoch"), candidates.get("step")
        candidates["epoch"] = epoch.int() if isinstance(epoch, torch.Tensor) else torch.tensor(trainer.current_epoch)
        candidates["step"] = step.int() if isinstance(step, torch.Tensor) else torch.tensor(trainer.global_step)
        return candidates

    def check_monitor_top_k(self, trainer: "Trainer", current: Optional[torch.Tensor] = None) -> bool:
        """Whether a checkpoint scoring ``current`` belongs in the top-k."""
        if current is None or self.save_top_k == 0:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        if self.mode == "min":
            return bool(current < self.best_k_models[self.kth_best_model_path])
        return bool(current > self.best_k_models[self.kth_best_model_path])

    # --- saving ----------------------------------------------------------------------------
    def _save_checkpoints(self, trainer: "Trainer") -> None:
        candidates = self._monitor_candidates(trainer)
        self._last_checkpoint_saved = ""
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._delete_released(trainer)

    def _save_topk_checkpoint(self, trainer: "Trainer", candidates: Dict[str, Any]) -> None:
        if self.save_top_k == 0:
            return
        if self.monitor is None:
            self._save_none_monitor_checkpoint(trainer, candidates)
            return
        if self.monitor not in candidates:
            message = (
                f"ModelCheckpoint(monitor={self.monitor!r}) could not find the monitored key in the logged "
                f"metrics: {sorted(candidates)}. HINT: did you call `self.log({self.monitor!r}, value)` "
                "in the LightningModule?"
            )
            if self._validation_ran:
                raise KeyError(message)
            if not self._warned_missing_monitor:
                warnings.warn(message + " (no checkpoint is saved until it is logged)")
                self._warned_missing_monitor = True
            return
        plan: Optional[Tuple[str, float]] = None
        if trainer.is_global_zero or not _is_distributed(trainer):
            plan = self._plan_topk(trainer, candidates)
        if _is_distributed(trainer):
            plan = trainer.strategy.broadcast(plan)
        if plan is None:
            if self.verbose and trainer.is_global_zero:
                log.info(
                    "Epoch %d, global step %d: %r was not in top %d",
                    trainer.current_epoch, trainer.global_step, self.monitor, self.save_top_k,
                )
            return
        filepath, score = plan
        self._update_best_and_save(trainer, filepath, torch.tensor(score))

    def _plan_topk(self, trainer: "Trainer", candidates: Dict[str, Any]) -> Optional[Tuple[str, float]]:
        score = _to_float(candidates[self.monitor])
        if math.isnan(score):  # never the best
            score = math.inf if self.mode == "min" else -math.inf
        if not self.check_monitor_top_k(trainer, torch.tensor(score)):
            return None
        replaced = self.kth_best_model_path if self._topk_is_full() else ""
        return self._unused_filepath(candidates, self.filename, reusable=replaced), score

    def _topk_is_full(self) -> bool:
        return self.save_top_k > 0 and len(self.best_k_models) >= self.save_top_k

    def _update_best_and_save(self, trainer: "Trainer", filepath: str, score: torch.Tensor) -> None:
        removed = ""
        if self._topk_is_full():
            removed = self.kth_best_model_path
            self.best_k_models.pop(removed, None)
        self.current_score = score
        self.best_k_models[filepath] = score
        if self.save_top_k == -1 or len(self.best_k_models) == self.save_top_k:
            pick = max if self.mode == "min" else min  # the worst of the kept ones
            self.kth_best_model_path = pick(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        best = min if self.mode == "min" else max
        self.best_model_path = best(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose and trainer.is_global_zero:
            log.info(
                "Epoch %d, global step %d: %r reached %.5f (best %.5f), saving model to %r as top %d",
                trainer.current_epoch, trainer.global_step, self.monitor, float(score),
                float(self.best_model_score), filepath, self.save_top_k,
            )
        if removed and removed != filepath:
            self._release(removed)  # before the save, so the checkpoint's state remembers it
        self._save_checkpoint(trainer, filepath)

    def _save_none_monitor_checkpoint(self, trainer: "Trainer", candidates: Dict[str, Any]) -> None:
        previous = self.best_model_path
        filepath = None
        if trainer.is_global_zero or not _is_distributed(trainer):
            reusable = previous if self.save_top_k == 1 else ""
            filepath = self._unused_filepath(candidates, self.filename, reusable=reusable)
        if _is_distributed(trainer):
            filepath = trainer.strategy.broadcast(filepath)
        assert filepath is not None
        self.best_model_path = filepath
        if self.save_top_k == 1 and previous and previous != filepath:
            self._release(previous)
        self._save_checkpoint(trainer, filepath)

    def _save_last_checkpoint(self, trainer: "Trainer", candidates: Dict[str, Any]) -> None:
        if not self.save_last:
            return
        filepath = None
        if trainer.is_global_zero or not _is_distributed(trainer):
            filepath = self._unused_filepath(candidates, self.CHECKPOINT_NAME_LAST, reusable=self.last_model_path)
        if _is_distributed(trainer):
            filepath = trainer.strategy.broadcast(filepath)
        assert filepath is not None
        previous, self.last_model_path = self.last_model_path, filepath
        if previous and previous != filepath:
            self._release(previous)
        if self.save_last == "link" and self._last_checkpoint_saved and self.save_top_k != 0:
            self._link_checkpoint(trainer, self._last_checkpoint_saved, filepath)
        else:
            self._save_checkpoint(trainer, filepath)

    def _save_checkpoint(self, trainer: "Trainer", filepath: str) -> None:
        trainer.save_checkpoint(filepath, self.save_weights_only)  # every rank; rank 0 writes
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero and not self.save_weights_only:
            assert self.dirpath is not None
            ckpt_io.write_manifest(self.dirpath, filepath, step=trainer.global_step, epoch=trainer.current_epoch)
        for logger in trainer.loggers:
            logger.after_save_checkpoint(self)

    def _link_checkpoint(self, trainer: "Trainer", target: str, link: str) -> None:
        if trainer.is_global_zero:
            tmp = link + ".linktmp"
            if os.path.lexists(tmp):
                os.unlink(tmp)
            os.symlink(os.path.relpath(target, os.path.dirname(link)), tmp)
            os.replace(tmp, link)  # atomic swap of the link
        self._last_global_step_saved = trainer.global_step
        trainer.strategy.barrier("ModelCheckpoint.link")

    def _release(self, filepath: str) -> None:
        """The rotation no longer keeps ``filepath``; ``_delete_released`` deletes it when retention allows."""
        if filepath not in self._released:
            self._released.append(filepath)

    def _delete_released(self, trainer: "Trainer") -> None:
        """Delete the released files that neither retention (keep_last) nor top-k/last/best keep."""
        if not trainer.is_global_zero:
            self._released = []  # rank 0 decides and deletes; its state is the one saved
            return
        if not self._released:
            return
        assert self.dirpath is not None
        kept = ckpt_io.recent_checkpoints(self.dirpath, self.keep_last)
        kept.update(os.path.realpath(p) for p in (*self.best_k_models, self.last_model_path, self.best_model_path) if p)
        still: List[str] = []
        for path in self._released:
            if not os.path.lexists(path):
                continue
            if os.path.islink(path) or os.path.realpath(path) not in kept:  # a link goes, its target may stay
                self._remove_checkpoint(trainer, path)
            else:
                still.append(path)
        self._released = still

    def _remove_checkpoint(self, trainer: "Trainer", filepath: str) -> None:
        if not trainer.is_global_zero:
            return
        assert self.dirpath is not None
        manifest = ckpt_io.read_manifest(self.dirpath)
        if manifest is not None and os.path.realpath(manifest.path(self.dirpath)) == os.path.realpath(filepath):
            return  # never delete what latest.json names (e.g. another callback's file)
        if os.path.islink(filepath):  # last.ckpt as a link to a top-k file: the link is ours, not the IO's
            os.unlink(filepath)
        else:  # the CheckpointIO plugin that wrote it deletes it
            trainer.checkpoint_io.remove_checkpoint(filepath)

    # --- names ----------------------------------------------------------------------------
    @classmethod
    def _format_checkpoint_name(
        cls,
        filename: Optional[str],
        metrics: Dict[str, Any],
        prefix: str = "",
        auto_insert_metric_name: bool = True,
    ) -> str:
        if not filename:
            filename = "{epoch}" + cls.CHECKPOINT_JOIN_CHAR + "{step}"
        values: Dict[str, Any] = {}
        # "{name" or "{name:fmt}": longest names first so "{val_loss" wins over "{val".
        names = sorted(set(re.findall(r"\{([^{}:]+)(?=[:}])", filename)), key=len, reverse=True)
        for i, name in enumerate(names):
            key = f"m{i}"
            pattern = re.compile(r"\{" + re.escape(name) + r"(?=[:}])")
            replacement = (name + cls.CHECKPOINT_EQUALS_CHAR if auto_insert_metric_name else "") + "{" + key
            filename = pattern.sub(lambda _m: replacement, filename)
            value = metrics.get(name, 0)
            if isinstance(value, torch.Tensor):
                value = value.item()
            values[key] = value
        filename = filename.format(**values)
        if prefix:
            filename = cls.CHECKPOINT_JOIN_CHAR.join([prefix, filename])
        return filename

    def format_checkpoint_name(
        self, metrics: Dict[str, Any], filename: Optional[str] = None, ver: Optional[int] = None
    ) -> str:
        """Full path of the checkpoint for ``metrics``, e.g. ``<dirpath>/epoch=2-step=30.ckpt``."""
        name = self._format_checkpoint_name(filename or self.filename, metrics, auto_insert_metric_name=self.auto_insert_metric_name)
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        name += self.FILE_EXTENSION
        return os.path.join(self.dirpath, name) if self.dirpath else name

    def _unused_filepath(self, metrics: Dict[str, Any], filename: Optional[str], reusable: str = "") -> str:
        """The formatted path, with a ``-vN`` suffix while it would clobber a file we keep."""
        filepath = self.format_checkpoint_name(metrics, filename)
        if not self._enable_version_counter:
            return filepath
        version = self.STARTING_VERSION
        while os.path.lexists(filepath) and filepath != reusable:
            filepath = self.format_checkpoint_name(metrics, filename, ver=version)
            version += 1
        return filepath

    def _resolve_dirpath(self, trainer: "Trainer") -> str:
        env_dir = trainer.job_contract.checkpoint_dir  # the TrainingJob's directory wins (volt.contract)
        if env_dir:
            env_dir = os.path.realpath(os.path.expanduser(env_dir))
            if self._dirpath_arg is not None and self._dirpath_arg != env_dir:
                log.warning(
                    "%s=%s overrides ModelCheckpoint(dirpath=%r): the TrainingJob's checkpoint volume is used",
                    ENV_CHECKPOINT_DIR, env_dir, self._dirpath_arg,
                )
            return env_dir
        if self._dirpath_arg is not None:
            return self._dirpath_arg
        loggers = list(getattr(trainer, "loggers", None) or [])
        if loggers:
            first = loggers[0]
            if getattr(getattr(trainer, "config", None), "weights_save_path_given", False):
                save_dir = trainer.weights_save_path  # 1.x weights_save_path wins over the logger's dir
            else:
                save_dir = first.save_dir or trainer.default_root_dir
            version = first.version
            version_dir = version if isinstance(version, str) else f"version_{version}"
            path = os.path.join(save_dir, str(first.name), version_dir, "checkpoints")
        else:
            root = getattr(trainer, "weights_save_path", None) or trainer.default_root_dir
            path = os.path.join(root, "checkpoints")
        return os.path.realpath(os.path.expanduser(path))

    def __repr__(self) -> str:
        return f"ModelCheckpoint(dirpath={self.dirpath!r}, monitor={self.monitor!r}, save_top_k={self.save_top_k})"
