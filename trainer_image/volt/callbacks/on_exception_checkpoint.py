"""OnExceptionCheckpoint: save a checkpoint when training raises."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Union

from volt import checkpoint as ckpt_io
from volt.callbacks.checkpoint_base import Checkpoint

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)


class OnExceptionCheckpoint(Checkpoint):
    """Save ``<dirpath>/<filename>.ckpt`` from ``on_exception`` (a crash, a KeyboardInterrupt).

    The file is written without the barrier that ``trainer.save_checkpoint``
    ends with, and is named in ``latest.json`` so ``fit(ckpt_path="last")``
    resumes from it as in Lightning (see docs/checkpoints.md for what a
    checkpoint taken mid-step means for exact resume).

    Under DDP (world size > 1) it saves nothing and says so: a checkpoint
    gathers every rank's state (RNG snapshots), and after an exception on one
    rank the others are stuck in a different collective, so trying would hang
    the job instead of letting it fail and restart. Restarts then resume from
    the last periodic or SIGTERM checkpoint.
    """

    FILE_EXTENSION = ckpt_io.CHECKPOINT_SUFFIX

    def __init__(self, dirpath: Union[str, "os.PathLike[str]"], filename: str = "on_exception") -> None:
        super().__init__()
        if not filename or not isinstance(filename, str):
            raise ValueError(f"OnExceptionCheckpoint(filename={filename!r}) must be a non-empty str")
        self.dirpath = os.path.realpath(os.path.expanduser(os.fspath(dirpath)))
        self.filename = filename

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        save_after_exception(trainer, self.ckpt_path, self.dirpath, exception, "OnExceptionCheckpoint")


def save_after_exception(
    trainer: "Trainer", path: str, dirpath: str, exception: BaseException, who: str
) -> bool:
    """Write a checkpoint of the current state from ``on_exception``; True when saved.

    No barrier and no collective: in a single process only (see OnExceptionCheckpoint).
    Never raises: the user's exception is what must surface.
    """
    if trainer.world_size > 1:
        log.warning(
            "%s: not saving %s after %s: with %d ranks a checkpoint needs every rank, and "
            "the others cannot join after an exception on this one", who, path, type(exception).__name__,
            trainer.world_size,
        )
        return False
    try:
        from volt.trainer import checkpoint_connector

        checkpoint = checkpoint_connector.dump_checkpoint(trainer, weights_only=False)
        trainer.checkpoint_io.save_checkpoint(checkpoint, path)
        ckpt_io.write_manifest(dirpath, path, step=trainer.global_step, epoch=trainer.current_epoch)
    except Exception as err:  # never replace the user's exception with ours
        log.error("%s: could not save %s: %s", who, path, err)
        return False
    log.warning("%s: saved %s after %s", who, path, type(exception).__name__)
    return True
