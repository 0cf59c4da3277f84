"""ModelSummary: print a table of the model's layers and parameter counts at fit start."""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Dict, List

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


UNKNOWN_SIZE = "?"


def _sizes(value: Any) -> Any:
    """Shapes of the tensors in ``value``: ``[8, 4]``, or nested lists for tuples of tensors."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, (list, tuple)):
        return [_sizes(v) for v in value]
    return UNKNOWN_SIZE


@dataclass(frozen=True)
class LayerSummary:
    name: str
    type: str
    params: int
    mode: str  # "train" or "eval"
    in_sizes: Any = UNKNOWN_SIZE
    out_sizes: Any = UNKNOWN_SIZE


def _forward_sizes(module: nn.Module, layers: Dict[str, nn.Module], example: Any) -> Dict[str, Any]:
    """In/out sizes of ``layers`` during one forward pass of ``example`` (no grad, eval mode)."""
    from volt.utilities import move_data_to_device

    recorded: Dict[str, Any] = {}
    handles = []
    for name, layer in layers.items():
        def hook(_m: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
            inputs = inputs[0] if isinstance(inputs, tuple) and len(inputs) == 1 else inputs
            recorded[name] = (_sizes(inputs), _sizes(output))

        handles.append(layer.register_forward_hook(hook))
    modes = {m: m.training for m in module.modules()}
    try:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        example = move_data_to_device(example, device)
        module.eval()
        with torch.no_grad():
            if isinstance(example, (list, tuple)):
                module(*example)
            elif isinstance(example, dict):
                module(**example)
            else:
                module(example)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    return recorded


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
        self.has_sizes = False
        if max_depth == 0:
            return
        chosen: Dict[str, nn.Module] = {}
        for name, sub in module.named_modules():
            if not name:
                continue
            depth = name.count(".") + 1
            if max_depth != -1 and depth > max_depth:
                continue
            chosen[name] = sub
            self.layers.append(
                LayerSummary(
                    name=name,
                    type=type(sub).__name__,
                    params=_num_params(list(sub.parameters())),
                    mode="train" if sub.training else "eval",
                )
            )
        example = getattr(module, "example_input_array", None)
        if example is not None:
            try:
                sizes = _forward_sizes(module, chosen, example)
            except Exception as err:  # noqa: BLE001 - a summary must never stop training
                warnings.warn(f"ModelSummary: forward pass on example_input_array failed, sizes omitted: {err}")
            else:
                self.has_sizes = True
                self.layers = [
                    replace(layer, in_sizes=sizes[layer.name][0], out_sizes=sizes[layer.name][1])
                    if layer.name in sizes else layer
                    for layer in self.layers
                ]

    @property
    def non_trainable_parameters(self) -> int:
        return self.total_parameters - self.trainable_parameters

    @property
    def model_size_mb(self) -> float:
        return self.model_size_bytes / 1e6

    def __str__(self) -> str:
        header = ["", "Name", "Type", "Params", "Mode"]
        rows = [[str(i), layer.name, layer.type, human_readable_count(layer.params), layer.mode] for i, layer in enumerate(self.layers)]
        if self.has_sizes:
            header += ["In sizes", "Out sizes"]
            for row, layer in zip(rows, self.layers):
                row += [str(layer.in_sizes), str(layer.out_sizes)]
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

    ``max_depth=1`` (1.x's ``weights_summary="top"``) lists direct children;
    ``-1`` (``"full"``) lists every module.
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(max_depth, int) or isinstance(max_depth, bool) or max_depth < -1:
            raise ValueError(f"ModelSummary(max_depth={max_depth!r}) must be an int >= -1")
        self._max_depth = max_depth
        # Lightning hands these to a subclass's summarize() (the rich table's styles); volt's
        # one table has no options, so they are kept for subclasses and otherwise unused.
        self._summarize_kwargs: Dict[str, Any] = summarize_kwargs
        self.summary: Summary | None = None

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._max_depth == 0 or not trainer.is_global_zero:
            return
        self.summary = summarize(pl_module, self._max_depth)
        print(self.summary)
