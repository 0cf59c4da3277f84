"""EarlyStopping: stop training when a monitored metric stops improving."""
from __future__ import annotations

import logging
import math
import warnings
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import torch

from volt.callbacks.base import Callback

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)


class EarlyStopping(Callback):
    """Set ``trainer.should_stop`` when ``monitor`` has not improved for ``patience`` checks.

    A check happens after each validation run (or at train epoch end when
    ``check_on_train_epoch_end``). Improvement means better than the best so
    far by more than ``min_delta``. It also stops at once when the metric is
    not finite (``check_finite``), reaches ``stopping_threshold`` or passes
    ``divergence_threshold``. Under DDP the ranks agree with one collective per
    check: any rank asking to stop stops all.
    """

    mode_dict = {"min": torch.lt, "max": torch.gt}
    order_dict = {"min": "<", "max": ">"}

    def __init__(
        self,
        monitor: str,
        min_delta: float = 0.0,
        patience: int = 3,
        verbose: bool = False,
        mode: str = "min",
        strict: bool = True,
        check_finite: bool = True,
        stopping_threshold: Optional[float] = None,
        divergence_threshold: Optional[float] = None,
        check_on_train_epoch_end: Optional[bool] = None,
        log_rank_zero_only: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"EarlyStopping(monitor={monitor!r}) must name a logged metric")
        if mode not in self.mode_dict:
            raise ValueError(f"EarlyStopping(mode={mode!r}) must be one of {sorted(self.mode_dict)}")
        if not isinstance(patience, int) or isinstance(patience, bool) or patience < 0:
            raise ValueError(f"EarlyStopping(patience={patience!r}) must be an int >= 0")
        if not isinstance(min_delta, (int, float)) or isinstance(min_delta, bool):
            raise TypeError(f"EarlyStopping(min_delta=...) must be a number, got {type(min_delta).__name__}")
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.strict = strict
        self.check_finite = check_finite
        self.stopping_threshold = stopping_threshold
        self.divergence_threshold = divergence_threshold
        self.log_rank_zero_only = log_rank_zero_only
        self._check_on_train_epoch_end = check_on_train_epoch_end
        # Stored with the sign that makes "current - min_delta better than best" the test.
        self.min_delta = abs(float(min_delta)) * (1 if mode == "max" else -1)
        self.wait_count = 0
        self.stopped_epoch = 0
        self.best_score = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.stopping_reason: Optional[str] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    @property
    def monitor_op(self) -> Any:
        return self.mode_dict[self.mode]

    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        if self._check_on_train_epoch_end is None:
            # Validation every epoch ends before on_train_epoch_end: check once, there.
            self._check_on_train_epoch_end = trainer.val_check_interval == 1.0 and trainer.check_val_every_n_epoch == 1

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._check_on_train_epoch_end or self._should_skip_check(trainer):
            return
        self._run_early_stopping_check(trainer)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": self.best_score,
            "patience": self.patience,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.wait_count = state_dict["wait_count"]
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.best_score = state_dict["best_score"]
        self.patience = state_dict["patience"]

    def _should_skip_check(self, trainer: "Trainer") -> bool:
        fn = trainer.state.fn
        return str(getattr(fn, "value", fn)) != "fit" or trainer.sanity_checking

    def _validate_condition_metric(self, logs: Dict[str, Any]) -> bool:
        if self.monitor in logs:
            return True
        message = (
            f"Early stopping conditioned on metric {self.monitor!r} which is not available. Pass in or modify "
            f"your EarlyStopping callback to use any of the following: {', '.join(sorted(logs)) or '(none logged)'}"
        )
        if self.strict:
            raise RuntimeError(message)
        if self.verbose:
            warnings.warn(message)
        return False

    def _run_early_stopping_check(self, trainer: "Trainer") -> None:
        logs = trainer.callback_metrics
        if trainer.fast_dev_run or not self._validate_condition_metric(logs):
            return
        current = logs[self.monitor]
        current = current.detach().squeeze().float().cpu() if isinstance(current, torch.Tensor) else torch.tensor(float(current))
        should_stop, reason = self._evaluate_stopping_criteria(current)
        if getattr(trainer, "world_size", 1) > 1:
            should_stop = trainer.strategy.reduce_boolean_decision(should_stop, all=False)
        trainer.should_stop = trainer.should_stop or should_stop
        if should_stop:
            self.stopped_epoch = trainer.current_epoch
            self.stopping_reason = reason
        if reason and self.verbose:
            self._log_info(trainer, reason)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> Tuple[bool, Optional[str]]:
        should_stop = False
        reason: Optional[str] = None
        if self.check_finite and not torch.isfinite(current):
            should_stop = True
            reason = (
                f"Monitored metric {self.monitor} = {current.item()} is not finite. "
                f"Previous best value was {self.best_score.item():.3f}. Signaling Trainer to stop."
            )
        elif self.stopping_threshold is not None and self.monitor_op(current, self.stopping_threshold):
            should_stop = True
            reason = (
                "Stopping threshold reached: "
                f"{self.monitor} = {current.item()} {self.order_dict[self.mode]} {self.stopping_threshold}. "
                "Signaling Trainer to stop."
            )
        elif self.divergence_threshold is not None and self.monitor_op(-current, -self.divergence_threshold):
            should_stop = True
            reason = (
                "Divergence threshold reached: "
                f"{self.monitor} = {current.item()} {self.order_dict[self.mode]} {self.divergence_threshold}. "
                "Signaling Trainer to stop."
            )
        elif self.monitor_op(current - self.min_delta, self.best_score):
            reason = self._improvement_message(current)
            self.best_score = current
            self.wait_count = 0
        else:
            self.wait_count += 1
            if self.wait_count >= self.patience:
                should_stop = True
                reason = (
                    f"Monitored metric {self.monitor} did not improve in the last {self.wait_count} records. "
                    f"Best score: {self.best_score.item():.3f}. Signaling Trainer to stop."
                )
        return should_stop, reason

    def _improvement_message(self, current: torch.Tensor) -> str:
        if torch.isfinite(self.best_score):
            return (
                f"Metric {self.monitor} improved by {abs(self.best_score.item() - current.item()):.3f} >= "
                f"min_delta = {abs(self.min_delta)}. New best score: {current.item():.3f}"
            )
        return f"Metric {self.monitor} improved. New best score: {current.item():.3f}"

    def _log_info(self, trainer: "Trainer", message: str) -> None:
        if getattr(trainer, "world_size", 1) > 1:
            if self.log_rank_zero_only and trainer.global_rank != 0:
                return
            message = f"[rank: {trainer.global_rank}] {message}"
        log.info(message)
