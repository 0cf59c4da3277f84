"""Wires a profiler into a run, only when one is set.

``instrument(trainer)`` binds profiled versions of the trainer's dispatch methods on the
instance (``call_hook``, ``call_callbacks``, ``call_module``, ``call_step``,
``_run_backward``, ``_optimizer_step``) for one run; ``uninstrument`` removes them. Without a
profiler nothing is bound, the class methods run, and the loops take their plain path: the
per-step code never asks "is a profiler on?". The loop-level actions (``run_training_epoch``,
``run_training_batch``, ``get_train_batch``, ``optimizer_step``, ...) are picked the same
way, once per epoch, through :func:`action` and :class:`ProfiledBatches`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Generic, Iterable, Iterator, List, Optional, TypeVar

from volt.profilers import PassThroughProfiler, Profiler

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer

T = TypeVar("T")

_BOUND = ("call_hook", "call_callbacks", "call_module", "call_step", "_run_backward", "_optimizer_step")


def is_active(trainer: "Trainer") -> bool:
    return not isinstance(trainer.profiler, PassThroughProfiler)


def instrument(trainer: "Trainer", stage: str) -> bool:
    """Set the profiler up for ``stage`` and bind the profiled dispatch; False (nothing done) without one."""
    profiler = trainer.profiler
    if not is_active(trainer):
        return False
    # the global rank names each DDP rank's report (pods on different nodes may share a volume)
    rank = trainer.global_rank if trainer.world_size > 1 else None
    profiler.setup(stage=stage, local_rank=rank, log_dir=_log_dir(trainer))
    cls = type(trainer)
    originals = {name: getattr(cls, name).__get__(trainer) for name in _BOUND}
    module_name = type(trainer.lightning_module_ref).__name__
    strategy_name = type(trainer.strategy).__name__
    keys: Dict[int, str] = {}  # callback id -> state_key, computed once per run

    def callback_key(cb: Any) -> str:
        key = keys.get(id(cb))
        if key is None:
            key = keys[id(cb)] = cb.state_key
        return key

    def call_callbacks(hook: str, *args: Any, only: Optional[List[Any]] = None) -> None:
        cbs = trainer.callbacks_for(hook) if only is None else only
        if not cbs:
            return
        connector = trainer._logger_connector
        prev, connector.fx = connector.fx, hook
        try:
            for cb in cbs:
                with profiler.profile(f"[Callback]{callback_key(cb)}.{hook}"):
                    getattr(cb, hook)(trainer, trainer.lightning_module_ref, *args)
        finally:
            connector.fx = prev

    def call_module(hook: str, *args: Any, always: bool = False, **kwargs: Any) -> Any:
        if not always and not trainer.module_overrides(hook):
            return None
        with profiler.profile(f"[LightningModule]{module_name}.{hook}"):
            return originals["call_module"](hook, *args, always=True, **kwargs)

    def call_hook(hook: str, *args: Any) -> Any:
        call_callbacks(hook, *args)
        return call_module(hook, *args)

    def call_step(name: str, *args: Any) -> Any:
        with profiler.profile(f"[LightningModule]{module_name}.{name}"):
            return originals["call_step"](name, *args)

    def run_backward(loss: Any, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        with profiler.profile(f"[Strategy]{strategy_name}.backward"):
            originals["_run_backward"](loss, optimizer, *args, **kwargs)

    def optimizer_step(optimizer: Any, closure: Any, **kwargs: Any) -> Any:
        with profiler.profile(f"[Strategy]{strategy_name}.optimizer_step"):
            return originals["_optimizer_step"](optimizer, closure, **kwargs)

    trainer.__dict__.update(call_hook=call_hook, call_callbacks=call_callbacks, call_module=call_module,
                            call_step=call_step, _run_backward=run_backward, _optimizer_step=optimizer_step)
    return True


def uninstrument(trainer: "Trainer") -> None:
    """Remove the profiled dispatch and write the report."""
    for name in _BOUND:
        trainer.__dict__.pop(name, None)
    trainer.profiler.describe()


def action(profiler: Profiler, name: str, fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` recorded as the action ``name`` on every call."""

    def profiled(*args: Any, **kwargs: Any) -> T:
        with profiler.profile(name):
            return fn(*args, **kwargs)

    return profiled


class ProfiledBatches(Generic[T]):
    """``loader`` with each ``next()`` on its iterator recorded as ``name`` (Lightning's ``get_train_batch``).

    Wraps the loader itself (not the loop's batch generator), so a loader of known length is
    fetched exactly once per batch and the report counts one call per step.
    """

    def __init__(self, profiler: Profiler, name: str, loader: Iterable[T]) -> None:
        self.profiler, self.name, self.loader = profiler, name, loader

    def __iter__(self) -> Iterator[T]:
        it = iter(self.loader)
        profile, name = self.profiler.profile, self.name
        while True:
            with profile(name):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def _log_dir(trainer: "Trainer") -> Optional[str]:
    try:
        return trainer.log_dir
    except Exception:  # no logger and no default_root_dir yet: the report goes to the log
        return None


__all__ = ["instrument", "uninstrument", "action", "ProfiledBatches", "is_active"]
