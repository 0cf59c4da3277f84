"""What ``self.log`` records, and how it becomes the three metric dicts.

Values stay detached tensors on their device: a ``self.log`` call is a dict
update, never a host sync. Epoch aggregates are running (sum, weight) tensors.
``sync_dist`` values are reduced together, one collective per reduce op, at
the points where they are read for loggers (every ``log_every_n_steps``) and at
the end of each epoch. Python floats exist only in what loggers receive and
in ``progress_bar_metrics``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import torch

if TYPE_CHECKING:  # pragma: no cover
    from volt.strategies.strategy import Strategy

REDUCE_FXS = ("mean", "sum", "max", "min")

# (on_step, on_epoch) defaults per hook, as Lightning 2.x documents them.
_STEP = (True, False)
_EPOCH = (False, True)
LOG_DEFAULTS: Dict[str, Tuple[bool, bool]] = {
    **{fx: _STEP for fx in (
        "training_step", "training_step_end", "on_train_batch_start", "on_train_batch_end",
        "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step",
        "optimizer_step", "on_before_zero_grad", "optimizer_zero_grad", "lr_scheduler_step",
        "on_batch_start", "on_batch_end", "configure_gradient_clipping", "clip_gradients",
    )},
    **{fx: _EPOCH for fx in (
        "on_train_start", "on_train_epoch_start", "on_train_epoch_end", "training_epoch_end",
        "on_epoch_start", "on_epoch_end",
        "validation_step", "validation_step_end", "validation_epoch_end", "on_validation_start",
        "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
        "on_validation_batch_start", "on_validation_batch_end", "on_validation_model_eval",
        "on_validation_model_train",
        "test_step", "test_step_end", "test_epoch_end", "on_test_start", "on_test_end",
        "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start", "on_test_batch_end",
        "on_test_model_eval", "on_test_model_train",
    )},
}


@dataclass
class LoggedMetric:
    """One logged name: its options, last step value and running epoch aggregate."""

    name: str
    prog_bar: bool
    logger: bool
    on_step: bool
    on_epoch: bool
    reduce_fx: str
    sync_dist: bool
    step_value: Optional[torch.Tensor] = None
    step_fresh: bool = False  # logged since the last logger flush
    total: Optional[torch.Tensor] = None
    weight: float = 0.0
    epoch_value: Optional[torch.Tensor] = None
    metric_object: Any = None  # a torchmetrics-like object with compute()/reset()
    # sync_dist under DDP: the epoch value reduced across ranks from the current total (None once it changes)
    synced_epoch_value: Optional[torch.Tensor] = None
    # LightningModule.log's arguments (and hook) of the last call that logged a float scalar tensor:
    # a repeat of the same call (every step) skips resolving and checking the options again
    fast_key: Optional[Tuple[Any, ...]] = None

    def update_epoch(self, value: torch.Tensor, batch_size: int) -> None:
        self.synced_epoch_value = None
        fx = self.reduce_fx
        if fx == "mean":
            contrib = value * batch_size
            self.total = contrib if self.total is None else self.total + contrib
            self.weight += batch_size
        elif fx == "sum":
            self.total = value if self.total is None else self.total + value
        elif fx == "max":
            self.total = value if self.total is None else torch.maximum(self.total, value)
        else:
            self.total = value if self.total is None else torch.minimum(self.total, value)


class ResultCollection:
    """The metrics logged during one loop (training, validation, test)."""

    def __init__(self) -> None:
        self.metrics: Dict[str, LoggedMetric] = {}

    def log(
        self,
        fx: str,
        name: str,
        value: Any,
        prog_bar: bool,
        logger: bool,
        on_step: Optional[bool],
        on_epoch: Optional[bool],
        reduce_fx: Any,
        sync_dist: bool,
        batch_size: Optional[int],
        batch_size_fn: Callable[[], int],
        strategy: "Strategy",
        fast_key: Optional[Tuple[Any, ...]] = None,
    ) -> None:
        """Resolve and check the options of a ``self.log`` call and record its value (no host sync).

        ``fast_key`` (from LightningModule.log) is kept on the metric when the value is a float
        scalar tensor: the next identical call records its value without coming here, see
        ``LightningModule.log``. ``strategy.root_device`` is read only for a Python number.
        """
        m = self.metrics.get(name)
        defaults = LOG_DEFAULTS.get(fx)
        if defaults is None:
            raise RuntimeError(
                f"self.log({name!r}) was called from {fx!r}, where logging is not supported; "
                "log from a *_step method or an on_*_batch/epoch hook"
            )
        on_step = defaults[0] if on_step is None else bool(on_step)
        on_epoch = defaults[1] if on_epoch is None else bool(on_epoch)
        if reduce_fx not in REDUCE_FXS:
            reduce_fx = _reduce_fx_name(name, reduce_fx)
        metric_object = None
        if isinstance(value, torch.Tensor):
            if value.ndim == 0 and value.is_floating_point():  # the common case, _as_scalar_tensor inlined
                value = value.detach()
            else:
                value = _as_scalar_tensor(name, value, None)
        elif hasattr(value, "compute") and hasattr(value, "update"):
            metric_object, value = value, None  # torchmetrics-style: compute() at epoch end
        else:
            value = _as_scalar_tensor(name, value, strategy.root_device)
        if m is None:
            m = LoggedMetric(name, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist)
            self.metrics[name] = m
        elif m.on_step != on_step or m.on_epoch != on_epoch or m.reduce_fx != reduce_fx:
            raise ValueError(
                f"self.log({name!r}) was called with on_step={on_step}, on_epoch={on_epoch}, "
                f"reduce_fx={reduce_fx!r}, but earlier in this loop with on_step={m.on_step}, "
                f"on_epoch={m.on_epoch}, reduce_fx={m.reduce_fx!r}; use one set of options per name"
            )
        m.prog_bar, m.logger, m.sync_dist = prog_bar, logger, sync_dist
        if metric_object is not None:
            m.metric_object = metric_object
            m.fast_key = None
            if on_step:  # the batch value of the object's last forward() (torchmetrics keeps it), as Lightning
                cache = getattr(metric_object, "_forward_cache", None)
                if isinstance(cache, torch.Tensor) and cache.numel() == 1:
                    m.step_value = _as_scalar_tensor(name, cache, None)
                    m.step_fresh = True
                    m.epoch_value = None  # ``name`` is the step value again until the epoch's end, as in Lightning
            return
        m.fast_key = fast_key
        if on_step:
            m.step_value = value
            m.step_fresh = True
            m.epoch_value = None
        if on_epoch:
            if batch_size is None and reduce_fx == "mean":
                batch_size = batch_size_fn()
            m.update_epoch(value, batch_size or 1)

    # --- reading -----------------------------------------------------------
    def step_metrics(self, strategy: Optional["Strategy"]) -> Dict[str, LoggedMetric]:
        """Step values logged since the last call, with one fused reduction for sync_dist."""
        fresh = [m for m in self.metrics.values() if m.on_step and m.step_fresh and m.step_value is not None]
        if strategy is not None and strategy.world_size > 1:
            _sync_step_values([m for m in fresh if m.sync_dist], strategy)
        for m in fresh:
            m.step_fresh = False
        return {m.name: m for m in fresh}

    def sync_epoch(self, strategy: "Strategy") -> None:
        """Reduce the ``sync_dist`` epoch aggregates across ranks (one collective per reduce op) into
        ``synced_epoch_value``; those already reduced from their current total are not sent again."""
        stale = [m for m in self.metrics.values()
                 if m.on_epoch and m.sync_dist and m.total is not None and m.synced_epoch_value is None]
        if stale:
            for m, value in zip(stale, _synced_epoch_values(stale, strategy)):
                m.synced_epoch_value = value

    def compute_epoch(self, strategy: Optional["Strategy"]) -> None:
        """Turn running aggregates into ``epoch_value`` (one collective per reduce op, none for values
        ``sync_epoch`` already reduced)."""
        pending = [m for m in self.metrics.values() if m.on_epoch and (m.total is not None or m.metric_object)]
        distributed = strategy is not None and strategy.world_size > 1
        if distributed:
            self.sync_epoch(strategy)  # type: ignore[arg-type]
        for m in pending:
            if m.metric_object is not None:
                m.epoch_value = torch.as_tensor(m.metric_object.compute()).detach()
                if hasattr(m.metric_object, "reset"):
                    m.metric_object.reset()
            elif distributed and m.sync_dist:
                m.epoch_value = m.synced_epoch_value
            elif m.reduce_fx == "mean":
                m.epoch_value = m.total / max(m.weight, 1e-12)  # type: ignore[operator]
            else:
                m.epoch_value = m.total
            m.total, m.weight, m.synced_epoch_value = None, 0.0, None

    def reset(self) -> None:
        self.metrics.clear()


def forked_names(m: LoggedMetric) -> Tuple[str, str]:
    """Names for the step and epoch values: ``x_step``/``x_epoch`` when both are logged."""
    if m.on_step and m.on_epoch:
        return f"{m.name}_step", f"{m.name}_epoch"
    return m.name, m.name


_REDUCE_ALIASES = {torch.mean: "mean", torch.sum: "sum", torch.max: "max", torch.min: "min",
                   max: "max", min: "min", sum: "sum"}


def _reduce_fx_name(name: str, reduce_fx: Any) -> str:
    if reduce_fx in REDUCE_FXS:  # the common case: a string
        return reduce_fx
    reduce_fx = _REDUCE_ALIASES.get(reduce_fx, reduce_fx)
    if reduce_fx not in REDUCE_FXS:
        raise ValueError(f"self.log({name!r}, reduce_fx={reduce_fx!r}): reduce_fx must be one of {REDUCE_FXS}")
    return reduce_fx


def _as_scalar_tensor(name: str, value: Any, device: Optional[torch.device]) -> torch.Tensor:
    """``value`` as a detached 0-dim float tensor; ``device`` is where a Python number goes (unused for tensors)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"self.log({name!r}, value): value must be a scalar (one element), got a tensor of "
                f"shape {tuple(value.shape)}; reduce it first, e.g. value.mean()"
            )
        value = value.detach()
        if value.ndim:
            value = value.reshape(())
        if not value.is_floating_point():
            value = value.float()
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.generic) and not isinstance(value, np.bool_):
                return torch.tensor(float(value), device=device)
        except ImportError:
            pass
        raise TypeError(
            f"self.log({name!r}, value): value must be a number or a scalar tensor, got {type(value).__name__}"
        )
    return torch.tensor(float(value), device=device)


def _sync_step_values(metrics: List[LoggedMetric], strategy: "Strategy") -> None:
    by_op: Dict[str, List[LoggedMetric]] = {}
    for m in metrics:
        by_op.setdefault("sum" if m.reduce_fx == "sum" else m.reduce_fx, []).append(m)
    for op, group in by_op.items():
        stacked = torch.stack([m.step_value.float() for m in group])  # type: ignore[union-attr]
        reduced = strategy.reduce(stacked, reduce_op=op)
        for i, m in enumerate(group):
            m.step_value = reduced[i]


def _synced_epoch_values(metrics: List[LoggedMetric], strategy: "Strategy") -> List[torch.Tensor]:
    """The epoch values of ``metrics`` across ranks, in order; their totals are left as they are."""
    # A weighted mean across ranks is sum(totals) / sum(weights): one "sum" reduction
    # carries every mean's numerator and denominator and every sum.
    values: Dict[int, torch.Tensor] = {}
    sums = [m for m in metrics if m.reduce_fx in ("mean", "sum")]
    if sums:
        device = sums[0].total.device  # type: ignore[union-attr]
        rows = [m.total.float() for m in sums]  # type: ignore[union-attr]
        weights = torch.tensor([m.weight for m in sums], device=device, dtype=torch.float32)
        reduced = strategy.reduce(torch.cat([torch.stack(rows), weights]), reduce_op="sum")
        n = len(sums)
        for i, m in enumerate(sums):
            values[id(m)] = reduced[i] / torch.clamp(reduced[n + i], min=1e-12) if m.reduce_fx == "mean" else reduced[i]
    for op in ("max", "min"):
        group = [m for m in metrics if m.reduce_fx == op]
        if group:
            totals = torch.stack([m.total.float() for m in group])  # type: ignore[union-attr]
            reduced = strategy.reduce(totals, reduce_op=op)
            for i, m in enumerate(group):
                values[id(m)] = reduced[i]
    return [values[id(m)] for m in metrics]
