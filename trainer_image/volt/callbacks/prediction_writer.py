"""BasePredictionWriter: write predictions as they come, or all at the end (Lightning's)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Sequence

from volt.callbacks.base import Callback
from volt.utilities.enums import LightningEnum

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

_INTERVALS = ("batch", "epoch", "batch_and_epoch")


class WriteInterval(LightningEnum):
    """``write_interval``'s values (equal to the strings, which work too)."""

    BATCH = "batch"
    EPOCH = "epoch"
    BATCH_AND_EPOCH = "batch_and_epoch"


class BasePredictionWriter(Callback):
    """Subclass it and implement ``write_on_batch_end`` and/or ``write_on_epoch_end``.

    ``batch_indices`` are the dataset indices of each prediction's batch (per process under
    DDP, so each rank can write its own shard); None when the loader is not a DataLoader
    with a batch sampler. ``write_on_epoch_end`` receives the kept predictions: pass
    ``trainer.predict(..., return_predictions=False)`` only with ``write_interval="batch"``.
    """

    def __init__(self, write_interval: str = "batch") -> None:
        if write_interval not in _INTERVALS:
            raise ValueError(f"BasePredictionWriter(write_interval={write_interval!r}) must be one of {list(_INTERVALS)}")
        self.write_interval = write_interval.value if isinstance(write_interval, WriteInterval) else write_interval

    def write_on_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        raise NotImplementedError(f"{type(self).__name__}(write_interval='batch') needs write_on_batch_end()")

    def write_on_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule", predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__}(write_interval='epoch') needs write_on_epoch_end()")

    def on_predict_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any,
                             batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.write_interval in ("batch", "batch_and_epoch"):
            self.write_on_batch_end(trainer, pl_module, outputs, trainer.predict_loop.current_batch_indices, batch,
                                    batch_idx, dataloader_idx)

    def on_predict_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self.write_interval in ("epoch", "batch_and_epoch"):
            state = trainer.predict_loop
            indices: List[Any] = state.epoch_batch_indices
            self.write_on_epoch_end(trainer, pl_module, state.predictions, indices[0] if len(indices) == 1 else indices)
