"""Timer: track time spent per stage and stop training after a duration (``max_time``)."""
from __future__ import annotations

import logging
import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

from volt.callbacks.base import Callback, ignores_outputs
from volt.utilities.enums import LightningEnum

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

STAGES = ("train", "validate", "test", "predict")


class Interval(LightningEnum):
    """``Timer(interval=...)``'s values (equal to the strings, which work too)."""

    step = "step"
    epoch = "epoch"

_DURATION_RE = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2}):(\d{1,2})\s*$")

Duration = Union[str, timedelta, Dict[str, float], None]


def parse_duration(duration: Duration, arg: str = "Timer(duration=...)") -> Optional[timedelta]:
    """``"DD:HH:MM:SS"``, a timedelta, or a dict of timedelta keyword arguments."""
    if duration is None:
        return None
    if isinstance(duration, timedelta):
        out = duration
    elif isinstance(duration, dict):
        try:
            out = timedelta(**duration)
        except TypeError as err:
            raise ValueError(f"{arg}: {duration!r} is not a dict of timedelta fields ({err})") from None
    elif isinstance(duration, str):
        match = _DURATION_RE.match(duration)
        if not match:
            raise ValueError(f"{arg}: {duration!r} must look like 'DD:HH:MM:SS', e.g. '00:12:00:00'")
        days, hours, minutes, seconds = (int(g) for g in match.groups())
        out = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    else:
        raise TypeError(f"{arg} must be 'DD:HH:MM:SS', a timedelta or a dict, got {type(duration).__name__}")
    if out.total_seconds() <= 0:
        raise ValueError(f"{arg}: {duration!r} must be a positive duration")
    return out


class Timer(Callback):
    """Stop training once ``duration`` of training time has passed.

    ``interval="step"`` checks after every training batch, ``"epoch"`` after every
    training epoch. Time spent in earlier runs is restored from checkpoints, so
    a resumed job keeps its budget. Under DDP, ranks adopt rank 0's decision via
    one broadcast every ``trainer.log_every_n_steps`` batches (or every epoch),
    never a per-step collective, so a distributed run may overshoot by up to
    that many steps.
    """

    def __init__(self, duration: Duration = None, interval: str = "step", verbose: bool = True) -> None:
        super().__init__()
        if interval not in ("step", "epoch"):
            raise ValueError(f"Timer(interval={interval!r}) must be 'step' or 'epoch'")
        self._duration = parse_duration(duration)
        self._interval = interval.value if isinstance(interval, Interval) else interval
        self._verbose = verbose
        self._start_time: Dict[str, Optional[float]] = {stage: None for stage in STAGES}
        self._end_time: Dict[str, Optional[float]] = {stage: None for stage in STAGES}
        self._offset = 0.0
        self._batches_seen = 0

    @property
    def duration(self) -> Optional[float]:
        return None if self._duration is None else self._duration.total_seconds()

    def start_time(self, stage: str = "train") -> Optional[float]:
        """``time.monotonic()`` when ``stage`` started, or None."""
        return self._start_time[self._check_stage(stage)]

    def end_time(self, stage: str = "train") -> Optional[float]:
        return self._end_time[self._check_stage(stage)]

    def time_elapsed(self, stage: str = "train") -> float:
        """Seconds spent in ``stage`` (training time includes previous, resumed runs)."""
        stage = self._check_stage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == "train" else 0.0
        if start is None:
            return offset
        if end is None:
            return time.monotonic() - start + offset
        return end - start + offset

    def time_remaining(self, stage: str = "train") -> Optional[float]:
        """Seconds left of ``duration`` (None without a duration)."""
        if self._duration is None:
            return None
        return self.duration - self.time_elapsed(stage)  # type: ignore[operator]

    @staticmethod
    def _check_stage(stage: Any) -> str:
        stage = str(getattr(stage, "value", stage))
        if stage not in STAGES:
            raise ValueError(f"Timer: stage must be one of {STAGES}, got {stage!r}")
        return stage

    # --- hooks ----------------------------------------------------------------
    def _start(self, stage: str) -> None:
        self._start_time[stage] = time.monotonic()
        self._end_time[stage] = None

    def _end(self, stage: str) -> None:
        self._end_time[stage] = time.monotonic()

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._start("train")

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end("train")

    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._start("validate")

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end("validate")

    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._start("test")

    def on_test_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end("test")

    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._start("predict")

    def on_predict_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._end("predict")

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        # Stop before the first step if a resumed run already used the budget.
        if self._duration is not None and self._offset >= self.duration:  # type: ignore[operator]
            self._check_time_remaining(trainer, force=True)

    @ignores_outputs
    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches_seen += 1
        if self._interval != "step" or self._duration is None:
            return
        self._check_time_remaining(trainer)

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._interval != "epoch" or self._duration is None:
            return
        self._check_time_remaining(trainer, force=True)

    def _check_time_remaining(self, trainer: "Trainer", force: bool = False) -> None:
        distributed = getattr(trainer, "world_size", 1) > 1
        if distributed and not force and self._batches_seen % max(1, trainer.log_every_n_steps) != 0:
            return
        should_stop = self.time_elapsed("train") >= self.duration  # type: ignore[operator]
        if distributed:
            should_stop = bool(trainer.strategy.broadcast(should_stop))
        if should_stop:
            trainer.should_stop = True
            if self._verbose and trainer.is_global_zero:
                elapsed = timedelta(seconds=int(self.time_elapsed("train")))
                log.info("Time limit reached. Elapsed time is %s. Signaling Trainer to stop.", elapsed)

    # --- state ----------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"time_elapsed": {stage: self.time_elapsed(stage) for stage in STAGES}}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._offset = float(state_dict.get("time_elapsed", {}).get("train", 0.0))
