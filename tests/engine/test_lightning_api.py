"""Lightning APIs volt adds for ports (their behaviour is compared with Lightning in
test_lightning_differential.py): the error paths and what the differential test does not reach."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import volt
from volt.callbacks import GradientAccumulationScheduler, LambdaCallback

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(120)


def test_lambda_callback_rejects_what_is_not_a_hook() -> None:
    with pytest.raises(TypeError, match="'on_trian_start' is not a Callback hook"):
        LambdaCallback(on_trian_start=lambda trainer, pl_module: None)
    with pytest.raises(TypeError, match="'state_dict' is not a Callback hook"):
        LambdaCallback(state_dict=lambda: {})
    with pytest.raises(TypeError, match="must be a function"):
        LambdaCallback(on_fit_start=3)


def test_lambda_callbacks_do_not_share_hooks(tmp_path: Path, tiny: TinyModel) -> None:
    seen = []
    first = LambdaCallback(on_fit_start=lambda trainer, pl_module: seen.append("first"))
    second = LambdaCallback(on_fit_end=lambda trainer, pl_module: seen.append("second"))
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1, callbacks=[first, second]).fit(tiny, loader())
    assert seen == ["first", "second"] and isinstance(first, LambdaCallback) and isinstance(first, volt.Callback)


def test_gradient_accumulation_scheduler_checks(tmp_path: Path, tiny: TinyModel) -> None:
    with pytest.raises(ValueError, match="epoch keys"):
        GradientAccumulationScheduler({-1: 2})
    with pytest.raises(ValueError, match="factors"):
        GradientAccumulationScheduler({0: 0})
    with pytest.raises(TypeError, match="non-empty dict"):
        GradientAccumulationScheduler({})
    assert GradientAccumulationScheduler({2: 4}).get_accumulate_grad_batches(1) == 1
    trainer = quiet_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2,
                            callbacks=[GradientAccumulationScheduler({0: 3})])
    with pytest.raises(ValueError, match="both set the accumulation"):
        trainer.fit(tiny, loader())


class WithBuffer(TinyModel):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("added_later", torch.zeros(1))


def test_strict_loading_false_restores_a_checkpoint_with_other_keys(tmp_path: Path, tiny: TinyModel) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    trainer.fit(tiny, loader())
    trainer.save_checkpoint(tmp_path / "old.ckpt")
    model = WithBuffer()
    with pytest.raises(RuntimeError, match="added_later"):
        quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2).fit(model, loader(),
                                                                         ckpt_path=str(tmp_path / "old.ckpt"))
    model.strict_loading = False
    resumed = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2)
    resumed.fit(model, loader(), ckpt_path=str(tmp_path / "old.ckpt"))
    assert resumed.global_step == 4


def test_toggled_optimizer_restores_on_error() -> None:
    model = nn.Linear(2, 2)
    module = TinyModel()
    module.extra = model
    opt = torch.optim.SGD(module.layer.parameters(), lr=0.1)
    with pytest.raises(KeyError):
        with module.toggled_optimizer(opt):
            assert not module.extra.weight.requires_grad and module.layer.weight.requires_grad
            raise KeyError("boom")
    assert all(p.requires_grad for p in module.parameters())


def test_prediction_writer_checks_interval_and_handles_plain_iterables(tmp_path: Path, tiny: TinyModel) -> None:
    from volt.callbacks import BasePredictionWriter

    with pytest.raises(ValueError, match="write_interval"):
        BasePredictionWriter("step")
    seen = []

    class Writer(BasePredictionWriter):
        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            seen.append((batch_idx, batch_indices))

    batches = [(torch.randn(2, 4), torch.randn(2, 1)) for _ in range(2)]  # not a DataLoader: no indices
    quiet_trainer(tmp_path, callbacks=[Writer()]).predict(tiny, batches, return_predictions=False)
    assert seen == [(0, None), (1, None)]
    with pytest.raises(NotImplementedError, match="write_on_epoch_end"):
        quiet_trainer(tmp_path, callbacks=[Writer("epoch")]).predict(tiny, batches)
