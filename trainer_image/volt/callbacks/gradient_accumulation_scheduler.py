"""GradientAccumulationScheduler: accumulate_grad_batches that changes with the epoch (Lightning's)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict

from volt.callbacks.base import Callback

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer


class GradientAccumulationScheduler(Callback):
    """``scheduling={epoch: factor}``: from each epoch on, accumulate ``factor`` batches per optimizer step
    (1 before the first listed epoch). The same as ``Trainer(accumulate_grad_batches={...})``, the 1.x form.
    """

    def __init__(self, scheduling: Dict[int, int]) -> None:
        if not isinstance(scheduling, dict) or not scheduling:
            raise TypeError(f"GradientAccumulationScheduler(scheduling=...) must be a non-empty dict, got {scheduling!r}")
        for epoch, factor in scheduling.items():
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
                raise ValueError(f"GradientAccumulationScheduler: epoch keys must be ints >= 0, got {epoch!r}")
            if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
                raise ValueError(f"GradientAccumulationScheduler: factors must be ints >= 1, got {factor!r} "
                                 f"for epoch {epoch}")
        self.scheduling = dict(sorted(scheduling.items()))

    def get_accumulate_grad_batches(self, epoch: int) -> int:
        factor = 1
        for start, value in self.scheduling.items():
            if epoch >= start:
                factor = value
        return factor

    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        if trainer.accumulate_grad_batches not in (1, self.scheduling):
            raise ValueError(
                f"GradientAccumulationScheduler and Trainer(accumulate_grad_batches={trainer.accumulate_grad_batches!r}) "
                "both set the accumulation; use one"
            )
        if not pl_module.automatic_optimization:
            raise RuntimeError("GradientAccumulationScheduler needs automatic optimization; accumulate in "
                               "training_step under manual optimization")
        # Before the loop decides its per-run path: the dict form makes it read the factor per epoch.
        trainer.accumulate_grad_batches = self.scheduling
