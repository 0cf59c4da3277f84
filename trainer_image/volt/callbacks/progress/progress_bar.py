"""A terminal progress bar that never forces a device sync per step.

On a TTY it draws at most every ``refresh_rate`` batches and at most ``max_refresh_per_s``
times a second; metric values (which may live on the GPU) are read only when it
draws. On any other stream (a pod's log, CI) global rank 0 prints one line every
``log_interval_s`` seconds of training instead:

    [rank 0] 2026-12-06T02:10:00Z epoch 1/3 step 840/1800 (46%) train_loss=0.123 8.40 it/s ETA 01:54

Between lines each step costs one clock read; the loss is read only for a line.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, Optional, TextIO, Union

import torch

from volt.callbacks.base import Callback, ignores_outputs
from volt.callbacks.prometheus import LOSS_KEYS
from volt.contract import ENV_LAUNCHER, VOLT_RUN

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

BAR_WIDTH = 20


def _format_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _format_value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class _Line:
    """One bar's state: a description, a position, an optional total."""

    def __init__(self, desc: str, total: Union[int, float, None]) -> None:
        self.desc = desc
        self.total = total if total and math.isfinite(total) else None
        self.n = 0
        self.start = time.monotonic()

    def render(self, postfix: Dict[str, Any], width: int) -> str:
        elapsed = time.monotonic() - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            frac = min(1.0, self.n / self.total)
            filled = int(frac * BAR_WIDTH)
            remaining = (self.total - self.n) / rate if rate > 0 else math.inf
            text = (
                f"{self.desc}: {int(frac * 100):3d}%|{'#' * filled}{' ' * (BAR_WIDTH - filled)}| "
                f"{self.n}/{self.total} [{_format_time(elapsed)}<{_format_time(remaining)}, {rate:.2f}it/s"
            )
        else:
            text = f"{self.desc}: {self.n} [{_format_time(elapsed)}, {rate:.2f}it/s"
        if postfix:
            text += ", " + ", ".join(f"{k}={_format_value(v)}" for k, v in postfix.items())
        text += "]"
        return text[:width]


class ProgressBar(Callback):
    """Progress bar for fit/validate/test/predict (Lightning's ``TQDMProgressBar`` arguments).

    Args:
        refresh_rate: draw every N batches (0 disables the bar).
        process_position: 1.x/Lightning argument, kept for compatibility: volt draws a
            single status line with ``\\r``, so there is no line offset to apply.
        leave: keep the finished epoch's line instead of overwriting it.
        max_refresh_per_s: cap on draws per second (bounds metric reads on fast steps).
        stream: where to draw (default ``sys.stdout``).
        log_interval_s: on a stream that is not a TTY, seconds between progress lines
            while training (0: none).
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
        max_refresh_per_s: float = 10.0,
        stream: Optional[TextIO] = None,
        log_interval_s: float = 30.0,
    ) -> None:
        super().__init__()
        if isinstance(log_interval_s, bool) or not isinstance(log_interval_s, (int, float)) or not (
            math.isfinite(log_interval_s) and log_interval_s >= 0
        ):
            raise ValueError(f"ProgressBar(log_interval_s={log_interval_s!r}) must be a number of seconds >= 0")
        if not isinstance(refresh_rate, int) or isinstance(refresh_rate, bool) or refresh_rate < 0:
            raise ValueError(f"ProgressBar(refresh_rate={refresh_rate!r}) must be an int >= 0")
        if not isinstance(process_position, int) or process_position < 0:
            raise ValueError(f"ProgressBar(process_position={process_position!r}) must be an int >= 0")
        if max_refresh_per_s <= 0:
            raise ValueError(f"ProgressBar(max_refresh_per_s={max_refresh_per_s!r}) must be > 0")
        self._refresh_rate = refresh_rate
        self._process_position = process_position
        self._leave = leave
        self._min_interval = 1.0 / max_refresh_per_s
        self._stream = stream
        self._enabled = True
        self._line: Optional[_Line] = None
        self._last_draw = -math.inf
        self._trainer: Optional["Trainer"] = None
        self._last_width = 0
        self._suspended: Optional[_Line] = None  # the train line while validation draws
        self._log_interval = float(log_interval_s)
        self._log_next = math.inf  # when the next progress line is due (monotonic); inf: none
        self._log_start = 0.0
        self._log_start_step = 0
        self._log_total: float = math.inf

    # --- Lightning's ProgressBar API ---------------------------------------------
    @property
    def refresh_rate(self) -> int:
        return self._refresh_rate

    @property
    def process_position(self) -> int:
        return self._process_position

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self._refresh_rate > 0 and self._is_tty() and self._is_rank_zero()

    @property
    def is_disabled(self) -> bool:
        return not self.is_enabled

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def get_metrics(self, trainer: "Trainer", pl_module: "LightningModule") -> Dict[str, Any]:
        """What the bar shows: ``trainer.progress_bar_metrics`` plus ``v_num`` (logger version)."""
        items: Dict[str, Any] = {}
        logger = trainer.logger
        if logger is not None and getattr(logger, "version", None) is not None:
            version = logger.version
            items["v_num"] = version[-4:] if isinstance(version, str) else version
        items.update(trainer.progress_bar_metrics)
        return items

    # --- helpers -------------------------------------------------------------------
    def _is_tty(self) -> bool:
        try:
            return bool(self.stream.isatty())
        except (AttributeError, ValueError):
            return False

    def _is_rank_zero(self) -> bool:
        return self._trainer is None or self._trainer.is_global_zero

    def _logs_lines(self) -> bool:
        return (self._enabled and self._refresh_rate > 0 and self._log_interval > 0 and not self._is_tty()
                and self._is_rank_zero())

    def _log_line(self, trainer: "Trainer") -> None:
        """One progress line: epoch, step/total, the loss (read now, not per step), it/s, ETA."""
        now = time.monotonic()
        self._log_next = now + self._log_interval
        step = int(trainer.global_step)
        rate = (step - self._log_start_step) / (now - self._log_start) if now > self._log_start else 0.0
        total = self._log_total
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs not in (None, -1) else ""
        label = "" if os.environ.get(ENV_LAUNCHER) == VOLT_RUN else "[rank 0] "  # volt-run prefixes each line
        text = f"{label}{stamp} epoch {trainer.current_epoch}{epochs} step {step}"
        if math.isfinite(total) and total > 0:
            text += f"/{int(total)} ({min(100, int(100 * step / total))}%)"
        metrics = trainer.callback_metrics
        loss_key = next((key for key in LOSS_KEYS if key in metrics), None)
        if loss_key is not None:
            text += f" {loss_key}={_format_value(metrics[loss_key])}"
        text += f" {rate:.2f} it/s"
        if math.isfinite(total) and rate > 0:
            text += f" ETA {_format_time(max(0.0, total - step) / rate)}"
        self.stream.write(text + "\n")
        self.stream.flush()

    def _open(self, desc: str, total: Union[int, float, None]) -> None:
        if self.is_enabled:
            self._line = _Line(desc, total)
            self._last_draw = -math.inf  # draw the first batch at once

    def _advance(self, trainer: "Trainer", pl_module: "LightningModule", n: int, show_metrics: bool) -> None:
        line = self._line
        if line is None:
            return
        line.n = n
        now = time.monotonic()
        due = n % self._refresh_rate == 0 and now - self._last_draw >= self._min_interval
        if due or (line.total is not None and n >= line.total):
            self._draw(trainer, pl_module, show_metrics)
            self._last_draw = now

    def _draw(self, trainer: "Trainer", pl_module: "LightningModule", show_metrics: bool) -> None:
        assert self._line is not None
        postfix = self.get_metrics(trainer, pl_module) if show_metrics else {}
        text = self._line.render(postfix, width=200)
        pad = " " * max(0, self._last_width - len(text))
        self._last_width = len(text)
        self.stream.write("\r" + text + pad)
        self.stream.flush()

    def _close(self, keep: bool) -> None:
        if self._line is None:
            return
        if keep:
            self.stream.write("\n")
        else:
            self.stream.write("\r" + " " * self._last_width + "\r")
        self.stream.flush()
        self._line = None
        self._last_width = 0

    @staticmethod
    def _total(value: Any, dataloader_idx: int = 0) -> Union[int, float, None]:
        if isinstance(value, (list, tuple)):
            value = value[dataloader_idx] if dataloader_idx < len(value) else None
        return value

    # --- hooks ---------------------------------------------------------------------
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._log_next = math.inf
        if self._logs_lines():
            self._log_start, self._log_start_step = time.monotonic(), int(trainer.global_step)
            self._log_total = trainer.estimated_stepping_batches
            self._log_next = self._log_start + self._log_interval

    def on_sanity_check_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._open("Sanity Checking", None)

    def on_sanity_check_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._close(keep=False)

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._close(keep=False)
        self._open(f"Epoch {trainer.current_epoch}", trainer.num_training_batches)

    @ignores_outputs
    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._line is not None:
            self._advance(trainer, pl_module, batch_idx + 1, show_metrics=True)
        elif time.monotonic() >= self._log_next:
            self._log_line(trainer)

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._line is not None:
            self._draw(trainer, pl_module, show_metrics=True)  # final metrics, incl. epoch-level ones
        self._close(keep=self._leave)

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._close(keep=self._leave)
        self._log_next = math.inf

    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if trainer.sanity_checking:
            return
        # Mid-epoch validation takes over the line; training redraws after it.
        self._suspended = self._line
        self._line = None
        self._open("Validation", self._total(trainer.num_val_batches))

    def on_validation_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._advance(trainer, pl_module, batch_idx + 1, show_metrics=False)

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if trainer.sanity_checking:
            return
        self._close(keep=False)
        self._line, self._suspended = self._suspended, None
        if self._line is not None and self.is_enabled:
            self._draw(trainer, pl_module, show_metrics=True)

    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._open("Testing", self._total(trainer.num_test_batches) if hasattr(trainer, "num_test_batches") else None)

    def on_test_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._advance(trainer, pl_module, batch_idx + 1, show_metrics=False)

    def on_test_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._close(keep=True)

    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._open(
            "Predicting", self._total(trainer.num_predict_batches) if hasattr(trainer, "num_predict_batches") else None
        )

    def on_predict_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._advance(trainer, pl_module, batch_idx + 1, show_metrics=False)

    def on_predict_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._close(keep=True)


class TQDMProgressBar(ProgressBar):
    """Lightning's name for the default bar (volt draws it itself; tqdm is not needed)."""


#: The 1.x name of the progress bar base class.
ProgressBarBase = ProgressBar
