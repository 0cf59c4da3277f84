"""SpikeDetection: stop (or warn) when the training loss jumps far above its running mean.

The rule is Lightning's. From batch index ``warmup`` of each epoch on, a batch's
loss is a spike when it is not an improvement over the previous loss (``mode``
"min": it did not go down) and it differs from the mean of the last ``window``
losses by at least ``atol`` and by at least ``rtol`` times that mean (a tolerance
set to None always passes). With ``finite_only=True`` a NaN or infinite loss is
always a spike; with ``finite_only=False`` non-finite losses are judged by the
same rule and never enter the running mean.

On a spike the current and the previous batch indices are appended to
``bad_batches`` and written (JSON list) to ``exclude_batches_path`` (default
``<default_root_dir>/skip_batches.json``; a directory gets ``skip_batches.json``
appended), then ``TrainingSpikeException`` is raised. ``on_spike="warn"`` (a volt
extension) warns and keeps training instead; the spike is not added to the mean.

Cost, honestly: the rule needs the loss's value, so this callback reads the loss
on the host after every training batch, one device sync per step on a GPU, exactly
as Lightning's does. Under DDP every rank also agrees on the decision (a barrier
and a collective per step, as in Lightning). Use it where that cost is acceptable.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Mapping, Optional, Union

import torch

from volt.callbacks.base import Callback

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

DEFAULT_FILE = "skip_batches.json"


class TrainingSpikeException(RuntimeError):
    """Raised by SpikeDetection when the training loss spikes (Lightning's exception of the same name)."""

    def __init__(self, batch_idx: int, *args: Any) -> None:
        super().__init__(f"Training spike detected in batch {batch_idx}", *args)
        self.batch_idx = batch_idx


def _check_tolerance(name: str, value: Optional[float]) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value)):
        raise ValueError(f"SpikeDetection({name}={value!r}) must be a number or None")


class SpikeDetection(Callback):
    """Detect loss spikes on the training loss (Lightning's ``SpikeDetection``).

    Args:
        mode: ``"min"`` (the loss should go down) or ``"max"``.
        window: number of recent losses in the running mean.
        warmup: first batch index (per epoch) that is checked.
        atol: absolute distance from the running mean that counts as a spike (None: any).
        rtol: distance relative to the running mean that counts as a spike (None: any).
        exclude_batches_path: JSON file (or directory) for the batch indices to skip.
        finite_only: True: a non-finite loss is a spike. False: it is judged like any other value.
        on_spike: (keyword, volt extension) ``"error"`` raises TrainingSpikeException (Lightning's
            behaviour), ``"warn"`` warns and continues.
    """

    def __init__(
        self,
        mode: str = "min",
        window: int = 10,
        warmup: int = 1,
        atol: Optional[float] = None,
        rtol: Optional[float] = 2.0,
        exclude_batches_path: Optional[Union[str, os.PathLike]] = None,
        finite_only: bool = True,
        *,
        on_spike: str = "error",
    ) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"SpikeDetection(mode={mode!r}) must be 'min' or 'max'")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"SpikeDetection(window={window!r}) must be an int >= 1")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"SpikeDetection(warmup={warmup!r}) must be an int >= 0")
        _check_tolerance("atol", atol)
        _check_tolerance("rtol", rtol)
        if not isinstance(finite_only, bool):
            raise TypeError(f"SpikeDetection(finite_only={finite_only!r}) must be a bool")
        if on_spike not in ("error", "warn"):
            raise ValueError(f"SpikeDetection(on_spike={on_spike!r}) must be 'error' or 'warn'")
        self.mode = mode
        self.window = window
        self.warmup = warmup
        self.atol = atol
        self.rtol = rtol
        self.exclude_batches_path: Optional[str] = (
            os.fspath(exclude_batches_path) if exclude_batches_path is not None else None
        )
        self.finite_only = finite_only
        self.on_spike = on_spike
        self.last_val: float = 0.0
        self.running: Deque[float] = deque(maxlen=window)
        self.bad_batches: List[int] = []

    @property
    def running_mean(self) -> float:
        """Mean of the last ``window`` accepted losses (NaN before the first)."""
        return sum(self.running) / len(self.running) if self.running else math.nan

    # --- the rule -----------------------------------------------------------------------
    def _is_better(self, diff: float) -> bool:
        return diff <= 0.0 if self.mode == "min" else diff >= 0.0

    def is_spike(self, loss: float) -> bool:
        """Whether ``loss`` is a spike against the current state (warmup not considered)."""
        if self.finite_only and not math.isfinite(loss):
            return True
        if self._is_better(loss - self.last_val):
            return False
        mean = self.running_mean
        distance = abs(loss - mean)
        atol_ok = self.atol is None or distance >= abs(self.atol)
        rtol_ok = self.rtol is None or distance >= abs(self.rtol * mean)
        return atol_ok and rtol_ok

    def _accept(self, loss: float) -> None:
        self.running.append(loss)
        self.last_val = loss

    # --- the hook ----------------------------------------------------------------------------
    @staticmethod
    def _loss(outputs: Any) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            loss = outputs
        elif isinstance(outputs, Mapping) and "loss" in outputs:
            loss = outputs["loss"]
        else:
            raise TypeError(
                "SpikeDetection needs training_step to return the loss (a tensor or a dict with 'loss'), "
                f"got {type(outputs).__qualname__}"
            )
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError("SpikeDetection needs a scalar loss tensor")
        return loss

    def _resolve_path(self, trainer: "Trainer") -> str:
        path = self.exclude_batches_path
        if path is None:
            path = trainer.default_root_dir
        if not path.endswith(".json"):
            path = os.path.join(path, DEFAULT_FILE)
        self.exclude_batches_path = path
        return path

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        path = self._resolve_path(trainer)
        value = float(self._loss(outputs).detach().float().item())  # the per-step host read (see module doc)
        spike = batch_idx >= self.warmup and self.is_spike(value)
        distributed = trainer.world_size > 1
        if distributed:  # detection is per rank, the decision is shared: any rank's spike stops all
            trainer.strategy.barrier("SpikeDetection")
            spike = trainer.strategy.reduce_boolean_decision(spike, all=False)
        if spike:
            self._handle_spike(trainer, batch_idx, value, path)
            return
        finite = self.finite_only or math.isfinite(value)
        if distributed and not self.finite_only:
            finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            self._accept(value)

    def _handle_spike(self, trainer: "Trainer", batch_idx: int, value: float, path: str) -> None:
        # The previous batch is excluded too: its update may be what made this loss jump.
        self.bad_batches.extend([batch_idx - 1, batch_idx])
        if trainer.is_global_zero:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(path, "w") as f:
                json.dump(self.bad_batches, f, indent=4)
        if self.on_spike == "error":
            raise TrainingSpikeException(batch_idx)
        warnings.warn(
            f"SpikeDetection: training spike in batch {batch_idx} (loss {value:.6g}, running mean "
            f"{self.running_mean:.6g}); batches {batch_idx - 1} and {batch_idx} written to {path}",
            UserWarning,
        )

    # --- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "last_val": self.last_val,
            "mode": self.mode,
            "warmup": self.warmup,
            "atol": self.atol,
            "rtol": self.rtol,
            "bad_batches": list(self.bad_batches),
            "bad_batches_path": self.exclude_batches_path,
            "running": list(self.running),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.last_val = float(state_dict["last_val"])
        self.mode = state_dict["mode"]
        self.warmup = state_dict["warmup"]
        self.atol = state_dict["atol"]
        self.rtol = state_dict["rtol"]
        self.bad_batches = list(state_dict["bad_batches"])
        self.exclude_batches_path = state_dict["bad_batches_path"]
        self.running = deque(state_dict.get("running", []), maxlen=self.window)
