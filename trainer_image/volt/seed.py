"""seed_everything: one call seeds Python, NumPy (when installed) and torch."""
from __future__ import annotations

import logging
import os
import random
from typing import Optional

import torch

log = logging.getLogger(__name__)

_MAX_SEED = 2**32 - 1


def seed_everything(seed: Optional[int] = None, workers: bool = False) -> int:
    """Seed every generator and export ``PL_GLOBAL_SEED`` so child processes agree.

    ``seed=None`` takes ``PL_GLOBAL_SEED`` from the environment, else 0.
    ``workers=True`` also derives distinct seeds for DataLoader workers
    (exported as ``PL_SEED_WORKERS`` and applied by the trainer's loaders).
    Returns the seed used.
    """
    if seed is None:
        env = os.environ.get("PL_GLOBAL_SEED")
        try:
            seed = int(env) if env is not None else 0
        except ValueError:
            raise ValueError(f"PL_GLOBAL_SEED must be an integer, got {env!r}") from None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed_everything(seed=...) must be an int, got {type(seed).__name__}")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed_everything(seed=...) must be in [0, {_MAX_SEED}], got {seed}")
    os.environ["PL_GLOBAL_SEED"] = str(seed)
    os.environ["PL_SEED_WORKERS"] = str(int(workers))
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # numpy is optional
        pass
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    log.info("Seed set to %d", seed)
    return seed


def worker_init_fn(worker_id: int) -> None:
    """Give each DataLoader worker its own seed derived from the global seed and its rank."""
    base = int(os.environ.get("PL_GLOBAL_SEED", "0"))
    rank = int(os.environ.get("RANK", "0"))
    worker_seed = (base + 1000003 * rank + 7919 * worker_id) % _MAX_SEED
    random.seed(worker_seed)
    torch.manual_seed(worker_seed)
    try:
        import numpy as np

        np.random.seed(worker_seed)
    except ImportError:
        pass
