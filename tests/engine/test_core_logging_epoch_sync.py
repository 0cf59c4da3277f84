"""sync_dist epoch values under DDP are reduced before the epoch-end hooks, as Lightning's hooks see them."""
from __future__ import annotations

from typing import Any, Dict, List

import pytest
import torch

from volt.callbacks.base import Callback

from tiny_models import TinyModel, TwoEqualRanks, loader, quiet_trainer

pytestmark = pytest.mark.timeout(60)

NAMES = ("mean_synced", "sum_synced", "max_synced")


class EpochValues(TinyModel):
    def __init__(self) -> None:
        super().__init__()
        self.seen_by_module: List[Dict[str, float]] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        value = float(10 * self.current_epoch + batch_idx)  # epoch 0: 0, 1, 2; epoch 1: 10, 11, 12
        self.log("mean_synced", value, on_step=False, on_epoch=True, sync_dist=True)
        self.log("sum_synced", value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="sum")
        self.log("max_synced", value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.seen_by_module.append({k: float(self.trainer.callback_metrics[k]) for k in NAMES})
        self.log("late", 5.0, sync_dist=True)  # logged after the preview: reduced by the epoch's end


class SeenByCallback(Callback):
    def __init__(self) -> None:
        self.seen: List[Dict[str, float]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append({k: float(trainer.callback_metrics[k]) for k in NAMES if k in trainer.callback_metrics})


def test_epoch_end_hooks_see_this_epochs_synced_values_reduced_once(tmp_path: Any) -> None:
    strategy, callback, model = TwoEqualRanks(), SeenByCallback(), EpochValues()
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=3, strategy=strategy, callbacks=[callback],
                            devices="auto")
    trainer.fit(model, loader(64))
    expected = [{"mean_synced": 1.0, "sum_synced": 6.0, "max_synced": 2.0},
                {"mean_synced": 11.0, "sum_synced": 66.0, "max_synced": 12.0}]
    assert callback.seen == expected  # this epoch's values, not missing (epoch 0) nor last epoch's (epoch 1)
    assert model.seen_by_module == expected
    assert {k: float(trainer.callback_metrics[k]) for k in NAMES} == expected[-1]
    assert float(trainer.callback_metrics["late"]) == 5.0
    # Per epoch: the preview's fused "sum" (2 totals + 2 weights) and "max"; the epoch's end reduces only
    # "late" (its total and weight), logged after the preview. Nothing is reduced twice.
    assert strategy.reduce_calls == [("sum", (4,)), ("max", (1,)), ("sum", (2,))] * 2


class ValueAtEachPoint(Callback):
    """callback_metrics["both"] (logged on_step and on_epoch) and "val" where Lightning's callbacks read them."""

    def __init__(self) -> None:
        self.seen: List[tuple] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(("batch_end", float(trainer.callback_metrics["both"])))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append(("validation_epoch_end", float(trainer.callback_metrics["val"])))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append(("train_epoch_end", float(trainer.callback_metrics["both"])))


def test_forked_name_is_the_step_value_until_epoch_end_and_validation_hooks_see_epoch_values(tmp_path: Any) -> None:
    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("both", float(10 * self.current_epoch + batch_idx), on_step=True, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val", float(100 * (self.current_epoch + 1) + batch_idx))

    callback = ValueAtEachPoint()
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=0,
                            callbacks=[callback])
    trainer.fit(Model(), loader(64), loader(64))
    # "both" is each step's value during the epoch (in epoch 1 too, not epoch 0's mean) and the epoch mean
    # at its end; a validation callback's epoch-end hook already sees the validation epoch mean.
    assert callback.seen == [
        ("batch_end", 0.0), ("batch_end", 1.0), ("validation_epoch_end", 100.5), ("train_epoch_end", 0.5),
        ("batch_end", 10.0), ("batch_end", 11.0), ("validation_epoch_end", 200.5), ("train_epoch_end", 10.5),
    ]
