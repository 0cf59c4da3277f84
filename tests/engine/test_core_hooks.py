"""The hook order of fit/validate/test/predict, asserted call by call."""
from __future__ import annotations

from typing import Any, List

import pytest
import torch

import volt
from volt.callbacks.base import Callback

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(60)

MODULE_HOOKS = [
    "prepare_data", "setup", "teardown", "configure_model", "configure_optimizers",
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end", "on_validation_start", "on_validation_end",
    "on_validation_epoch_start", "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_validation_model_eval", "on_validation_model_train", "on_validation_model_zero_grad",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start",
    "on_test_batch_end", "on_test_model_eval",
    "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end", "on_predict_model_eval",
    "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
    "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad",
    "optimizer_zero_grad", "optimizer_step", "configure_gradient_clipping", "lr_scheduler_step",
    "training_step", "validation_step", "test_step", "predict_step",
    "on_save_checkpoint", "on_load_checkpoint",
]
CALLBACK_HOOKS = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
    "on_train_batch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
    "on_validation_epoch_end", "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end", "on_test_batch_start",
    "on_test_batch_end", "on_predict_start", "on_predict_end", "on_predict_epoch_start", "on_predict_epoch_end",
    "on_predict_batch_start", "on_predict_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad", "on_save_checkpoint",
]


def recording_module(calls: List[str]) -> TinyModel:
    """A TinyModel whose every hook appends its name to ``calls`` and then runs the default."""

    def wrap(name: str) -> Any:
        base = getattr(TinyModel, name)

        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return base(self, *args, **kwargs)

        hook.__name__ = name
        return hook

    cls = type("RecordingModel", (TinyModel,), {n: wrap(n) for n in MODULE_HOOKS})
    torch.manual_seed(0)
    return cls()


def recording_callback(calls: List[str]) -> Callback:
    def wrap(name: str) -> Any:
        def hook(self: Any, trainer: Any, pl_module: Any, *args: Any) -> None:
            calls.append(f"Callback.{name}")

        return hook

    return type("RecordingCallback", (Callback,), {n: wrap(n) for n in CALLBACK_HOOKS})()


def batch(i: int, *, zero_grad: bool = True) -> List[str]:
    """One automatic-optimization training batch (no accumulation)."""
    return [
        "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
        "Callback.on_train_batch_start", "on_train_batch_start",
        "optimizer_step", "training_step",
        *(["Callback.on_before_zero_grad", "on_before_zero_grad", "optimizer_zero_grad"] if zero_grad else []),
        "Callback.on_before_backward", "on_before_backward", "backward",
        "Callback.on_after_backward", "on_after_backward",
        "Callback.on_before_optimizer_step", "on_before_optimizer_step", "configure_gradient_clipping",
        "Callback.on_train_batch_end", "on_train_batch_end",
    ]


def val_batches(n: int) -> List[str]:
    out: List[str] = []
    for _ in range(n):
        out += ["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
                "Callback.on_validation_batch_start", "on_validation_batch_start", "validation_step",
                "Callback.on_validation_batch_end", "on_validation_batch_end"]
    return out


def val_loop(n: int, in_training: bool) -> List[str]:
    return [
        *(["on_validation_model_zero_grad"] if in_training else []),
        "on_validation_model_eval", "Callback.on_validation_start", "on_validation_start",
        "Callback.on_validation_epoch_start", "on_validation_epoch_start",
        *val_batches(n),
        "Callback.on_validation_epoch_end", "on_validation_epoch_end",
        "Callback.on_validation_end", "on_validation_end", "on_validation_model_train",
    ]


def test_fit_hook_order_with_validation(tmp_path: Any) -> None:
    calls: List[str] = []
    model = recording_module(calls)
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1,
                            num_sanity_val_steps=1, callbacks=[recording_callback(calls)])
    trainer.fit(model, loader(32), loader(16))
    epoch = lambda: [  # noqa: E731
        "Callback.on_train_epoch_start", "on_train_epoch_start",
        *batch(0), *batch(1),
        *val_loop(1, in_training=True),
        "Callback.on_train_epoch_end", "on_train_epoch_end",
    ]
    expected = [
        "prepare_data", "Callback.setup", "setup", "configure_model", "configure_optimizers",
        "Callback.on_fit_start", "on_fit_start",
        "Callback.on_sanity_check_start", *val_loop(1, in_training=False), "Callback.on_sanity_check_end",
        "Callback.on_train_start", "on_train_start",
        *epoch(), *epoch(),
        "Callback.on_train_end", "on_train_end", "Callback.on_fit_end", "on_fit_end",
        "Callback.teardown", "teardown",
    ]
    assert calls == expected
    assert trainer.global_step == 4 and trainer.current_epoch == 2


def test_hooks_order_documented_in_loop_docstring() -> None:
    """The docstring of fit_loop states the order this file asserts."""
    from volt.trainer import fit_loop

    doc = fit_loop.__doc__ or ""
    order = ["on_fit_start", "on_sanity_check_start", "on_train_start", "on_train_epoch_start",
             "on_train_batch_start", "training_step", "on_before_zero_grad", "on_before_backward",
             "on_after_backward", "on_before_optimizer_step", "configure_gradient_clipping",
             "on_train_batch_end", "on_train_epoch_end", "on_train_end", "on_fit_end", "teardown"]
    positions = [doc.index(name) for name in order]
    assert positions == sorted(positions)


def test_accumulation_zero_grad_and_step_only_at_window_edges(tmp_path: Any) -> None:
    calls: List[str] = []
    model = recording_module(calls)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4, accumulate_grad_batches=2,
                            num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, loader(32))
    train = [c for c in calls if c in ("training_step", "optimizer_zero_grad", "backward", "optimizer_step")]
    # window 1: zero_grad on its first batch, step on its last; same for window 2.
    assert train == ["training_step", "optimizer_zero_grad", "backward",
                     "optimizer_step", "training_step", "backward",
                     "training_step", "optimizer_zero_grad", "backward",
                     "optimizer_step", "training_step", "backward"]
    assert trainer.global_step == 2


def test_validate_test_predict_hook_order(tmp_path: Any) -> None:
    calls: List[str] = []
    model = recording_module(calls)
    trainer = quiet_trainer(tmp_path, callbacks=[recording_callback(calls)])
    trainer.test(model, loader(8, batch_size=8), verbose=False)
    assert calls == [
        "prepare_data", "Callback.setup", "setup", "configure_model",
        "on_test_model_eval", "Callback.on_test_start", "on_test_start",
        "Callback.on_test_epoch_start", "on_test_epoch_start",
        "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
        "Callback.on_test_batch_start", "on_test_batch_start", "test_step",
        "Callback.on_test_batch_end", "on_test_batch_end",
        "Callback.on_test_epoch_end", "on_test_epoch_end", "Callback.on_test_end", "on_test_end",
        "Callback.teardown", "teardown",
    ]
    calls.clear()
    preds = trainer.predict(model, loader(16, batch_size=8))
    assert len(preds) == 2 and preds[0].shape == (8, 1)
    assert calls == [
        "prepare_data", "Callback.setup", "setup", "configure_model",
        "on_predict_model_eval", "Callback.on_predict_start", "on_predict_start",
        "Callback.on_predict_epoch_start", "on_predict_epoch_start",
        *(["on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
           "Callback.on_predict_batch_start", "on_predict_batch_start", "predict_step",
           "Callback.on_predict_batch_end", "on_predict_batch_end"] * 2),
        "Callback.on_predict_epoch_end", "on_predict_epoch_end", "Callback.on_predict_end", "on_predict_end",
        "Callback.teardown", "teardown",
    ]


def test_callbacks_receive_only_overridden_hooks(tmp_path: Any) -> None:
    """Dispatch goes only to callbacks that override a hook (computed once per run)."""

    class OnlyEpochs(Callback):
        def __init__(self) -> None:
            self.epochs = 0

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            self.epochs += 1

    cb = OnlyEpochs()
    trainer = quiet_trainer(tmp_path, max_epochs=3, limit_train_batches=2, callbacks=[cb])
    trainer.fit(TinyModel(), loader(32))
    assert cb.epochs == 3
    assert trainer.callbacks_for("on_train_batch_end") == [] or cb not in trainer.callbacks_for("on_train_batch_end")
    assert cb in trainer.callbacks_for("on_train_epoch_end")


def test_legacy_1x_hooks(tmp_path: Any) -> None:
    """on_init_*, on_epoch_*, on_batch_*, training_step_end, *_epoch_end(outputs), on_train_epoch_end(outputs)."""
    calls: List[str] = []

    class Legacy(Callback):
        def on_init_start(self, trainer: Any) -> None:
            calls.append("init_start")

        def on_init_end(self, trainer: Any) -> None:
            calls.append("init_end")

        def on_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            calls.append(f"epoch_start:{trainer.state.stage}")

        def on_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            calls.append(f"epoch_end:{trainer.state.stage}")

        def on_batch_start(self, trainer: Any, pl_module: Any) -> None:
            calls.append("batch_start")

        def on_batch_end(self, trainer: Any, pl_module: Any) -> None:
            calls.append("batch_end")

        def on_train_epoch_end(self, trainer: Any, pl_module: Any, outputs: Any) -> None:
            calls.append(f"train_epoch_end_outputs:{len(outputs)}")

    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return {"loss": super().training_step(batch, batch_idx), "idx": batch_idx}

        def training_step_end(self, out: Any) -> Any:
            calls.append("training_step_end")
            return out

        def training_epoch_end(self, outputs: List[Any]) -> None:
            calls.append(f"training_epoch_end:{[o['idx'] for o in outputs]}")
            assert not outputs[0]["loss"].requires_grad

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            return batch_idx

        def validation_epoch_end(self, outputs: List[Any]) -> None:
            calls.append(f"validation_epoch_end:{outputs}")

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=2,
                            num_sanity_val_steps=0, callbacks=[Legacy()])
    assert calls == ["init_start", "init_end"]
    calls.clear()
    trainer.fit(Model(), loader(32), loader(32))
    assert calls == [
        "epoch_start:train",
        "batch_start", "training_step_end", "batch_end",
        "batch_start", "training_step_end", "batch_end",
        "epoch_start:validate", "validation_epoch_end:[0, 1]", "epoch_end:validate",
        "training_epoch_end:[0, 1]", "train_epoch_end_outputs:2", "epoch_end:train",
    ]


def test_on_train_batch_start_minus_one_skips_rest_of_epoch(tmp_path: Any) -> None:
    class Model(TinyModel):
        def on_train_batch_start(self, batch: Any, batch_idx: int) -> Any:
            return -1 if batch_idx == 2 else None

    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=5)
    trainer.fit(Model(), loader(64))
    assert trainer.global_step == 4  # 2 batches x 2 epochs
