"""self.log / log_dict: per-hook defaults, _step/_epoch names, weighted means, the three metric dicts."""
from __future__ import annotations

from typing import Any, Dict, List

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import volt
from volt.callbacks.base import Callback

from tiny_models import TinyModel, TwoEqualRanks, loader, quiet_trainer

pytestmark = pytest.mark.timeout(60)


def test_training_defaults_step_and_validation_defaults_epoch(tmp_path: Any) -> None:
    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("t_const", float(batch_idx))
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("v_const", float(batch_idx))

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=4, num_sanity_val_steps=0)
    trainer.fit(Model(), loader(64), loader(64))
    cm = trainer.callback_metrics
    assert float(cm["t_const"]) == 2.0  # last step value
    assert float(cm["v_const"]) == 1.5  # epoch mean of 0, 1, 2, 3


def test_on_step_and_on_epoch_fork_names(tmp_path: Any) -> None:
    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("both", float(batch_idx), on_step=True, on_epoch=True, prog_bar=True)
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4, log_every_n_steps=1)
    trainer.fit(Model(), loader(64))
    cm = trainer.callback_metrics
    assert float(cm["both_step"]) == 3.0
    assert float(cm["both_epoch"]) == 1.5 and float(cm["both"]) == 1.5
    assert float(trainer.logged_metrics["both_epoch"]) == 1.5 and "both_step" in trainer.logged_metrics
    pb = trainer.progress_bar_metrics
    assert pb["both_step"] == 3.0 and pb["both_epoch"] == 1.5
    assert all(isinstance(v, float) for v in pb.values())


def test_epoch_mean_is_batch_size_weighted(tmp_path: Any) -> None:
    x = torch.zeros(10, 4)
    y = torch.zeros(10, 1)
    val = DataLoader(TensorDataset(x, y), batch_size=8)  # batches of 8 and 2

    class Model(TinyModel):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("v", float(batch_idx))  # 0 for 8 samples, 1 for 2 samples
            self.log("v_explicit", float(batch_idx), batch_size=1)

    trainer = quiet_trainer(tmp_path)
    trainer.validate(Model(), val, verbose=False)
    assert trainer.callback_metrics["v"].item() == pytest.approx(0.2)
    assert trainer.callback_metrics["v_explicit"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("fx,expected", [("sum", 6.0), ("max", 3.0), ("min", 0.0), (torch.max, 3.0)])
def test_reduce_fx(tmp_path: Any, fx: Any, expected: float) -> None:
    class Model(TinyModel):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("v", float(batch_idx), reduce_fx=fx)

    trainer = quiet_trainer(tmp_path)
    res = trainer.validate(Model(), loader(32), verbose=False)
    assert res == [{"v": expected}]


def test_logger_false_and_prog_bar(tmp_path: Any) -> None:
    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("hidden", 1.0, logger=False)
            self.log("shown", 2.0, prog_bar=True)
            self.log_dict({"a": 3.0, "b": torch.tensor(4.0)})
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_steps=2, log_every_n_steps=1)
    trainer.fit(Model(), loader())
    assert "hidden" not in trainer.logged_metrics and "hidden" in trainer.callback_metrics
    assert set(trainer.progress_bar_metrics) == {"shown"}
    assert float(trainer.logged_metrics["a"]) == 3.0 and float(trainer.logged_metrics["b"]) == 4.0
    assert "epoch" not in trainer.logged_metrics  # logger=False: as Lightning, the values alone


def test_logged_values_are_detached_and_not_synced(tmp_path: Any) -> None:
    """Stored values are detached tensors; nothing is converted per step."""

    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = super().training_step(batch, batch_idx)
            self.log("loss_graph", loss)
            return loss

    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(Model(), loader())
    v = trainer.callback_metrics["loss_graph"]
    assert isinstance(v, torch.Tensor) and not v.requires_grad


def test_callbacks_can_log_and_epoch_end_hooks_log_epoch_level(tmp_path: Any) -> None:
    class Logs(Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            pl_module.log("cb_step", 1.0)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            pl_module.log("cb_epoch", 5.0)

    class Model(TinyModel):
        def on_train_epoch_end(self) -> None:
            self.log("module_epoch", 7.0)

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[Logs()])
    trainer.fit(Model(), loader())
    assert float(trainer.callback_metrics["cb_step"]) == 1.0
    assert float(trainer.callback_metrics["module_epoch"]) == 7.0
    assert float(trainer.logged_metrics["module_epoch"]) == 7.0


def test_log_rejects_bad_values_and_places(tmp_path: Any) -> None:
    class Vector(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("vec", torch.ones(3))
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match="must be a scalar"):
        quiet_trainer(tmp_path, max_steps=1).fit(Vector(), loader())

    class InFitStart(TinyModel):
        def on_fit_start(self) -> None:
            self.log("nope", 1.0)

    with pytest.raises(RuntimeError, match="on_fit_start"):
        quiet_trainer(tmp_path, max_steps=1).fit(InFitStart(), loader())

    class BadFx(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("x", 1.0, reduce_fx="median")
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match="reduce_fx"):
        quiet_trainer(tmp_path, max_steps=1).fit(BadFx(), loader())

    class Str(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("x", "high")
            return super().training_step(batch, batch_idx)

    with pytest.raises(TypeError, match="number or a scalar tensor"):
        quiet_trainer(tmp_path, max_steps=1).fit(Str(), loader())


def test_log_outside_trainer_is_ignored(tiny: TinyModel) -> None:
    tiny.log("x", 1.0)  # warns, does not raise


def test_sync_dist_is_one_fused_reduction_per_logging_point(tmp_path: Any) -> None:
    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("s1", 1.0, sync_dist=True, reduce_fx="sum")
            self.log("s2", 2.0, sync_dist=True, reduce_fx="sum")
            self.log("m", 3.0, sync_dist=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("v1", 1.0, sync_dist=True)
            self.log("v2", 4.0, sync_dist=True)

    strategy = TwoEqualRanks()
    trainer = quiet_trainer(tmp_path, max_steps=4, log_every_n_steps=2, strategy=strategy, limit_val_batches=2,
                            num_sanity_val_steps=0, val_check_interval=4, devices="auto")
    trainer.fit(Model(), loader(64), loader(32))
    step_calls = [c for c in strategy.reduce_calls if c[1] == (2,)]
    # two logging points (steps 2 and 4), one sum-reduction (s1, s2) and one mean (m) each
    assert [c for c in strategy.reduce_calls if c[0] == "sum" and c[1] == (2,)] == [("sum", (2,))] * 2
    assert float(trainer.callback_metrics["s1"]) == 2.0 and float(trainer.callback_metrics["s2"]) == 4.0
    # validation epoch: a single fused "sum" carrying both totals and both weights
    assert ("sum", (4,)) in strategy.reduce_calls
    assert float(trainer.callback_metrics["v2"]) == 4.0
    assert step_calls


def test_test_returns_metric_dicts_per_dataloader(tmp_path: Any) -> None:
    class Model(TinyModel):
        def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("acc", float(dataloader_idx))
            self.log("shared", 1.0, add_dataloader_idx=False)

    trainer = quiet_trainer(tmp_path)
    res = trainer.test(Model(), [loader(16), loader(16)], verbose=False)
    assert res[0]["acc/dataloader_idx_0"] == 0.0 and res[1]["acc/dataloader_idx_1"] == 1.0
    assert res[0]["shared"] == 1.0 and res[1]["shared"] == 1.0


def test_seed_callback_metrics_snippets(tmp_path: Any) -> None:
    """The seed's property examples: callback_metrics, logged_metrics (log=True), progress_bar_metrics."""

    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("a_val", 2)
            self.log("b_val", 2, log=True)
            self.log("c_val", 2, prog_bar=True)
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_steps=1, log_every_n_steps=1)
    trainer.fit(Model(), loader())
    assert trainer.callback_metrics["a_val"] == 2
    assert trainer.logged_metrics["b_val"] == 2
    assert trainer.progress_bar_metrics["c_val"] == 2


def test_repeated_tensor_logs_take_the_fast_path_with_the_same_results(tmp_path: Any) -> None:
    # self.log(name, tensor) repeated with the same options skips resolving them again
    # (LightningModule.log); values, epoch means, dataloader suffixes and option checks
    # must come out as on the first call.
    seen: List[float] = []

    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("t", torch.tensor(float(batch_idx)))
            self.log("t2", torch.tensor(2.0 * batch_idx), on_epoch=True)
            return super().training_step(batch, batch_idx)

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            seen.append(float(self.trainer.callback_metrics["t"]))

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            self.log("v", torch.tensor(float(batch_idx + 10 * dataloader_idx)))

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=3,
                            num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(Model(), loader(64), [loader(64), loader(64)])
    assert seen == [0.0, 1.0, 2.0, 3.0]
    cm = trainer.callback_metrics
    assert float(cm["t"]) == 3.0 and float(cm["t2_epoch"]) == 3.0  # mean of 0, 2, 4, 6
    assert float(cm["v/dataloader_idx_0"]) == 1.0 and float(cm["v/dataloader_idx_1"]) == 11.0

    class Changed(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            self.log("x", torch.tensor(1.0), on_epoch=batch_idx > 1)
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match="use one set of options per name"):
        quiet_trainer(tmp_path, max_steps=4).fit(Changed(), loader())
