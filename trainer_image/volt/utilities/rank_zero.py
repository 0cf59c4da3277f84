"""Run or print on global rank 0 only (Lightning's ``utilities.rank_zero``).

``rank_zero_only.rank`` starts from the launcher's environment (torchrun's ``RANK``, or
``LOCAL_RANK``/``NODE_RANK``) and the Trainer sets it to the strategy's global rank once ranks
are known. Loggers write through it; ``rank_zero_info``/``rank_zero_warn`` print through it.
"""
from __future__ import annotations

import functools
import logging
import os
import warnings
from typing import Any, Callable, Optional, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)


def _rank_from_env() -> int:
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    # Processes started per node without a global RANK (e.g. our own spawn).
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return node * per_node + local


def rank_zero_only(fn: F, default: Optional[Any] = None) -> F:
    """Run ``fn`` only on global rank 0; other ranks get ``default`` (None)."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if rank_zero_only.rank == 0:
            return fn(*args, **kwargs)
        return default

    return wrapped  # type: ignore[return-value]


rank_zero_only.rank = _rank_from_env()  # type: ignore[attr-defined]


class LightningDeprecationWarning(DeprecationWarning):
    """Deprecations raised by volt's Lightning-compatible API (Lightning's class name)."""


@rank_zero_only
def rank_zero_debug(*args: Any, stacklevel: int = 4, **kwargs: Any) -> None:
    log.debug(*args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_info(*args: Any, stacklevel: int = 4, **kwargs: Any) -> None:
    log.info(*args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_warn(message: Any, stacklevel: int = 4, **kwargs: Any) -> None:
    warnings.warn(message, stacklevel=stacklevel, **kwargs)


def rank_zero_deprecation(message: Any, stacklevel: int = 5, **kwargs: Any) -> None:
    category = kwargs.pop("category", LightningDeprecationWarning)
    rank_zero_warn(message, stacklevel=stacklevel, category=category, **kwargs)


def rank_prefixed_message(message: str, rank: Optional[int]) -> str:
    """``"[rank: N] message"`` when the rank is known."""
    return f"[rank: {rank}] {message}" if rank is not None else message


class WarningCache(set):
    """Warns (or logs) each distinct message once, on rank 0."""

    def warn(self, message: str, stacklevel: int = 5, **kwargs: Any) -> None:
        if message not in self:
            self.add(message)
            rank_zero_warn(message, stacklevel=stacklevel, **kwargs)

    def deprecation(self, message: str, stacklevel: int = 6, **kwargs: Any) -> None:
        if message not in self:
            self.add(message)
            rank_zero_deprecation(message, stacklevel=stacklevel, **kwargs)

    def info(self, message: str, stacklevel: int = 5, **kwargs: Any) -> None:
        if message not in self:
            self.add(message)
            rank_zero_info(message, stacklevel=stacklevel, **kwargs)
