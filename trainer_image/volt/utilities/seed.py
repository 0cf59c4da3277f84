"""Seeding and RNG isolation (Lightning's ``utilities.seed``); ``seed_everything`` lives in ``volt.seed``."""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Dict, Generator

import torch

from volt.seed import seed_everything  # noqa: F401  (volt.seed imports nothing from volt: still the bottom layer)

try:
    import numpy as np
except ImportError:  # pragma: no cover - numpy is a volt dependency, but the guard costs nothing
    np = None  # type: ignore[assignment]


@contextmanager
def isolate_rng(include_cuda: bool = True) -> Generator[None, None, None]:
    """Run the block with its own RNG stream: Python's, NumPy's and torch's (CPU, and CUDA when
    ``include_cuda`` and initialised) states are restored afterwards."""
    states: Dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if np is not None:
        states["numpy"] = np.random.get_state()
    cuda = include_cuda and torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        yield
    finally:
        random.setstate(states["python"])
        torch.set_rng_state(states["torch"])
        if np is not None:
            np.random.set_state(states["numpy"])
        if cuda:
            torch.cuda.set_rng_state_all(states["cuda"])


__all__ = ["isolate_rng"]
