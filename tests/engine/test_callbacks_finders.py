"""LearningRateFinder and BatchSizeFinder: the tuner run from on_fit_start, through real fits."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from volt.callbacks.base import Callback
from volt.callbacks.finders import BatchSizeFinder, LearningRateFinder
from volt.tuner import Tuner

from tiny_models import TinyModel, loader, quiet_trainer, regression_data

pytestmark = pytest.mark.timeout(120)


def _weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class LossRecorder(Callback):
    """The loss and learning rate of every training batch of the real run."""

    def __init__(self) -> None:
        self.losses: List[float] = []
        self.lrs: List[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


# =====================================================================================
# LearningRateFinder
# =====================================================================================

LR_ARGS = dict(min_lr=1e-4, max_lr=1.0, num_training_steps=30)


def test_lr_finder_argument_checks():
    with pytest.raises(ValueError, match="mode"):
        LearningRateFinder(mode="cosine")
    with pytest.raises(ValueError, match="num_training_steps"):
        LearningRateFinder(num_training_steps=1)
    with pytest.raises(ValueError, match="min_lr"):
        LearningRateFinder(min_lr=1.0, max_lr=0.5)
    with pytest.raises(ValueError, match="early_stop_threshold"):
        LearningRateFinder(early_stop_threshold=0)
    with pytest.raises(TypeError, match="attr_name"):
        LearningRateFinder(attr_name=None)  # type: ignore[arg-type]
    assert LearningRateFinder(mode="LINEAR")._mode == "linear"  # Lightning lower-cases the mode


def test_lr_finder_matches_the_tuner_and_sets_the_lr(tmp_path):
    torch.manual_seed(0)
    reference = Tuner(quiet_trainer(tmp_path / "t")).lr_find(
        TinyModel(), loader(n=32), min_lr=1e-4, max_lr=1.0, num_training=30
    )
    torch.manual_seed(0)
    model = TinyModel()
    finder, recorder = LearningRateFinder(**LR_ARGS), LossRecorder()
    trainer = quiet_trainer(tmp_path / "cb", max_steps=3, callbacks=[finder, recorder])
    trainer.fit(model, loader(n=32))
    assert finder.optimal_lr is not None
    assert finder.optimal_lr.results == reference.results
    suggestion = reference.suggestion()
    assert finder.optimal_lr.suggestion() == suggestion
    assert model.hparams.lr == suggestion  # the model's field ...
    assert recorder.lrs == [suggestion] * 3  # ... and the optimizer this fit had already built
    assert trainer.global_step == 3 and len(recorder.losses) == 3  # the real run starts from step 0


def test_lr_finder_leaves_the_run_as_it_was(tmp_path):
    """update_attr=False: the run after the sweep is the run without it, bit for bit."""

    def run(path, callbacks):
        torch.manual_seed(0)
        model = TinyModel()
        recorder = LossRecorder()
        trainer = quiet_trainer(path, max_epochs=2, callbacks=callbacks + [recorder])
        trainer.fit(model, loader(n=32, shuffle=True), loader(n=16))
        return model, trainer, recorder

    plain_model, plain, plain_rec = run(tmp_path / "a", [])
    finder = LearningRateFinder(update_attr=False, **LR_ARGS)
    tuned_model, tuned, tuned_rec = run(tmp_path / "b", [finder])
    assert finder.optimal_lr is not None and len(finder.optimal_lr.results["lr"]) == 30
    assert tuned_rec.losses == plain_rec.losses  # same start weights, same shuffles (RNG isolated)
    assert all(torch.equal(v, _weights(plain_model)[k]) for k, v in _weights(tuned_model).items())
    assert (tuned.global_step, tuned.current_epoch) == (plain.global_step, plain.current_epoch) == (8, 2)
    assert set(tuned.callback_metrics) == set(plain.callback_metrics)
    assert tuned.callbacks[:2] == [finder, tuned_rec] and len(tuned.callbacks) == len(plain.callbacks) + 1


def test_lr_finder_with_a_scheduler_and_attr_name(tmp_path):
    class Scheduled(TinyModel):
        def __init__(self) -> None:
            super().__init__()
            self.hparams.pop("lr")
            self.my_lr = 0.01

        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=self.my_lr)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=100)]

    torch.manual_seed(0)
    model = Scheduled()
    finder = LearningRateFinder(attr_name="my_lr", mode="linear", **LR_ARGS)
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[finder])
    trainer.fit(model, loader(n=32))
    lr = finder.optimal_lr.suggestion()
    assert model.my_lr == lr and trainer.optimizers[0].param_groups[0]["lr"] == lr
    assert len(trainer.lr_scheduler_configs) == 1  # the sweep's scheduler clearing stayed in the sweep


def test_lr_finder_needs_an_lr_field(tmp_path):
    class NoLr(TinyModel):
        def __init__(self) -> None:
            super().__init__()
            self.hparams.pop("lr")

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[LearningRateFinder(**LR_ARGS)])
    with pytest.raises(AttributeError, match="lr"):
        trainer.fit(NoLr(), loader(n=16))


def test_lr_finder_skips_under_fast_dev_run(tmp_path):
    finder = LearningRateFinder(**LR_ARGS)
    trainer = quiet_trainer(tmp_path, fast_dev_run=True, callbacks=[finder])
    trainer.fit(TinyModel(), loader(n=16))
    assert finder.optimal_lr is None and trainer.global_step == 1


def test_lr_finder_trials_start_fresh_in_a_resumed_job(tmp_path, monkeypatch):
    """A TrainingJob restart (VOLT_RESUME=auto) resumes the real run, never the sweep's trial fit."""
    monkeypatch.setenv("VOLT_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    torch.manual_seed(0)
    quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True).fit(TinyModel(), loader(n=32))
    monkeypatch.setenv("VOLT_RESUME", "auto")
    finder = LearningRateFinder(**LR_ARGS)
    trainer = quiet_trainer(tmp_path, max_steps=6, enable_checkpointing=True, callbacks=[finder])
    trainer.fit(TinyModel(), loader(n=32))
    assert trainer.ckpt_path is not None and trainer.global_step == 6  # resumed at step 4, trained 2 more
    assert len(finder.optimal_lr.results["lr"]) == 30  # the sweep ran all its steps from step 0
    assert os.environ["VOLT_RESUME"] == "auto"


def test_lr_finder_under_a_profiler(tmp_path):
    finder = LearningRateFinder(**LR_ARGS)
    trainer = quiet_trainer(tmp_path, max_steps=2, profiler="simple", callbacks=[finder])
    profiler = trainer.profiler
    trainer.fit(TinyModel(), loader(n=16))
    assert trainer.profiler is profiler and trainer.global_step == 2
    assert "run_training_batch" in profiler.summary()


# =====================================================================================
# BatchSizeFinder
# =====================================================================================

class Sized(TinyModel):
    """Builds its loaders from ``self.batch_size``; a batch above ``limit`` samples runs out of memory
    (a CPU stand-in for CUDA OOM: MemoryError is what the tuner treats as out of memory)."""

    def __init__(self, batch_size: int = 4, limit: int = 12, early_loader: bool = False) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.limit = limit
        self.early_loader = early_loader

    def train_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(64), batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(regression_data(32, seed=1), batch_size=self.batch_size)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if batch[0].shape[0] > self.limit:
            raise MemoryError(f"batch of {batch[0].shape[0]} does not fit")
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        if self.early_loader:  # loads the train loader before on_fit_start, with the old size
            assert self.trainer.estimated_stepping_batches > 0
        return super().configure_optimizers()


def test_batch_size_finder_argument_checks():
    with pytest.raises(ValueError, match="mode"):
        BatchSizeFinder(mode="triple")
    for name in ("steps_per_trial", "init_val", "max_trials", "max_val"):
        with pytest.raises(ValueError, match=name):
            BatchSizeFinder(**{name: 0})
    with pytest.raises(ValueError, match="max_val"):
        BatchSizeFinder(init_val=64, max_val=32)
    with pytest.raises(ValueError, match="margin"):
        BatchSizeFinder(margin=1.0)
    assert BatchSizeFinder().optimal_batch_size == 2  # init_val until it runs, as in Lightning


@pytest.mark.parametrize("mode, found", [("power", 8), ("binsearch", 12)])
def test_batch_size_finder_matches_the_tuner(tmp_path, mode, found):
    # power: 4, 8 fit, 16 does not -> 8; binsearch goes on: 12 fits, 14 and 13 do not -> 12
    reference = Tuner(quiet_trainer(tmp_path / "t")).scale_batch_size(Sized(), mode=mode, steps_per_trial=1, init_val=4)
    assert reference == found
    model = Sized()
    finder = BatchSizeFinder(mode=mode, steps_per_trial=1, init_val=4, margin=0.0)
    trainer = quiet_trainer(tmp_path / "cb", max_epochs=1, callbacks=[finder])
    trainer.fit(model)
    assert finder.optimal_batch_size == reference == model.batch_size
    assert trainer.train_dataloader.batch_size == found  # the run used it
    assert trainer.global_step == -(-64 // found)
    assert trainer.val_dataloaders[0].batch_size == found


def test_batch_size_finder_binsearch_margin(tmp_path):
    model = Sized()
    finder = BatchSizeFinder(mode="binsearch", steps_per_trial=1, init_val=4)  # margin 0.05
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[finder])
    trainer.fit(model)
    assert finder.optimal_batch_size == model.batch_size == int(12 * 0.95) == 11
    assert trainer.train_dataloader.batch_size == 11


def test_batch_size_finder_max_val_and_early_loaded_loader(tmp_path):
    model = Sized(batch_size=2, early_loader=True)
    finder = BatchSizeFinder(steps_per_trial=1, max_val=8)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[finder])
    trainer.fit(model)
    assert finder.optimal_batch_size == 8 == model.batch_size
    assert trainer.train_dataloader.batch_size == 8 and trainer.global_step == 8


def test_batch_size_finder_setup_checks(tmp_path):
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[BatchSizeFinder()])
    with pytest.raises(ValueError, match="dataloaders passed to fit"):
        trainer.fit(Sized(), loader(n=16))
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[BatchSizeFinder(batch_arg_name="bs")])
    with pytest.raises(AttributeError, match="batch_arg_name='bs'"):
        trainer.fit(Sized())


def test_batch_size_finder_warns_for_evaluation(tmp_path):
    model = Sized(batch_size=4)
    trainer = quiet_trainer(tmp_path, callbacks=[BatchSizeFinder()])
    with pytest.warns(UserWarning, match="fit\\(\\) only"):
        trainer.test(model, loader(n=16), verbose=False)
    assert model.batch_size == 4
