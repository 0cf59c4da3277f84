"""Resuming a checkpoint at another world size (number of processes).

Weights and optimizer states are world-size independent: a single-file
checkpoint holds full tensors and a sharded one is read back as full tensors
(``volt.checkpoint_sharded.load_sharded``); FSDP re-shards them for the new world.

What changes is the data: ``DistributedSampler`` deals one global permutation
(seeded by the seed and the epoch, the same at every world size) round-robin to
the ranks. At an epoch boundary the next epoch is dealt to the new ranks: every
sample is still seen once per epoch. Inside an epoch, the samples each rank has
consumed are an interleaved prefix of that permutation, but the loop resumes by
skipping each rank's own batches, which at another world size would see some
samples twice and skip others: such a checkpoint is refused (resume at the same
size, or from an end-of-epoch checkpoint).

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
    mid_epoch = not loop.get("epoch_batches_done", True) and int(loop.get("batch_idx", 0)) > 0
    if mid_epoch:
        raise ValueError(
            f"the checkpoint was written by {saved} process(es) but this run has {now}, and it was taken in the "
            f"middle of epoch {loop.get('current_epoch')} (after {loop.get('batch_idx')} batches per process): inside an epoch the "
            "samples left cannot be re-dealt to another number of processes without seeing some twice. Resume "
            "with the same num_nodes x devices, or from a checkpoint taken at the end of an epoch"
        )
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
