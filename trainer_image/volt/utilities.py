"""Small helpers shared by the engine: walking nested batches, rank-zero printing."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from volt.loggers.base import rank_zero_only  # noqa: F401  (1.x: pytorch_lightning.utilities.rank_zero_only)


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


def infer_batch_size(batch: Any) -> int:
    """Size of the first dimension of the first tensor found in ``batch`` (1 if none)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim > 0 else 1
    if isinstance(batch, Mapping):
        items: Sequence = list(batch.values())
    elif isinstance(batch, (list, tuple)):
        items = batch
    else:
        return 1
    for item in items:
        if isinstance(item, (torch.Tensor, Mapping, list, tuple)):
            return infer_batch_size(item)
    return 1


def is_overridden(name: str, obj: Any, base: type) -> bool:
    """True when ``type(obj)`` defines ``name`` differently from ``base``."""
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(base, name, None)


def loader_kwargs(loader: DataLoader) -> Dict[str, Any]:
    """The arguments that re-create ``loader`` (other than dataset and sampling), for a copy
    with another sampler or batch sampler."""
    kwargs: Dict[str, Any] = dict(
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        persistent_workers=loader.persistent_workers,
    )
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if getattr(loader, "pin_memory_device", ""):
        kwargs["pin_memory_device"] = loader.pin_memory_device
    return kwargs
