"""configure_optimizers in every Lightning form, scheduler configs, LightningOptimizer."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch.optim import Optimizer

from volt.utilities.types import LRSchedulerConfig

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer

_FORMS = (
    "an optimizer; a list/tuple of optimizers; a tuple ([optimizers], [schedulers]); "
    "a dict {'optimizer': opt, 'lr_scheduler': scheduler or {'scheduler': s, 'interval': 'epoch'|'step', "
    "'frequency': n, 'monitor': 'metric'}}; a list/tuple of such dicts; or None"
)
_SCHED_KEYS = {"scheduler", "interval", "frequency", "monitor", "strict", "name", "reduce_on_plateau", "opt_idx"}


def parse_optimizers(result: Any) -> Tuple[List[Optimizer], List[LRSchedulerConfig]]:
    """Turn configure_optimizers' return value into (optimizers, scheduler configs)."""
    if result is None:
        return [], []
    if _is_optimizer(result):
        return [result], []
    if isinstance(result, Mapping):
        return _from_dicts([result])
    if isinstance(result, (list, tuple)):
        items = list(result)
        if not items:
            raise ValueError(f"configure_optimizers() returned an empty {type(result).__name__}; return {_FORMS}")
        if all(isinstance(x, Mapping) for x in items):
            return _from_dicts(items)
        if all(_is_optimizer(x) for x in items):
            return items, []
        if len(items) == 2 and isinstance(items[0], (list, tuple)):
            opts = list(items[0])
            scheds_raw = items[1] if isinstance(items[1], (list, tuple)) else [items[1]]
            if all(_is_optimizer(o) for o in opts):
                return opts, [_scheduler_config(s) for s in scheds_raw]
    raise ValueError(f"configure_optimizers() returned an unsupported value ({_describe(result)}); return {_FORMS}")


def _from_dicts(dicts: Sequence[Mapping[str, Any]]) -> Tuple[List[Optimizer], List[LRSchedulerConfig]]:
    opts: List[Optimizer] = []
    scheds: List[LRSchedulerConfig] = []
    for d in dicts:
        unknown = set(d) - {"optimizer", "lr_scheduler", "frequency", "monitor"}
        if unknown:
            raise ValueError(f"configure_optimizers() dict has unknown keys {sorted(unknown)}; return {_FORMS}")
        if "optimizer" not in d or not _is_optimizer(d["optimizer"]):
            raise ValueError(f"configure_optimizers() dict needs an 'optimizer' key holding a torch optimizer; return {_FORMS}")
        opts.append(d["optimizer"])
        if d.get("lr_scheduler") is not None:
            cfg = _scheduler_config(d["lr_scheduler"], default_monitor=d.get("monitor"))
            scheds.append(cfg)
    return opts, scheds


def _scheduler_config(obj: Any, default_monitor: Optional[str] = None) -> LRSchedulerConfig:
    if isinstance(obj, Mapping):
        unknown = set(obj) - _SCHED_KEYS
        if unknown:
            raise ValueError(f"lr_scheduler dict has unknown keys {sorted(unknown)}; allowed: {sorted(_SCHED_KEYS - {'opt_idx'})}")
        if "scheduler" not in obj:
            raise ValueError("lr_scheduler dict must contain the key 'scheduler'")
        cfg = LRSchedulerConfig(
            scheduler=obj["scheduler"],
            name=obj.get("name"),
            interval=obj.get("interval", "epoch"),
            frequency=obj.get("frequency", 1),
            monitor=obj.get("monitor", default_monitor),
            strict=obj.get("strict", True),
        )
    else:
        cfg = LRSchedulerConfig(scheduler=obj, monitor=default_monitor)
    if not hasattr(cfg.scheduler, "step"):
        raise ValueError(f"lr_scheduler must be a scheduler with step(), got {type(cfg.scheduler).__name__}")
    if cfg.interval not in ("epoch", "step"):
        raise ValueError(f"lr_scheduler 'interval' must be 'epoch' or 'step', got {cfg.interval!r}")
    if isinstance(cfg.frequency, bool) or not isinstance(cfg.frequency, int) or cfg.frequency < 1:
        raise ValueError(f"lr_scheduler 'frequency' must be a positive int, got {cfg.frequency!r}")
    cfg.reduce_on_plateau = isinstance(cfg.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if cfg.reduce_on_plateau and cfg.monitor is None:
        raise ValueError(
            "ReduceLROnPlateau needs a metric: return {'optimizer': opt, 'lr_scheduler': "
            "{'scheduler': sched, 'monitor': 'val_loss'}} from configure_optimizers()"
        )
    return cfg


def _is_optimizer(obj: Any) -> bool:
    return isinstance(obj, Optimizer) or (hasattr(obj, "step") and hasattr(obj, "zero_grad") and hasattr(obj, "param_groups"))


def _describe(obj: Any) -> str:
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__} of {[type(x).__name__ for x in obj]}"
    return type(obj).__name__


def do_nothing_closure() -> None:
    """A closure for ``optimizer.step(closure)`` that computes nothing (Lightning's name)."""
    return None


class LightningOptimizer:
    """Wraps a torch optimizer so that ``step()`` goes through the trainer (precision, hooks, counters)."""

    def __init__(self, optimizer: Optimizer, trainer: "Trainer") -> None:
        self._optimizer = optimizer
        self._trainer = trainer

    @property
    def optimizer(self) -> Optimizer:
        return self._optimizer

    def step(self, closure: Optional[Callable[[], Any]] = None, **kwargs: Any) -> Any:
        """Step through the precision plugin; with no closure (manual optimization) hooks run first."""
        return self._trainer._optimizer_step(self._optimizer, closure, **kwargs)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> Dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state)

    @property
    def param_groups(self) -> List[Dict[str, Any]]:
        return self._optimizer.param_groups

    @property
    def state(self) -> Any:
        return self._optimizer.state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._optimizer, name)

    def __repr__(self) -> str:
        return f"LightningOptimizer({self._optimizer!r})"
