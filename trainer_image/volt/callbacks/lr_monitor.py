"""LearningRateMonitor: log each optimizer param group's learning rate (and momentum)."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

import torch

from volt.callbacks.base import Callback
from volt.utilities.exceptions import MisconfigurationException

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer


class LearningRateMonitor(Callback):
    """Log learning rates as ``lr-<Optimizer>`` (``/pg<N>`` per param group when several).

    Args:
        logging_interval: ``"step"``, ``"epoch"`` or None (each scheduler's own interval;
            optimizers without a scheduler are logged every logging step).
        log_momentum: also log ``<name>-momentum`` (``betas[0]`` for Adam-like optimizers).
        log_weight_decay: also log ``<name>-weight_decay``.

    Values are Python floats read from ``param_groups``: no device sync. They
    are sent to the loggers at the trainer's ``log_every_n_steps`` cadence and
    also put in ``trainer.callback_metrics``.
    """

    def __init__(
        self, logging_interval: Optional[str] = None, log_momentum: bool = False, log_weight_decay: bool = False
    ) -> None:
        super().__init__()
        if logging_interval not in (None, "step", "epoch"):
            raise ValueError(
                f"LearningRateMonitor(logging_interval={logging_interval!r}) must be 'step', 'epoch' or None"
            )
        self.logging_interval = logging_interval
        self.log_momentum = log_momentum
        self.log_weight_decay = log_weight_decay
        self.lrs: Dict[str, List[float]] = {}
        self.last_momentum_values: Dict[str, Optional[float]] = {}
        self.last_weight_decay_values: Dict[str, Optional[float]] = {}
        self._names: List[List[str]] = []  # per optimizer, per param group
        self._last_logged_step = -1

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "LearningRateMonitor needs a logger: the Trainer was created with logger=False"
            )
        self._names = self._find_names(trainer)
        self.lrs = {name: [] for names in self._names for name in names}

    def on_train_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int
    ) -> None:
        if self.logging_interval == "epoch":
            return
        step = trainer.global_step
        every = max(1, int(getattr(trainer, "log_every_n_steps", 50)))
        # Log at the trainer's logging cadence, once per optimizer step.
        if step == self._last_logged_step or ((step + 1) % every != 0 and not trainer.should_stop):
            return
        stats = self._extract_stats(trainer, "step" if self.logging_interval is None else "any")
        if stats:
            self._last_logged_step = step
            self._log(trainer, stats, step)

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self.logging_interval == "step":
            return
        stats = self._extract_stats(trainer, "epoch" if self.logging_interval is None else "any")
        if stats:
            self._log(trainer, stats, trainer.global_step)

    def _log(self, trainer: "Trainer", stats: Dict[str, float], step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(stats, step=step)
        device = trainer.strategy.root_device
        trainer.callback_metrics.update({name: torch.tensor(value, device=device) for name, value in stats.items()})

    def _scheduler_intervals(self, trainer: "Trainer") -> Dict[int, str]:
        """Optimizer index -> interval of the scheduler driving it."""
        intervals: Dict[int, str] = {}
        optimizers = list(trainer.optimizers)
        for config in trainer.lr_scheduler_configs or []:
            opt = config.scheduler.optimizer
            for i, candidate in enumerate(optimizers):
                if candidate is opt:
                    intervals[i] = config.interval
        return intervals

    def _extract_stats(self, trainer: "Trainer", interval: str) -> Dict[str, float]:
        stats: Dict[str, float] = {}
        intervals = self._scheduler_intervals(trainer)
        for i, optimizer in enumerate(trainer.optimizers):
            own = intervals.get(i)
            # Optimizers without a scheduler change lr only if the user does it: log per step.
            if interval != "any" and (own or "step") != interval:
                continue
            names = self._names[i] if i < len(self._names) else []
            for group, name in zip(optimizer.param_groups, names):
                lr = float(group["lr"])
                self.lrs.setdefault(name, []).append(lr)
                stats[name] = lr
                if self.log_momentum:
                    if "betas" in group:
                        momentum: Optional[float] = float(group["betas"][0])
                    else:
                        momentum = float(group["momentum"]) if "momentum" in group else 0.0
                    self.last_momentum_values[f"{name}-momentum"] = momentum
                    stats[f"{name}-momentum"] = momentum
                if self.log_weight_decay and "weight_decay" in group:
                    wd = float(group["weight_decay"])
                    self.last_weight_decay_values[f"{name}-weight_decay"] = wd
                    stats[f"{name}-weight_decay"] = wd
        return stats

    def _find_names(self, trainer: "Trainer") -> List[List[str]]:
        optimizers = list(trainer.optimizers)
        custom: Dict[int, str] = {}  # a scheduler config's `name` renames its optimizer
        for config in trainer.lr_scheduler_configs or []:
            if getattr(config, "name", None):
                for i, candidate in enumerate(optimizers):
                    if candidate is config.scheduler.optimizer:
                        custom[i] = config.name
        names: List[List[str]] = []
        seen: Set[str] = set()
        counts: Dict[str, int] = defaultdict(int)
        for i, optimizer in enumerate(optimizers):
            base = custom.get(i) or f"lr-{type(optimizer).__name__}"
            count = counts[base]
            counts[base] += 1
            name = base if count == 0 else f"{base}-{count}"
            groups = optimizer.param_groups
            if len(groups) == 1:
                group_names = [name]
            else:
                group_names = [f"{name}/{g['name']}" if "name" in g else f"{name}/pg{j + 1}" for j, g in enumerate(groups)]
            for n in group_names:
                if n in seen:
                    raise ValueError(f"LearningRateMonitor: two param groups would both be logged as {n!r}")
                seen.add(n)
            names.append(group_names)
        return names
