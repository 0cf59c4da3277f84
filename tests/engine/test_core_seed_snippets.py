"""The seed tutorial's snippets, run as written (only the import line changes), plus DataModule and tune()."""
from __future__ import annotations

from typing import Any, Dict, List

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import volt as pl  # the one line a port changes: `import pytorch_lightning as pl`
from volt import LightningDataModule, LightningModule, Trainer, seed_everything

from tiny_models import loader, regression_data

pytestmark = pytest.mark.timeout(120)

criterion = nn.MSELoss()


class SeedModel(pl.LightningModule):
    """Section 2 of the seed: training_step / training_epoch_end computing history."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)
        self.history: Dict[str, List[float]] = {"loss": [], "acc": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # 数据类型自动转换,模型自动调用.train()
        x, y = batch
        _y = self(x)
        loss = criterion(_y, y)  # 计算loss
        return loss  # 返回loss,更新网络

    def training_epoch_end(self, outs):  # 计算本轮的loss和acc
        loss = 0.
        for out in outs:  # outs按照训练顺序排序
            loss += out["loss"].cpu().detach().item()
        loss /= len(outs)
        self.history["loss"].append(loss)
        self.history["acc"].append(0.0)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_seed_training_epoch_end_history(tmp_path: Any) -> None:
    model = SeedModel()
    trainer = pl.Trainer(max_epochs=3, default_root_dir=str(tmp_path), logger=False, checkpoint_callback=False,
                         weights_summary=None, progress_bar_refresh_rate=0)
    trainer.fit(model, train_dataloader=loader())
    assert len(model.history["loss"]) == 3
    assert model.history["loss"][-1] < model.history["loss"][0]


def test_seed_training_step_end_pattern(tmp_path: Any) -> None:
    """training_step returns outputs; training_step_end computes the loss (the seed's multi-GPU pattern)."""

    class Model(SeedModel):
        def training_step(self, batch, batch_idx):
            x, y = batch
            _y = self(x)
            return {"output": _y, "target": y}

        def training_step_end(self, training_step_outputs):
            loss = criterion(training_step_outputs["output"], training_step_outputs["target"])
            return loss

        def training_epoch_end(self, outs):
            self.history["loss"].append(float(torch.stack([o["loss"] for o in outs]).mean()))

    model = Model()
    Trainer(max_epochs=2, logger=False, checkpoint_callback=False, weights_summary=None,
            default_root_dir=str(tmp_path)).fit(model, loader())
    assert len(model.history["loss"]) == 2


def test_seed_trainer_init_with_every_1x_default(tmp_path: Any) -> None:
    """The seed's __init__ signature with its defaults (gpus=None, tpu_cores=None...) is accepted."""
    trainer = Trainer(
        logger=True, checkpoint_callback=True, callbacks=None, default_root_dir=str(tmp_path), gradient_clip_val=0,
        process_position=0, num_nodes=1, num_processes=1, gpus=None, auto_select_gpus=False, tpu_cores=None,
        log_gpu_memory=None, progress_bar_refresh_rate=1, overfit_batches=0.0, track_grad_norm=-1,
        check_val_every_n_epoch=1, fast_dev_run=False, accumulate_grad_batches=1, max_epochs=1000, min_epochs=1,
        max_steps=None, min_steps=None, limit_train_batches=1.0, limit_val_batches=1.0, limit_test_batches=1.0,
        val_check_interval=1.0, flush_logs_every_n_steps=100, log_every_n_steps=50, accelerator=None,
        sync_batchnorm=False, precision=32, weights_summary="top", weights_save_path=None, num_sanity_val_steps=2,
        truncated_bptt_steps=None, resume_from_checkpoint=None, profiler=None, benchmark=False, deterministic=False,
        reload_dataloaders_every_epoch=False, auto_lr_find=False, replace_sampler_ddp=True, terminate_on_nan=False,
        auto_scale_batch_size=False, prepare_data_per_node=True, plugins=None, amp_backend="native", amp_level=None,
        distributed_backend=None, automatic_optimization=True, move_metrics_to_cpu=False,
    )
    assert trainer.max_epochs == 1000 and trainer.min_epochs == 1 and trainer.max_steps == -1
    assert trainer.precision == "32-true" and trainer.world_size == 1 and trainer.is_global_zero


def test_seed_properties_in_training_step(tmp_path: Any) -> None:
    """current_epoch, logger.experiment and log_dir used inside training_step as the seed shows."""
    seen: Dict[str, Any] = {}

    class Model(SeedModel):
        def training_step(self, batch, batch_idx):
            current_epoch = self.trainer.current_epoch
            if current_epoch > 100:
                pass
            logger = self.trainer.logger
            seen["experiment"] = logger.experiment
            seen["log_dir"] = self.trainer.log_dir
            self.log("a_val", 2)
            return super().training_step(batch, batch_idx)

        def training_epoch_end(self, outs):
            pass

    trainer = Trainer(max_epochs=1, default_root_dir=str(tmp_path), weights_summary=None, checkpoint_callback=False)
    trainer.fit(Model(), loader())
    callback_metrics = trainer.callback_metrics
    assert callback_metrics["a_val"] == 2
    assert seen["experiment"] is not None and seen["log_dir"].startswith(str(tmp_path))


def test_seed_test_with_test_dataloaders_and_verbose(tmp_path: Any, capsys: Any) -> None:
    class Model(SeedModel):
        def test_step(self, batch, batch_idx):
            x, y = batch
            self.log("test_loss", criterion(self(x), y))

    model = Model()
    trainer = Trainer(max_epochs=1, default_root_dir=str(tmp_path), logger=False, weights_summary=None)
    trainer.fit(model, loader())
    results = trainer.test(test_dataloaders=loader())  # seed: test(model=None, test_dataloaders=..., ckpt_path='best')
    assert set(results[0]) == {"test_loss"}
    assert "test_loss" in capsys.readouterr().out


class RegressionDataModule(LightningDataModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.calls: List[str] = []

    def prepare_data(self) -> None:
        self.calls.append("prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"setup:{stage}")
        self.train_set = regression_data(64)
        self.val_set = regression_data(16, seed=1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size)

    def teardown(self, stage: str) -> None:
        self.calls.append(f"teardown:{stage}")

    def state_dict(self) -> Dict[str, Any]:
        return {"calls": len(self.calls)}


def test_datamodule_lifecycle(tmp_path: Any) -> None:
    from tiny_models import TinyModel

    dm = RegressionDataModule()
    trainer = Trainer(max_epochs=2, default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False,
                      enable_model_summary=False)
    model = TinyModel()
    trainer.fit(model, datamodule=dm)
    assert dm.calls == ["prepare_data", "setup:fit", "teardown:fit"]
    assert trainer.num_training_batches == 8 and dm.trainer is trainer
    res = trainer.test(model, datamodule=dm, verbose=False)
    assert dm.calls[-3:] == ["prepare_data", "setup:test", "teardown:test"] and "test_loss" in res[0]
    trainer.save_checkpoint(str(tmp_path / "dm.ckpt"))
    ckpt = torch.load(str(tmp_path / "dm.ckpt"), weights_only=False)
    assert ckpt["RegressionDataModule"]["calls"] == 6 and ckpt["datamodule_hyper_parameters"] == {"batch_size": 8}
    dm2 = LightningDataModule.from_datasets(regression_data(32), batch_size=16)
    t2 = Trainer(max_epochs=1, default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False,
                 enable_model_summary=False)
    t2.fit(TinyModel(), datamodule=dm2)
    assert t2.global_step == 2


def test_seed_everything_reproducible(tmp_path: Any) -> None:
    from tiny_models import TinyModel

    def run() -> torch.Tensor:
        seed_everything(123)
        model = TinyModel()
        Trainer(max_epochs=1, default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False,
                enable_model_summary=False).fit(model, DataLoader(regression_data(64), batch_size=8, shuffle=True))
        return model.layer.weight.detach().clone()

    assert torch.equal(run(), run())
    assert seed_everything(7) == 7
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)


def test_tune_auto_lr_find_and_scale_batch_size(tmp_path: Any) -> None:
    class Model(LightningModule):
        def __init__(self, lr: float = 1e-3, batch_size: int = 2) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.lr = lr
            self.batch_size = batch_size
            self.net = nn.Linear(4, 1)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return criterion(self.net(x), y)

        def train_dataloader(self):
            return DataLoader(regression_data(256), batch_size=self.batch_size)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.lr)

    model = Model()
    trainer = Trainer(auto_lr_find=True, auto_scale_batch_size="power", max_epochs=1, default_root_dir=str(tmp_path),
                      logger=False, enable_checkpointing=False, enable_model_summary=False)
    result = trainer.tune(model, scale_batch_size_kwargs={"max_trials": 3}, lr_find_kwargs={"num_training": 20})
    assert set(result) == {"scale_batch_size", "lr_find"}
    found = model.batch_size  # doubled from 2 while trials succeed (3 trials)
    assert found == result["scale_batch_size"] and found in (8, 16)
    assert model.lr != 1e-3 and model.lr > 0
