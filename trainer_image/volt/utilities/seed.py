"""RNG isolation (Lightning's ``utilities.seed``); ``seed_everything`` is ``volt.seed_everything``."""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Dict, Generator

import numpy as np
import torch


@contextmanager
def isolate_rng(include_cuda: bool = True) -> Generator[None, None, None]:
    """What the block draws leaves the random streams after it unchanged: Python's, NumPy's and torch's
    (CPU, and CUDA when ``include_cuda`` and initialised) states are restored when it ends."""
    states: Dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                              "numpy": np.random.get_state()}
    cuda = include_cuda and torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        yield
    finally:
        random.setstate(states["python"])
        torch.set_rng_state(states["torch"])
        np.random.set_state(states["numpy"])
        if cuda:
            torch.cuda.set_rng_state_all(states["cuda"])


__all__ = ["isolate_rng"]
