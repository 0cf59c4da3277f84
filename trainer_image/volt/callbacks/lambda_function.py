"""LambdaCallback: a callback made of plain functions, one per hook (Lightning's)."""
from __future__ import annotations

from typing import Any, Callable

from volt.callbacks.base import Callback

# Callback members that are not hooks: state handling is the class's business, not a lambda's.
_NOT_HOOKS = frozenset({"state_key", "state_dict", "load_state_dict"})


class LambdaCallback(Callback):
    """``LambdaCallback(on_train_epoch_end=lambda trainer, pl_module: ...)``: each keyword names a hook.

    The Trainer dispatches a hook only to callbacks whose class overrides it (decided once
    per run), so the functions become the methods of a class made for this instance.
    """

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        for name, fn in hooks.items():
            if name.startswith("_") or name in _NOT_HOOKS or not callable(getattr(Callback, name, None)):
                raise TypeError(f"LambdaCallback({name}=...): {name!r} is not a Callback hook")
            if not callable(fn):
                raise TypeError(f"LambdaCallback({name}=...) must be a function, got {type(fn).__name__}")
        methods = {name: _as_method(fn) for name, fn in hooks.items()}
        self.__class__ = type("LambdaCallback", (LambdaCallback,), methods)


def _as_method(fn: Callable[..., Any]) -> Callable[..., Any]:
    def hook(self: Callback, *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    hook.__name__ = getattr(fn, "__name__", "hook")
    return hook
