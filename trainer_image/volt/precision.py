"""Numeric precision: parse the Trainer's ``precision``/``amp_level`` and apply it.

Canonical names follow Lightning 2.x: ``"64-true"``, ``"32-true"``,
``"16-mixed"``, ``"bf16-mixed"``, ``"16-true"``, ``"bf16-true"``. The 1.x forms
(``32``, ``16``, ``"16"``, ``"bf16"``, ``amp_level="O1"``) map onto them.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, ContextManager, Dict, Optional, Union

import torch
from torch import nn

from volt.utilities import apply_to_tensors

log = logging.getLogger(__name__)

PRECISIONS = ("64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")

_ALIASES: Dict[Any, str] = {
    64: "64-true", "64": "64-true", "64-true": "64-true",
    32: "32-true", "32": "32-true", "32-true": "32-true",
    16: "16-mixed", "16": "16-mixed", "16-mixed": "16-mixed",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "16-true": "16-true", "bf16-true": "bf16-true",
}

# apex opt levels (1.x ``amp_level``); they mean something only to apex, which volt does not run.
AMP_LEVELS = ("O0", "O1", "O2", "O3")

_TRUE_DTYPES = {"64-true": torch.float64, "16-true": torch.float16, "bf16-true": torch.bfloat16}


def parse_precision(
    precision: Union[int, str, None] = None,
    amp_level: Optional[str] = None,
    amp_backend: Optional[str] = None,
) -> str:
    """Return the canonical precision name, or raise ValueError naming the bad argument.

    ``precision=None`` means "not given" (32-true). ``amp_level`` is the 1.x apex opt level: as in
    Lightning 1.x it applies only with ``amp_backend='apex'`` (which volt does not support), and
    with the native backend it is ignored with a logged note, so 1.x's printed defaults
    (``precision=32, amp_backend='native', amp_level='O2'``) construct.
    """
    if amp_level is not None and amp_level not in AMP_LEVELS:
        raise ValueError(f"amp_level must be one of {sorted(AMP_LEVELS)}, got {amp_level!r}")
    if amp_backend not in (None, "native"):
        if amp_backend == "apex":
            level = f" (with amp_level={amp_level!r})" if amp_level is not None else ""
            raise ValueError(
                f"amp_backend='apex'{level} is not supported: NVIDIA apex is deprecated. "
                "Use native mixed precision, e.g. Trainer(precision='16-mixed') or 'bf16-mixed'."
            )
        raise ValueError(f"amp_backend must be 'native' (or None), got {amp_backend!r}")
    if isinstance(precision, bool):
        raise TypeError(f"precision must be an int or str, got bool {precision!r}")
    canonical = "32-true"
    if precision is not None:
        key = precision.strip().lower() if isinstance(precision, str) else precision
        if key not in _ALIASES:
            raise ValueError(
                f"precision={precision!r} is not supported; choose one of "
                "64, 32, 16, 'bf16', '64-true', '32-true', '16-mixed', 'bf16-mixed', '16-true', 'bf16-true'"
            )
        canonical = _ALIASES[key]
    if amp_level is not None:
        log.info("amp_level=%r is ignored: it applies only to amp_backend='apex' (as in Lightning 1.x); "
                 "precision is %r", amp_level, canonical)
    return canonical


class Precision:
    """Applies one precision: module dtype, autocast, loss scaling and the optimizer step."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.device = torch.device(device)
        self._autocast_dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
        self.scaler: Optional[torch.amp.GradScaler] = None
        if precision == "16-mixed":
            # fp16 gradients underflow without loss scaling; bf16 has fp32's range.
            self.scaler = torch.amp.GradScaler(self.device.type)

    @property
    def mixed(self) -> bool:
        return self.precision.endswith("-mixed")

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return self._autocast_dtype

    @property
    def param_dtype(self) -> torch.dtype:
        return _TRUE_DTYPES.get(self.precision, torch.float32)

    def convert_module(self, module: nn.Module) -> nn.Module:
        """Cast parameters for the ``*-true`` precisions; mixed keeps fp32 weights."""
        dtype = _TRUE_DTYPES.get(self.precision)
        return module.to(dtype=dtype) if dtype is not None else module

    def convert_input(self, batch: Any) -> Any:
        """Cast floating tensors in a batch to the parameter dtype (``*-true`` only)."""
        dtype = _TRUE_DTYPES.get(self.precision)
        if dtype is None:
            return batch
        return apply_to_tensors(batch, lambda t: t.to(dtype) if t.is_floating_point() else t)

    def forward_context(self) -> ContextManager:
        """Context for every step call: autocast under the mixed precisions."""
        dtype = self._autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def backward(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        if self.scaler is not None:
            tensor = self.scaler.scale(tensor)
        tensor.backward(*args, **kwargs)

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide gradients by the loss scale (before clipping or inspecting them)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        closure: Optional[Callable[[], Any]] = None,
        after_closure: Optional[Callable[[], None]] = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``closure`` (forward + backward), then ``after_closure`` (hooks, clipping), then step.

        The closure runs first (LBFGS, which re-evaluates it, gets it passed into
        ``step``). With loss scaling the gradients are unscaled before
        ``after_closure`` sees them, and the step is skipped when the closure
        produced no loss.
        """
        if self.scaler is None:
            if isinstance(optimizer, torch.optim.LBFGS):  # re-evaluates the closure inside step()

                def wrapped() -> Any:
                    result = closure() if closure is not None else None
                    if after_closure is not None:
                        after_closure()
                    return result

                return optimizer.step(closure=wrapped, **kwargs)
            # Forward/backward outside optimizer.step(): running them inside its
            # grad-mode and profiler wrappers measurably slows small steps.
            closure_result = closure() if closure is not None else None
            if after_closure is not None:
                after_closure()
            out = optimizer.step(**kwargs)
            return closure_result if out is None else out
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError("precision='16-mixed' cannot drive LBFGS (its closure re-runs under a loss scaler); use 32 or bf16-mixed")
        closure_result = closure() if closure is not None else None
        self.scaler.unscale_(optimizer)
        if after_closure is not None:
            after_closure()
        if closure is not None and closure_result is None:
            return None  # training_step returned None: nothing was backpropagated
        out = self.scaler.step(optimizer, **kwargs)
        self.scaler.update()
        return out

    def state_dict(self) -> Dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
