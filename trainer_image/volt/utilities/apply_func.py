"""Walking nested batches: apply a function to every tensor, move a batch to a device."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Tuple, Union

import torch


def apply_to_tensors(data: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in a nested structure of dicts, lists, tuples, dataclasses."""
    if isinstance(data, torch.Tensor):
        return fn(data)
    kind = type(data)
    if kind is tuple or kind is list:  # the common batch shapes, without the generic checks below
        return kind([apply_to_tensors(v, fn) for v in data])
    if kind is dict:
        return {k: apply_to_tensors(v, fn) for k, v in data.items()}
    if isinstance(data, Mapping):
        out = {k: apply_to_tensors(v, fn) for k, v in data.items()}
        if type(data) is dict:
            return out
        try:  # keep OrderedDict, defaultdict-free mappings, BatchEncoding-like types
            return type(data)(out)
        except TypeError:
            return out
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply_to_tensors(v, fn) for v in data))
    if isinstance(data, (list, tuple)):
        return type(data)(apply_to_tensors(v, fn) for v in data)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {f.name: apply_to_tensors(getattr(data, f.name), fn) for f in dataclasses.fields(data) if f.init}
        return dataclasses.replace(data, **changes)
    return data


def move_data_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in ``batch`` to ``device`` (non-blocking from pinned memory)."""
    if type(batch) is tuple or type(batch) is list:  # pre-placed batches (the common case on GPU loaders)
        for item in batch:
            if not isinstance(item, torch.Tensor) or item.device != device:
                break
        else:
            return batch
    non_blocking = device.type == "cuda"
    return apply_to_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))


def apply_to_collection(
    data: Any,
    dtype: Union[type, Tuple[type, ...]],
    function: Callable[..., Any],
    *args: Any,
    wrong_dtype: Optional[Union[type, Tuple[type, ...]]] = None,
    include_none: bool = True,
    **kwargs: Any,
) -> Any:
    """``function(x, *args, **kwargs)`` for every ``x`` of type ``dtype`` in a nested collection
    (``lightning_utilities.apply_to_collection``'s contract: dicts, lists, tuples, namedtuples and
    dataclasses keep their type; with ``include_none=False`` results that are None are dropped)."""
    if isinstance(data, dtype) and (wrong_dtype is None or not isinstance(data, wrong_dtype)):
        return function(data, *args, **kwargs)

    def again(value: Any) -> Any:
        return apply_to_collection(value, dtype, function, *args, wrong_dtype=wrong_dtype,
                                   include_none=include_none, **kwargs)

    if isinstance(data, Mapping):
        pairs = [(k, again(v)) for k, v in data.items()]
        out = {k: v for k, v in pairs if include_none or v is not None}
        try:
            return type(data)(out)
        except TypeError:  # mappings that cannot be built from a dict
            return out
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(again(v) for v in data))
    if isinstance(data, (list, tuple, set)):
        values = [again(v) for v in data]
        return type(data)(v for v in values if include_none or v is not None)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        changes = {f.name: again(getattr(data, f.name)) for f in dataclasses.fields(data) if f.init}
        return dataclasses.replace(data, **changes)
    return data
