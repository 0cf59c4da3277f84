"""Batches and DataLoaders: a batch's size, the arguments that re-create a loader."""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

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


#: Lightning's name (``lightning.pytorch.utilities.data.extract_batch_size``).
extract_batch_size = infer_batch_size


def suggested_max_num_workers(local_world_size: int) -> int:
    """An upper bound for ``DataLoader(num_workers=...)``: the CPUs this process may use, shared by the
    ``local_world_size`` processes of this machine, less one for each main process (Lightning's rule)."""
    if local_world_size < 1:
        raise ValueError(f"suggested_max_num_workers: local_world_size must be >= 1, got {local_world_size}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // local_world_size - 1)
