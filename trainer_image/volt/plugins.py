"""What ``Trainer(plugins=...)`` accepts: precision, checkpoint IO and cluster environment.

Lightning 2.x takes plugin *instances* of four kinds; volt takes the three that
mean something here (there is no LayerSync plugin: ``sync_batchnorm=True`` is the
switch):

* a :class:`Precision` instance (``volt.precision.Precision`` or a subclass), in
  place of ``precision=``;
* a :class:`CheckpointIO` instance: how checkpoint files are written, read and
  deleted (``trainer.save_checkpoint``, ModelCheckpoint, ``fit(ckpt_path=...)``);
* a :class:`ClusterEnvironment` (``volt.cluster``'s record of ranks and the master
  address), in place of reading them from the launcher's environment variables.

A 1.x DDP strategy name (``plugins="ddp_find_unused_parameters_true"``) selects
that strategy, as 1.x did. ``volt.trainer.arguments.parse_plugins`` does the checks.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Dict, Optional, Union

from volt import checkpoint as _ckpt
from volt.cluster import ClusterEnvironment
from volt.precision import Precision

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["CheckpointIO", "ClusterEnvironment", "Precision", "TorchCheckpointIO"]


class CheckpointIO(ABC):
    """Writes, reads and deletes checkpoint files. Subclass it to store checkpoints elsewhere or differently.

    ``save_checkpoint`` runs on global rank 0 only; ``load_checkpoint`` on every rank.
    """

    @abstractmethod
    def save_checkpoint(self, checkpoint: Dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        """Persist ``checkpoint`` (a dict of tensors and Python objects) at ``path``."""

    @abstractmethod
    def load_checkpoint(self, path: PathLike, map_location: Optional[Any] = None) -> Dict[str, Any]:
        """Return the checkpoint dict saved at ``path``."""

    @abstractmethod
    def remove_checkpoint(self, path: PathLike) -> None:
        """Delete the checkpoint at ``path`` (ModelCheckpoint's top-k rotation); a missing one is not an error."""

    def teardown(self) -> None:
        """Called when a fit/validate/test/predict call ends (e.g. to wait for pending writes)."""


class TorchCheckpointIO(CheckpointIO):
    """The default: ``torch.save`` written atomically (temp file, fsync, rename; ``volt.checkpoint``)."""

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint(storage_options=...) is not supported: it writes local or "
                "volume paths. Pass your own CheckpointIO in Trainer(plugins=[...]) to use storage options"
            )
        _ckpt.atomic_save(checkpoint, path)

    def load_checkpoint(self, path: PathLike, map_location: Optional[Any] = None) -> Dict[str, Any]:
        return _ckpt.load(path, map_location=map_location)

    def remove_checkpoint(self, path: PathLike) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
