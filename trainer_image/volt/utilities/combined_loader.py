"""CombinedLoader: iterate a collection of loaders together (Lightning's modes and contract).

Iterating yields ``(batch, batch_idx, dataloader_idx)``. In ``min_size``, ``max_size_cycle`` and
``max_size`` modes ``batch`` has the collection's shape (a dict of loaders gives a dict of batches)
and ``dataloader_idx`` is 0; ``sequential`` runs the loaders one after another and yields each one's
batches with its index. Unlike Lightning, ``len()`` works before ``iter()``.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

MODES = ("min_size", "max_size_cycle", "max_size", "sequential")
_INF = float("inf")


def _flatten(tree: Any) -> Tuple[List[Any], Callable[[List[Any]], Any]]:
    """Leaves of nested dicts/lists/tuples, and a function that rebuilds the shape from new leaves."""
    if isinstance(tree, dict):
        keys = list(tree)
        parts = [_flatten(tree[k]) for k in keys]
    elif isinstance(tree, (list, tuple)):
        keys = None
        parts = [_flatten(v) for v in tree]
    else:
        return [tree], lambda leaves: leaves[0]
    sizes = [len(p[0]) for p in parts]
    leaves = [leaf for p in parts for leaf in p[0]]

    def rebuild(new: List[Any]) -> Any:
        values, start = [], 0
        for (_, build), size in zip(parts, sizes):
            values.append(build(new[start:start + size]))
            start += size
        if keys is not None:
            return type(tree)(zip(keys, values)) if type(tree) is not dict else dict(zip(keys, values))
        return type(tree)(values)

    return leaves, rebuild


def _length(iterable: Any) -> float:
    try:
        return float(len(iterable))
    except (TypeError, NotImplementedError):
        return _INF


class CombinedLoader:
    """Combine ``iterables`` (one iterable, or a dict/list/tuple of them) under ``mode``:

    * ``min_size``: stop when the shortest is done.
    * ``max_size_cycle``: stop when the longest is done, restarting the shorter ones.
    * ``max_size``: stop when the longest is done; finished ones give None.
    * ``sequential``: each iterable to its end, one after another.
    """

    def __init__(self, iterables: Any, mode: str = "min_size") -> None:
        if mode not in MODES:
            raise ValueError(f"CombinedLoader(mode={mode!r}) is not a mode; use one of {list(MODES)}")
        self._iterables = iterables
        self._flattened, self._rebuild = _flatten(iterables)
        for leaf in self._flattened:
            if not hasattr(leaf, "__iter__"):
                raise TypeError(f"CombinedLoader(iterables=...) holds a {type(leaf).__name__}, which is not iterable")
        self._mode = mode
        self._limits: Optional[List[Union[int, float]]] = None

    @property
    def mode(self) -> str:
        return self._mode

    @property
    def iterables(self) -> Any:
        """The collection as given (or as rebuilt after ``flattened`` was set)."""
        return self._iterables

    @property
    def flattened(self) -> List[Any]:
        """The iterables as a flat list, in the collection's order."""
        return self._flattened

    @flattened.setter
    def flattened(self, flattened: List[Any]) -> None:
        if len(flattened) != len(self._flattened):
            raise ValueError(f"CombinedLoader.flattened: {len(flattened)} iterables given, it holds {len(self._flattened)}")
        self._flattened = list(flattened)
        self._iterables = self._rebuild(self._flattened)

    @property
    def sampler(self) -> Any:
        return self._rebuild([getattr(x, "sampler", None) for x in self._flattened])

    @property
    def batch_sampler(self) -> Any:
        return self._rebuild([getattr(x, "batch_sampler", None) for x in self._flattened])

    @property
    def limits(self) -> Optional[List[Union[int, float]]]:
        """At most this many batches from each iterable (None: no limit)."""
        return self._limits

    @limits.setter
    def limits(self, limits: Optional[Union[int, float, Sequence[Union[int, float]]]]) -> None:
        if isinstance(limits, (int, float)):
            limits = [limits] * len(self._flattened)
        elif limits is not None:
            limits = list(limits)
            if len(limits) != len(self._flattened):
                raise ValueError(f"CombinedLoader.limits: {len(limits)} limits for {len(self._flattened)} iterables")
        self._limits = limits

    def _lengths(self) -> List[float]:
        lengths = [_length(x) for x in self._flattened]
        if self._limits is not None:
            lengths = [min(n, float(limit)) for n, limit in zip(lengths, self._limits)]
        return lengths

    def __len__(self) -> int:
        lengths = self._lengths()
        total = {"min_size": min, "max_size_cycle": max, "max_size": max, "sequential": sum}[self._mode](lengths)
        if total == _INF:
            raise TypeError("CombinedLoader has no length: one of its iterables has none")
        return int(total)

    def __iter__(self) -> Iterator[Tuple[Any, int, int]]:
        if self._mode == "sequential":
            return self._sequential()
        return self._together()

    def _sequential(self) -> Iterator[Tuple[Any, int, int]]:
        for loader_idx, (loader, limit) in enumerate(zip(self._flattened, self._lengths())):
            for batch_idx, batch in enumerate(loader):
                if batch_idx >= limit:
                    break
                yield batch, batch_idx, loader_idx

    def _together(self) -> Iterator[Tuple[Any, int, int]]:
        loaders = self._flattened
        if not loaders:
            return
        stop = len(self) if self._limits is not None or self._mode == "min_size" else _INF
        iterators = [iter(x) for x in loaders]
        done = [False] * len(loaders)
        batch_idx = 0
        while batch_idx < stop:
            out: List[Any] = [None] * len(loaders)
            for i, it in enumerate(iterators):
                if done[i] and self._mode == "max_size":
                    continue
                try:
                    out[i] = next(it)
                except StopIteration:
                    if self._mode == "min_size":
                        return
                    done[i] = True
                    if all(done):
                        return
                    if self._mode == "max_size_cycle":
                        iterators[i] = iter(loaders[i])
                        out[i] = next(iterators[i])
            if self._mode == "max_size" and all(done):
                return
            yield self._rebuild(out), batch_idx, 0
            batch_idx += 1

    def batches(self) -> "CombinedBatches":
        """The batches alone, as the loops iterate them (``len`` = this loader's)."""
        return CombinedBatches(self)


class CombinedBatches:
    """A CombinedLoader seen as one loader of batches (the training loop's view of it)."""

    def __init__(self, combined: CombinedLoader) -> None:
        self.combined = combined

    def __len__(self) -> int:
        return len(self.combined)

    def __iter__(self) -> Iterator[Any]:
        return (batch for batch, _, _ in self.combined)
