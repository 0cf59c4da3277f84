"""ModelSummary: print a table of the model's layers and parameter counts at fit start."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, List

import torch
from torch import nn

from volt.callbacks.base import Callback

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

_UNITS = ["", "K", "M", "B", "T"]


def human_readable_count(number: int) -> str:
    """``123 -> '123'``, ``1234 -> '1.2 K'``, ``2e6 -> '2.0 M'``."""
    if number < 1000:
        return str(int(number))
    value = float(number)
    unit = 0
    while value >= 1000 and unit < len(_UNITS) - 1:
        value /= 1000
        unit += 1
    return f"{value:,.1f} {_UNITS[unit]}"


def _num_params(params: List[nn.Parameter]) -> int:
    # Lazy modules have no shape yet: count them as 0 rather than failing.
    return sum(0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel() for p in params)


@dataclass(frozen=True)
class LayerSummary:
    name: str
    type: str
    params: int
    mode: str  # "train" or "eval"


class Summary:
    """The summary of ``module`` down to ``max_depth`` levels (-1: every module, 0: none)."""

    def __init__(self, module: nn.Module, max_depth: int = 1) -> None:
        if not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}) must be an int >= -1")
        self.max_depth = max_depth
        params = list(module.parameters())
        self.total_parameters = _num_params(params)
        self.trainable_parameters = _num_params([p for p in params if p.requires_grad])
        # Bytes of parameters as stored (bf16 weights count 2 bytes each).
        self.model_size_bytes = sum(
            0 if isinstance(p, nn.parameter.UninitializedParameter) else p.numel() * p.element_size() for p in params
        )
        self.layers: List[LayerSummary] = []
        if max_depth == 0:
            return
        for name, sub in module.named_modules():
            if not name:
                continue
            depth = name.count(".") + 1
            if max_depth != -1 and depth > max_depth:
                continue
            self.layers.append(
                LayerSummary(
                    name=name,
                    type=type(sub).__name__,
                    params=_num_params(list(sub.parameters())),
                    mode="train" if sub.training else "eval",
                )
            )

    @property
    def non_trainable_parameters(self) -> int:
        return self.total_parameters - self.trainable_parameters

    @property
    def model_size_mb(self) -> float:
        return self.model_size_bytes / 1e6

    def __str__(self) -> str:
        header = ["", "Name", "Type", "Params", "Mode"]
        rows = [[str(i), layer.name, layer.type, human_readable_count(layer.params), layer.mode] for i, layer in enumerate(self.layers)]
        widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
        fmt = lambda r: " | ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()  # noqa: E731
        lines = []
        if rows:
            head = fmt(header)
            rule = "-" * len(head)
            lines += [head, rule] + [fmt(r) for r in rows] + [rule]
        totals = [
            (human_readable_count(self.trainable_parameters), "Trainable params"),
            (human_readable_count(self.non_trainable_parameters), "Non-trainable params"),
            (human_readable_count(self.total_parameters), "Total params"),
            (f"{self.model_size_mb:,.3f}", "Total estimated model params size (MB)"),
        ]
        lines += [f"{value:<10}{label}" for value, label in totals]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def summarize(module: nn.Module, max_depth: int = 1) -> Summary:
    """Summary of ``module``'s layers (``max_depth`` levels) and parameter counts."""
    return Summary(module, max_depth)


class ModelSummary(Callback):
    """Log the model summary table on global rank 0 when ``fit`` starts.

    ``max_depth=1`` (the seed's ``weights_summary="top"``) lists direct children;
    ``-1`` (``"full"``) lists every module.
    """

    def __init__(self, max_depth: int = 1) -> None:
        super().__init__()
        if not isinstance(max_depth, int) or isinstance(max_depth, bool) or max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}) must be an int >= -1")
        self._max_depth = max_depth
        self.summary: Summary | None = None

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._max_depth == 0 or not trainer.is_global_zero:
            return
        self.summary = summarize(pl_module, self._max_depth)
        print(self.summary)
