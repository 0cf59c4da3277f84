"""Bad input fails early with a message that names the argument and says what to change."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import volt

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(max_epochs="10"), TypeError, "max_epochs"),
    (dict(max_epochs=-2), ValueError, "max_epochs"),
    (dict(limit_train_batches=1.5), ValueError, "limit_train_batches"),
    (dict(limit_val_batches="all"), TypeError, "limit_val_batches"),
    (dict(val_check_interval=0), ValueError, "val_check_interval"),
    (dict(accumulate_grad_batches=0), ValueError, "accumulate_grad_batches"),
    (dict(gradient_clip_algorithm="l1"), ValueError, "gradient_clip_algorithm"),
    (dict(gradient_clip_val=-1.0), ValueError, "gradient_clip_val"),
    (dict(tpu_cores=8), ValueError, "tpu_cores"),
    (dict(ipus=1), ValueError, "ipus"),
    (dict(accelerator="tpu"), ValueError, "accelerator"),
    (dict(gpus=1), ValueError, "CUDA"),
    (dict(devices=0), ValueError, "devices"),
    (dict(precision="fp8"), ValueError, "precision"),
    (dict(max_time="1 hour"), ValueError, "max_time"),
    (dict(weights_summary="all"), ValueError, "weights_summary"),
    (dict(log_gpu_memory="max"), ValueError, "log_gpu_memory"),
    (dict(track_grad_norm=0), ValueError, "track_grad_norm"),
    (dict(deterministic="yes"), ValueError, "deterministic"),
    (dict(auto_scale_batch_size="linear"), ValueError, "auto_scale_batch_size"),
    (dict(callbacks=[object()]), TypeError, "callbacks"),
    (dict(logger=42), TypeError, "logger"),
    (dict(profiler="fancy"), ValueError, "profiler"),
    (dict(strategy="deepspeed"), ValueError, "strategy"),
    (dict(check_val_every_n_epoch=None), ValueError, "check_val_every_n_epoch"),
    (dict(enable_checkpointing="yes"), TypeError, "enable_checkpointing"),
])
def test_bad_trainer_arguments(kwargs: Any, exc: type, match: str) -> None:
    if "gpus" in kwargs and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(exc, match=match):
        volt.Trainer(logger=kwargs.pop("logger", False), **kwargs)


def test_training_step_returning_non_tensor(tmp_path: Any) -> None:
    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return "oops"

    with pytest.raises(TypeError, match="must return the loss tensor.*automatic_optimization = False"):
        quiet_trainer(tmp_path, max_steps=1).fit(Model(), loader())

    class NoLossKey(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"los": super().training_step(batch, batch_idx)}

    with pytest.raises(ValueError, match="without a 'loss' key"):
        quiet_trainer(tmp_path, max_steps=1).fit(NoLossKey(), loader())

    class Detached(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return super().training_step(batch, batch_idx).detach()

    with pytest.raises(RuntimeError, match="does not require grad"):
        quiet_trainer(tmp_path, max_steps=1).fit(Detached(), loader())


@pytest.mark.parametrize("bad", [
    lambda m: "adam",
    lambda m: {"lr_scheduler": None},
    lambda m: {"optimizer": torch.optim.SGD(m.parameters(), lr=0.1), "scheduler": 1},
    lambda m: [],
    lambda m: {"optimizer": torch.optim.SGD(m.parameters(), lr=0.1),
               "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(torch.optim.SGD(m.parameters(), lr=0.1), 1),
                                "interval": "batch"}},
])
def test_configure_optimizers_unknown_form(tmp_path: Any, bad: Any) -> None:
    class Model(TinyModel):
        def configure_optimizers(self) -> Any:
            return bad(self)

    with pytest.raises(ValueError, match="configure_optimizers|lr_scheduler"):
        quiet_trainer(tmp_path, max_steps=1).fit(Model(), loader())


def test_empty_dataloader(tmp_path: Any, tiny: TinyModel) -> None:
    empty = DataLoader(TensorDataset(torch.zeros(3, 4), torch.zeros(3, 1)), batch_size=8, drop_last=True)
    with pytest.raises(ValueError, match="train_dataloader has length 0.*lower batch_size"):
        quiet_trainer(tmp_path, max_steps=1).fit(tiny, empty)
    with pytest.raises(ValueError, match="test_dataloader has length 0"):
        quiet_trainer(tmp_path).test(tiny, empty, verbose=False)


def test_missing_pieces(tmp_path: Any) -> None:
    class NoStep(volt.LightningModule):
        def configure_optimizers(self) -> Any:
            return None

    with pytest.raises(ValueError, match="no training_step"):
        quiet_trainer(tmp_path, max_steps=1).fit(NoStep(), loader())
    with pytest.raises(ValueError, match="no training data"):
        quiet_trainer(tmp_path, max_steps=1).fit(TinyModel())
    with pytest.raises(TypeError, match="LightningModule"):
        quiet_trainer(tmp_path).fit(torch.nn.Linear(2, 2), loader())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="selects 0 of the train_dataloader"):
        quiet_trainer(tmp_path, max_steps=1, limit_train_batches=0.01).fit(TinyModel(), loader())

    class TwoOpts(TinyModel):
        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.SGD(self.parameters(), lr=0.1)]

    with pytest.raises(ValueError, match="manual optimization"):
        quiet_trainer(tmp_path, max_steps=1).fit(TwoOpts(), loader())
    with pytest.raises(ValueError, match="ckpt_path='best'"):
        quiet_trainer(tmp_path).test(TinyModel(), loader(), ckpt_path="best")


def test_exceptions_run_on_exception_and_propagate(tmp_path: Any) -> None:
    seen = []

    class Watch(volt.Callback):
        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            seen.append(type(exception).__name__)

    class Boom(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            raise KeyError("boom")

    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[Watch()])
    with pytest.raises(KeyError):
        trainer.fit(Boom(), loader())
    assert seen == ["KeyError"] and trainer.state.status == "interrupted"


def test_keyboard_interrupt_runs_hooks(tmp_path: Any) -> None:
    seen = []

    class Watch(volt.Callback):
        def on_keyboard_interrupt(self, trainer: Any, pl_module: Any) -> None:
            seen.append("kbd")

    class Interrupt(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            raise KeyboardInterrupt

    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[Watch()])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(Interrupt(), loader())
    assert seen == ["kbd"] and trainer.interrupted
