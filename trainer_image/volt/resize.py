"""Resuming a checkpoint at another world size (number of processes).

Weights and optimizer states are world-size independent: a single-file
checkpoint holds full tensors and a sharded one is read back as full tensors
(``volt.checkpoint_sharded.load_sharded``); FSDP re-shards them for the new world.

What changes is the data: ``DistributedSampler`` deals one global permutation
(seeded by the sampler seed and the epoch, the same at every world size) round-robin to
the ranks. At an epoch boundary the next epoch is dealt to the new ranks: every
sample is still seen once per epoch. Inside an epoch, the samples the ranks have
consumed after b batches of B are exactly the first C = b x B x N of that
permutation (rank r took positions r, r+N, ...). At M processes:

* when C is a multiple of B x M the loop skips C / (B x M) batches per rank: the
  same prefix, and the rest is dealt to the new ranks as the sampler deals it;
* otherwise the rest is re-dealt (``redealt_epoch``): positions C, C+1, ... go
  round-robin to the M ranks, padded (as ``DistributedSampler`` pads) with the
  permutation's first samples up to a multiple of M, so every rank runs the same
  number of batches. The loop's batch index is set so the epoch still ends after
  the loader's usual number of batches.

Either way no sample of the interrupted epoch is seen twice or skipped, except
the fewer than M padding copies and, with ``DataLoader(drop_last=True)``, each
rank's incomplete last batch, as in any epoch at M processes.

The global batch (per-process batch x processes x accumulation) is kept by
scaling ``accumulate_grad_batches`` when the numbers divide; otherwise it
changes and a warning says so. See docs/distributed.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

from volt.utilities import loader_kwargs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Redeal:
    """The rest of ``epoch`` after ``consumed`` samples of its permutation, to deal to this run's ranks."""

    epoch: int
    consumed: int
    saved: int  # processes that wrote the checkpoint
    batches_done: int  # per process, at ``saved``


def resume_at_world_size(trainer: Any, checkpoint: Dict[str, Any], saved: int, now: int) -> Optional[Redeal]:
    """Accept (and adapt to) a checkpoint written by ``saved`` processes in a run of ``now``, or raise ValueError.

    Returns the ``Redeal`` the fit loop applies to the resumed epoch's loader, or None when the
    batch index alone says where to continue.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    batches = int(loop.get("batch_idx", 0))
    redeal = None
    if not loop.get("epoch_batches_done", True) and batches > 0:
        redeal = _continue_epoch(checkpoint, loop, batches, saved, now)
    _keep_global_batch(trainer, saved, now)
    return redeal


def _keep_global_batch(trainer: Any, saved: int, now: int) -> None:
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


def _continue_epoch(checkpoint: Dict[str, Any], loop: Dict[str, Any], batches: int, saved: int,
                    now: int) -> Optional[Redeal]:
    """Rescale the batch index when the samples done make whole batches at ``now``; else a Redeal."""
    batch_size = checkpoint.get("volt_resume", {}).get("batch_size")
    if not batch_size:
        raise ValueError(
            f"the checkpoint was written by {saved} process(es) but this run has {now}, and it was taken in the "
            f"middle of epoch {loop.get('current_epoch')} after {batches} batches per process without the batch "
            "size (written by an older volt): the samples done are unknown, so the rest of the epoch cannot be "
            "re-dealt. Resume with the same num_nodes x devices, or from a checkpoint taken at the end of an epoch"
        )
    consumed = batches * int(batch_size) * saved
    if consumed % (int(batch_size) * now) == 0:
        moved = consumed // (int(batch_size) * now)
        log.warning("resuming epoch %s at %d processes (checkpoint: %d): %d samples of the epoch are done, "
                    "batch %d -> %d per process", loop.get("current_epoch"), now, saved, consumed, batches, moved)
        loop["batch_idx"] = moved
        return None
    return Redeal(epoch=int(loop.get("current_epoch", 0)), consumed=consumed, saved=saved, batches_done=batches)


def redeal_indices(permutation: List[int], consumed: int, world: int, rank: int, drop_tail: bool) -> List[int]:
    """Rank ``rank`` of ``world``'s share of ``permutation[consumed:]``, dealt round-robin.

    The rest is padded with the permutation's first samples up to a multiple of ``world``
    (``drop_tail``: cut down to one instead), as ``DistributedSampler`` does with a whole epoch.
    """
    rest = list(permutation[consumed:])
    if drop_tail:
        rest = rest[: len(rest) - len(rest) % world]
    else:
        pad = -len(rest) % world
        while pad:
            rest += permutation[:pad]
            pad = -len(rest) % world
    return rest[rank::world]


def redealt_epoch(loader: Any, redeal: Redeal) -> Tuple[DataLoader, int]:
    """``loader`` for the rest of ``redeal.epoch`` at this world size and the batch index it resumes at.

    ``loader``'s sampler must be the ``DistributedSampler`` volt adds (or one like it) under a plain
    ``BatchSampler``, with ``set_epoch`` already called for the epoch.
    """
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, DistributedSampler) or type(batch_sampler) is not BatchSampler:
        raise ValueError(
            f"the checkpoint was written by {redeal.saved} process(es) in the middle of epoch {redeal.epoch} "
            f"({redeal.consumed} samples done); re-dealing the rest to {getattr(sampler, 'num_replicas', '?')} "
            f"processes needs a DataLoader with a DistributedSampler (the one volt adds), got sampler "
            f"{type(sampler).__name__} and batch sampler {type(batch_sampler).__name__}. Resume with the same "
            "num_nodes x devices, or from a checkpoint taken at the end of an epoch"
        )
    whole = DistributedSampler(sampler.dataset, num_replicas=1, rank=0, shuffle=sampler.shuffle, seed=sampler.seed)
    whole.set_epoch(sampler.epoch)
    permutation = list(whole)  # the epoch's order, identical at every world size
    world, batch_size = sampler.num_replicas, int(batch_sampler.batch_size)
    share = redeal_indices(permutation, redeal.consumed, world, sampler.rank, sampler.drop_last)
    share_batches = len(share) // batch_size if batch_sampler.drop_last else -(-len(share) // batch_size)
    resume_at = len(batch_sampler) - share_batches  # the epoch still ends after len(loader) batches
    if resume_at < 0:
        raise ValueError(f"re-dealing epoch {redeal.epoch}: {share_batches} batches left but the loader has "
                         f"{len(batch_sampler)}")
    # The loop skips its first resume_at batches (without loading them): fill them with any index.
    indices = permutation[:1] * (resume_at * batch_size) + share
    kwargs = loader_kwargs(loader)
    kwargs["batch_sampler"] = BatchSampler(indices, batch_size, batch_sampler.drop_last)
    padding = max(0, len(share) * world - (len(permutation) - redeal.consumed))
    if sampler.rank == 0:
        log.warning(
            "resuming epoch %d at %d processes (checkpoint: %d): %d of its %d samples are done; the other %d are "
            "re-dealt to the %d processes (%d padding copies), %d batches each from batch %d (was %d)",
            redeal.epoch, world, redeal.saved, redeal.consumed, len(permutation), len(permutation) - redeal.consumed,
            world, padding, share_batches, resume_at, redeal.batches_done,
        )
    return type(loader)(loader.dataset, **kwargs), resume_at
