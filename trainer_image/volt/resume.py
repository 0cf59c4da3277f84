"""Exact mid-epoch resume: random-number-generator states and skipping done batches.

A resumed run must see the same batches in the same order and draw the same
random numbers as the run it continues. Two RNG snapshots make that work:

* ``epoch_start``: taken right before the epoch's ``iter(dataloader)``. The
  loader draws its base seed and a ``RandomSampler`` its permutation from the
  global torch generator, so restoring this snapshot replays the same order.
* ``current``: taken when the checkpoint is written, so dropout, augmentation
  and everything else continue from the same state.

On resume ``resume_epoch_iterator`` restores ``epoch_start``, calls ``iter()``
on a copy of the loader whose batch sampler drops the first ``n`` batches of
indices (no data is loaded for them), starts the sampler so that it draws its
permutation now, and only then restores ``current``: the random draws happen in
the same order as in the original run.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from volt.resize import resume_at_world_size
from volt.utilities import loader_kwargs

try:  # numpy is optional
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]


def capture_rng_state() -> Dict[str, Any]:
    """Snapshot the torch (CPU and CUDA), numpy and Python generators."""
    state: Dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if np is not None:
        state["numpy"] = np.random.get_state()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Restore a ``capture_rng_state`` snapshot (missing parts are left alone)."""
    if not isinstance(state, dict) or "torch" not in state:
        raise ValueError("restore_rng_state() needs a dict from capture_rng_state() with a 'torch' entry")
    torch.set_rng_state(state["torch"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) != torch.cuda.device_count():
            raise ValueError(
                f"checkpoint has CUDA RNG states for {len(states)} devices but {torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_rng_state_all(states)
    if "numpy" in state and np is not None:
        np.random.set_state(state["numpy"])


class _SkippingIterator:
    """Iterates the owner's batch sampler past its pending skip; ``start()`` skips now."""

    def __init__(self, owner: "_SkipFirstBatches") -> None:
        self._owner = owner
        self._inner: Optional[Iterator[List[int]]] = None

    def start(self) -> None:
        if self._inner is None:
            self._inner = iter(self._owner.batch_sampler)
            # The first iterator that actually runs takes the skip (DataLoader may call
            # iter() on its batch sampler twice before fetching anything).
            skip, self._owner.pending_skip = self._owner.pending_skip, 0
            for _ in range(skip):
                if next(self._inner, None) is None:
                    break

    def __iter__(self) -> "_SkippingIterator":
        return self

    def __next__(self) -> List[int]:
        self.start()
        assert self._inner is not None
        return next(self._inner)


class _SkipFirstBatches(Sampler):
    """A batch sampler whose next ``iter()`` starts after ``n`` batches; later ones are whole."""

    def __init__(self, batch_sampler: Any, n: int) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, "sampler", None)  # where the loop finds set_epoch
        self.batch_size = getattr(batch_sampler, "batch_size", None)
        self.drop_last = getattr(batch_sampler, "drop_last", False)
        self.pending_skip = n
        self.current: Optional[_SkippingIterator] = None

    def __iter__(self) -> Iterator[List[int]]:
        self.current = _SkippingIterator(self)
        return self.current

    def __len__(self) -> int:
        return len(self.batch_sampler)


def skip_batches(loader: DataLoader, n: int) -> DataLoader:
    """A copy of ``loader`` whose next epoch skips its first ``n`` batches without loading them.

    ``len()`` stays the full epoch length, so the loop's batch index keeps counting
    from where the checkpoint stopped.
    """
    if n < 0:
        raise ValueError(f"skip_batches(n={n}): n must be >= 0")
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
        raise TypeError(
            "exact mid-epoch resume needs a map-style torch DataLoader with a batch sampler; "
            f"got {type(loader).__name__}"
        )
    if n == 0:
        return loader
    kwargs = loader_kwargs(loader)
    kwargs["batch_sampler"] = _SkipFirstBatches(loader.batch_sampler, n)
    return type(loader)(loader.dataset, **kwargs)


def resume_epoch_iterator(
    loader: DataLoader, batches_done: int, epoch_start: Dict[str, Any], current: Dict[str, Any]
) -> Iterator[Any]:
    """An iterator over ``loader``'s batches from ``batches_done`` on, replaying the original run.

    ``epoch_start``/``current``: the ``capture_rng_state`` snapshots taken before the
    epoch's ``iter(loader)`` and when the checkpoint was written.
    """
    restore_rng_state(epoch_start)
    resumed = skip_batches(loader, batches_done)
    iterator = iter(resumed)  # draws the loader's base seed, as the original iter() did
    if batches_done:
        # The sampler draws its permutation on its first step: do it before `current`.
        resumed.batch_sampler.current.start()  # type: ignore[union-attr]
    restore_rng_state(current)
    return iterator


# --- checkpoint integration (called by volt.trainer.checkpoint_connector and fit_loop) -----------

RESUME_KEY = "volt_resume"


@dataclass
class RngSnapshots:
    """The RNG snapshots of one Trainer (``trainer.rng_snapshots``), passed between the
    checkpoint code and the fit loop explicitly.

    ``epoch_start``: taken by the fit loop before this epoch's ``iter(loader)``; saved with
    every checkpoint. ``restored``: this rank's ``{"current", "epoch_start"}`` from the
    checkpoint being resumed, set by ``load_resume_state`` and used once by the next epoch.
    """

    epoch_start: Optional[Dict[str, Any]] = None
    restored: Optional[Dict[str, Any]] = None

    def take_restored(self) -> Optional[Dict[str, Any]]:
        """The restored snapshots, once: a later epoch starts from its own state."""
        restored, self.restored = self.restored, None
        return restored


def dump_resume_state(trainer: Any) -> Dict[str, Any]:
    """What a checkpoint needs for exact resume: every rank's RNG snapshots and the world size.

    Runs inside ``trainer.save_checkpoint``, which every rank calls (it ends in a
    barrier), so gathering the ranks' states here adds no new synchronisation point.
    """
    mine = {"current": capture_rng_state(), "epoch_start": trainer.rng_snapshots.epoch_start}
    world_size = int(trainer.world_size)
    states: List[Any] = [mine]
    if world_size > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            states = [None] * world_size
            dist.all_gather_object(states, mine, group=getattr(trainer.strategy, "control_group", None))
    # Per-process batch size: with the world size and the loop's batch_idx it says how many samples of
    # the epoch's global permutation are consumed (volt.resize re-deals the rest at another world size).
    batch_size = getattr(getattr(trainer, "train_dataloader", None), "batch_size", None)
    return {"world_size": world_size, "rng": states, "batch_size": batch_size}


def load_resume_state(trainer: Any, checkpoint: Dict[str, Any]) -> None:
    """Check the world size and hand this rank's RNG snapshots to the fit loop."""
    state = checkpoint.get(RESUME_KEY)
    trainer.rng_snapshots.restored = None
    if state is None:
        return
    saved, now = int(state["world_size"]), int(trainer.world_size)
    if saved != now:
        # raises where the data cannot be re-dealt; a Redeal is applied by the fit loop to the resumed epoch
        trainer.run_state.redeal = resume_at_world_size(trainer, checkpoint, saved, now)
    rng = state["rng"]
    if saved != now and len(rng) <= trainer.global_rank:
        rng = rng[:1]  # a rank the checkpoint did not have replays rank 0's loader seed and random stream
    trainer.rng_snapshots.restored = rng[min(trainer.global_rank, len(rng) - 1)] if rng else None
