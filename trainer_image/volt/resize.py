"""Resuming a checkpoint at another world size (number of processes).

Weights and optimizer states are world-size independent: a single-file
checkpoint holds full tensors and a sharded one is read back as full tensors
(``volt.checkpoint_sharded.load_sharded``); FSDP re-shards them for the new world.

What changes is the data: ``DistributedSampler`` deals one global permutation
(seeded by the sampler seed and the epoch, the same at every world size) round-robin to
the ranks. At an epoch boundary the next epoch is dealt to the new ranks: every
sample is still seen once per epoch. Inside an epoch, the samples the ranks have
consumed after b batches of B are exactly the first b x B x N of that
permutation (rank r took positions r, r+N, ...). The loop resumes by skipping
each rank's first batches, so at M processes it skips b x N / M batches: the
same prefix, and the rest is dealt to the new ranks. When b x N is not a
multiple of M the prefix does not end on a batch and the checkpoint is refused.

The global batch (per-process batch x processes x accumulation) is kept by
scaling ``accumulate_grad_batches`` when the numbers divide; otherwise it
changes and a warning says so. See docs/distributed.md.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

log = logging.getLogger(__name__)


def resume_at_world_size(trainer: Any, checkpoint: Dict[str, Any], saved: int, now: int) -> None:
    """Accept (and adapt to) a checkpoint written by ``saved`` processes in a run of ``now``, or raise ValueError."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    batches = int(loop.get("batch_idx", 0))
    if not loop.get("epoch_batches_done", True) and batches > 0:
        loop["batch_idx"] = _batches_at(checkpoint, loop, batches, saved, now)
    accumulation = getattr(trainer, "accumulate_grad_batches", 1)
    if isinstance(accumulation, int):
        scaled, remainder = divmod(accumulation * saved, now)
        if remainder == 0 and scaled >= 1:
            trainer.accumulate_grad_batches = scaled
            if scaled != accumulation:
                log.warning("resuming at %d processes (checkpoint: %d): accumulate_grad_batches %d -> %d keeps the "
                            "global batch", now, saved, accumulation, scaled)
            else:
                log.info("resuming at %d processes (checkpoint: %d)", now, saved)
            return
    log.warning(
        "resuming at %d processes (checkpoint: %d): the global batch changes by a factor %d/%d (accumulate_grad_batches=%r "
        "cannot be scaled to keep it); the learning rate is not adjusted", now, saved, now, saved, accumulation,
    )


def _batches_at(checkpoint: Dict[str, Any], loop: Dict[str, Any], batches: int, saved: int, now: int) -> int:
    """The batch index at ``now`` processes that has consumed the same prefix of the epoch's permutation."""
    batch_size = checkpoint.get("volt_resume", {}).get("batch_size")
    consumed = batches * int(batch_size or 0) * saved
    if batch_size and consumed % (int(batch_size) * now) == 0:
        moved = consumed // (int(batch_size) * now)
        log.warning("resuming epoch %s at %d processes (checkpoint: %d): %d samples of the epoch are done, "
                    "batch %d -> %d per process", loop.get("current_epoch"), now, saved, consumed, batches, moved)
        return moved
    raise ValueError(
        f"the checkpoint was written by {saved} process(es) but this run has {now}, and it was taken in the "
        f"middle of epoch {loop.get('current_epoch')} after {batches} batches per process "
        f"({consumed or 'an unknown number of'} samples, batch size {batch_size}): that is not a whole number "
        f"of batches at {now} processes, so the rest of the epoch cannot be re-dealt without seeing some samples "
        "twice. Resume with the same num_nodes x devices, or from a checkpoint taken at the end of an epoch"
    )
