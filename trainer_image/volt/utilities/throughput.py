"""Counting a model's FLOPs (Lightning's ``utilities.measure_flops``)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode


def measure_flops(
    model: torch.nn.Module,
    forward_fn: Callable[[], torch.Tensor],
    loss_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> int:
    """FLOPs of ``forward_fn()`` (and, with ``loss_fn``, of the loss and the backward pass), counted by
    torch's FlopCounterMode. Build the model on the meta device to count without computing."""
    counter = FlopCounterMode(display=False)
    with counter:
        out = forward_fn()
        if loss_fn is not None:
            loss_fn(out).backward()
    return counter.get_total_flops()
