"""Dataloaders: where each stage's loaders come from, how long they are, limits."""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Iterator, List, Mapping, Tuple, Union

from torch.utils.data import DataLoader, RandomSampler

from volt.utilities.combined_loader import CombinedLoader

Number = Union[int, float]
INF = float("inf")


def defines(obj: Any, method: str, base: type) -> bool:
    """True when ``obj`` provides ``method`` itself (overridden in its class, or set on the instance)."""
    if obj is None:
        return False
    if method in getattr(obj, "__dict__", {}):
        return True
    impl = getattr(type(obj), method, None)
    return impl is not None and impl is not getattr(base, method, None)


def as_loader_list(loaders: Any) -> List[Iterable]:
    """A list of loaders: a list/tuple of DataLoaders is several, any other iterable is one."""
    if loaders is None:
        return []
    if isinstance(loaders, (list, tuple)) and loaders and all(isinstance(x, DataLoader) for x in loaders):
        return list(loaders)
    if not hasattr(loaders, "__iter__"):
        raise TypeError(
            f"a dataloader must be an iterable (a torch DataLoader or any iterable of batches), got {type(loaders).__name__}"
        )
    return [loaders]


def stage_loaders(loaders: Any, stage: str) -> List[Iterable]:
    """The loaders ``stage`` (train|val|test|predict) iterates, as Lightning reads a collection of them:
    training combines a dict/list of loaders into one (``CombinedLoader(mode="max_size_cycle")``, one
    batch of each per step); evaluation and prediction run each loader in turn (``dataloader_idx``).
    A CombinedLoader given by the user keeps its mode; ``sequential`` cannot train."""
    if isinstance(loaders, CombinedLoader):
        if loaders.mode == "sequential":
            if stage == "train":
                raise ValueError(
                    "fit() cannot train on CombinedLoader(mode='sequential'); use 'max_size_cycle', 'min_size' or "
                    "'max_size' (one batch of every loader per step)"
                )
            return list(loaders.flattened)
        return [loaders]
    if _is_collection_of_loaders(loaders):
        if stage == "train":
            return [CombinedLoader(loaders, "max_size_cycle")]
        return list(loaders.values()) if isinstance(loaders, Mapping) else list(loaders)
    return as_loader_list(loaders)


def _is_collection_of_loaders(loaders: Any) -> bool:
    values = list(loaders.values()) if isinstance(loaders, Mapping) else loaders
    if not isinstance(loaders, (Mapping, list, tuple)) or not values:
        return False
    return all(isinstance(v, DataLoader) or isinstance(v, CombinedLoader) for v in values)


def prepare_loaders(loaders: List[Iterable], stage: str, process: Callable[[Iterable, str], Iterable]) -> List[Iterable]:
    """``process`` (the strategy's sampler injection) applied to every loader, inside a CombinedLoader
    too; a CombinedLoader is then iterated as its batches alone."""
    out: List[Iterable] = []
    for loader in loaders:
        if isinstance(loader, CombinedLoader):  # a copy: the user's object keeps the loaders it was given
            combined = CombinedLoader(loader.iterables, loader.mode)
            combined.limits = loader.limits
            combined.flattened = [process(inner, stage) for inner in loader.flattened]
            out.append(combined.batches())
        else:
            out.append(process(loader, stage))
    return out


def loader_length(loader: Iterable) -> float:
    """``len(loader)``, or infinity for iterables without a length (e.g. IterableDataset)."""
    try:
        return float(len(loader))  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return INF


def limited_length(name: str, stage_arg: str, loader: Iterable, limit: Number) -> float:
    """How many batches of ``loader`` a stage runs under ``limit`` (int count or float fraction)."""
    length = loader_length(loader)
    if length == 0:
        raise ValueError(
            f"the {name} has length 0: its dataset is empty, or smaller than batch_size with drop_last=True. "
            "Give it data or lower batch_size"
        )
    if isinstance(limit, int):
        return float(min(length, limit))
    if limit == 1.0:
        return length
    if length == INF:
        raise ValueError(
            f"Trainer({stage_arg}={limit}) is a fraction, but the {name} has no length; "
            f"pass an int number of batches instead"
        )
    n = int(length * limit)
    if n == 0 and limit > 0:
        raise ValueError(
            f"Trainer({stage_arg}={limit}) selects 0 of the {name}'s {int(length)} batches; "
            "raise it or pass an int number of batches"
        )
    return float(n)


def without_shuffle(loader: Iterable) -> Iterable:
    """The same DataLoader iterated in order (for overfit_batches); other iterables unchanged."""
    if not isinstance(loader, DataLoader) or not isinstance(loader.sampler, RandomSampler):
        return loader
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers if loader.num_workers > 0 else False,
    )


def set_sampler_epoch(loader: Iterable, epoch: int) -> None:
    """Call ``set_epoch`` on the loader's sampler(s) so DistributedSampler reshuffles each epoch."""
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


def iterate(loader: Iterable, limit: float, skip: int = 0, skipped: bool = False) -> Iterator[Tuple[int, Any, bool]]:
    """Yield ``(batch_idx, batch, is_last)`` for at most ``limit`` batches, starting after ``skip``.

    ``skipped``: ``loader`` already starts after ``skip`` batches (exact resume); only count them.
    ``is_last`` needs a lookahead only when the length is unknown.
    """
    it = iter(loader)
    if skip and not skipped:
        for _ in itertools.islice(it, skip):  # resume: drop batches already trained on
            pass
    stop = INF if limit == INF else int(limit)
    batch_idx = skip
    if stop != INF:
        while batch_idx < stop:
            try:
                batch = next(it)
            except StopIteration:
                return
            yield batch_idx, batch, batch_idx + 1 == stop
            batch_idx += 1
        return
    try:
        batch = next(it)
    except StopIteration:
        return
    while True:
        try:
            upcoming = next(it)
        except StopIteration:
            yield batch_idx, batch, True
            return
        yield batch_idx, batch, False
        batch, batch_idx = upcoming, batch_idx + 1
