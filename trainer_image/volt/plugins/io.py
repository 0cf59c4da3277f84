"""Checkpoint IO plugins: how checkpoint files are written, read and deleted (Lightning's
``plugins.io``)."""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Dict, Optional, Union

from volt import checkpoint as _ckpt

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["CheckpointIO", "TorchCheckpointIO"]


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
