"""Each Trainer argument's effect on what runs (counts of batches, steps, epochs, validations)."""
from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, List

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

import volt
from volt.callbacks.base import Callback

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(120)


class Counting(TinyModel):
    """Records (epoch, batch_idx) of every training and validation step."""

    def __init__(self) -> None:
        super().__init__()
        self.train_seen: List[tuple] = []
        self.val_seen: List[tuple] = []
        self.sanity_val = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.train_seen.append((self.current_epoch, batch_idx))
        return super().training_step(batch, batch_idx)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if self.trainer.sanity_checking:
            self.sanity_val += 1
        else:
            self.val_seen.append((self.current_epoch, batch_idx))
        super().validation_step(batch, batch_idx)


def fit(tmp_path: Any, n_train: int = 64, n_val: int = 32, **kwargs: Any) -> tuple:
    model = Counting()
    trainer = quiet_trainer(tmp_path, **kwargs)
    trainer.fit(model, loader(n_train), loader(n_val))
    return model, trainer


def test_max_epochs_and_default(tmp_path: Any) -> None:
    model, trainer = fit(tmp_path, max_epochs=3)
    assert len(model.train_seen) == 24 and trainer.current_epoch == 3 and trainer.global_step == 24
    assert volt.Trainer(logger=False).max_epochs == 1000
    assert volt.Trainer(logger=False, max_steps=10).max_epochs == -1


def test_max_steps_stops_mid_epoch(tmp_path: Any) -> None:
    model, trainer = fit(tmp_path, max_steps=5, num_sanity_val_steps=0)
    assert trainer.global_step == 5 and len(model.train_seen) == 5
    assert trainer.current_epoch == 0


def test_min_epochs_overrides_early_stop(tmp_path: Any) -> None:
    class StopNow(Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            trainer.should_stop = True

    model, trainer = fit(tmp_path, max_epochs=10, min_epochs=3, limit_train_batches=2, callbacks=[StopNow()])
    assert trainer.current_epoch == 3
    model, trainer = fit(tmp_path, max_epochs=10, min_steps=5, limit_train_batches=2, callbacks=[StopNow()])
    assert trainer.global_step == 5  # stops as soon as min_steps is reached


def test_should_stop_mid_epoch(tmp_path: Any) -> None:
    class StopAt3(Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            if trainer.global_step == 3:
                trainer.should_stop = True

    model, trainer = fit(tmp_path, max_epochs=5, callbacks=[StopAt3()])
    assert trainer.global_step == 3


def test_max_time_stops_training(tmp_path: Any) -> None:
    class Slow(Counting):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            time.sleep(0.05)
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_time={"seconds": 1}, num_sanity_val_steps=0)
    model = Slow()
    start = time.monotonic()
    trainer.fit(model, loader(64))
    assert time.monotonic() - start < 10
    assert 0 < trainer.global_step < 100
    assert volt.Trainer(logger=False, max_time="00:00:01:30").max_time == timedelta(minutes=1, seconds=30)


@pytest.mark.parametrize("limit,expected", [(3, 3), (0.25, 2), (1.0, 8)])
def test_limit_train_batches(tmp_path: Any, limit: Any, expected: int) -> None:
    model, trainer = fit(tmp_path, max_epochs=1, limit_train_batches=limit)
    assert len(model.train_seen) == expected and trainer.num_training_batches == expected


@pytest.mark.parametrize("limit,expected", [(1, 1), (0.5, 2), (0, 0)])
def test_limit_val_batches(tmp_path: Any, limit: Any, expected: int) -> None:
    model, trainer = fit(tmp_path, max_epochs=1, limit_val_batches=limit, num_sanity_val_steps=0)
    assert len(model.val_seen) == expected


def test_limit_test_and_predict_batches(tmp_path: Any, tiny: TinyModel) -> None:
    trainer = quiet_trainer(tmp_path, limit_test_batches=2, limit_predict_batches=0.5)
    trainer.test(tiny, loader(64), verbose=False)
    assert trainer.num_test_batches == [2]
    assert len(trainer.predict(tiny, loader(64))) == 4


def test_overfit_batches_reuses_first_batches_in_order(tmp_path: Any) -> None:
    seen: List[torch.Tensor] = []

    class Model(Counting):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(batch[0][0].clone())
            return super().training_step(batch, batch_idx)

    trainer = quiet_trainer(tmp_path, max_epochs=3, overfit_batches=2, num_sanity_val_steps=0)
    model = Model()
    trainer.fit(model, loader(64, shuffle=True), loader(32))
    assert len(seen) == 6
    assert torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3]) and torch.equal(seen[0], seen[4])
    assert len(model.val_seen) == 6  # limit_val_batches follows overfit_batches


def test_fast_dev_run(tmp_path: Any) -> None:
    model, trainer = fit(tmp_path, fast_dev_run=True, max_epochs=5)
    assert model.train_seen == [(0, 0)] and model.val_seen == [(0, 0)] and model.sanity_val == 0
    assert trainer.loggers == []
    model, trainer = fit(tmp_path, fast_dev_run=3)
    assert len(model.train_seen) == 3 and len(model.val_seen) == 3


def test_val_check_interval_float_and_int(tmp_path: Any) -> None:
    model, _ = fit(tmp_path, max_epochs=1, val_check_interval=0.5, limit_val_batches=1, num_sanity_val_steps=0)
    assert model.val_seen == [(0, 0), (0, 0)]  # after batch 4 and batch 8
    model, _ = fit(tmp_path, max_epochs=1, val_check_interval=3, limit_val_batches=1, num_sanity_val_steps=0)
    assert len(model.val_seen) == 2  # after batches 3 and 6
    # counted across epochs when check_val_every_n_epoch=None
    model, _ = fit(tmp_path, max_epochs=2, val_check_interval=12, check_val_every_n_epoch=None,
                   limit_val_batches=1, num_sanity_val_steps=0)
    assert model.val_seen == [(1, 0)]


def test_check_val_every_n_epoch(tmp_path: Any) -> None:
    model, _ = fit(tmp_path, max_epochs=4, check_val_every_n_epoch=2, limit_train_batches=1,
                   limit_val_batches=1, num_sanity_val_steps=0)
    assert [e for e, _ in model.val_seen] == [1, 3]


@pytest.mark.parametrize("steps,expected", [(0, 0), (2, 2), (-1, 4)])
def test_num_sanity_val_steps(tmp_path: Any, steps: int, expected: int) -> None:
    model, trainer = fit(tmp_path, max_epochs=1, limit_train_batches=1, num_sanity_val_steps=steps)
    assert model.sanity_val == expected
    assert "val_loss" not in trainer.callback_metrics or model.val_seen  # sanity metrics are discarded


def test_accumulate_grad_batches_equals_big_batch(tmp_path: Any) -> None:
    """4 batches of 8 with accumulation 4 give the same update as one batch of 32."""
    torch.manual_seed(0)
    a = TinyModel()
    b = TinyModel()
    b.load_state_dict(a.state_dict())
    quiet_trainer(tmp_path, max_steps=1, accumulate_grad_batches=4).fit(a, loader(32, batch_size=8))
    quiet_trainer(tmp_path, max_steps=1).fit(b, loader(32, batch_size=32))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)


def test_accumulate_grad_batches_dict_schedule(tmp_path: Any) -> None:
    model, trainer = fit(tmp_path, max_epochs=2, accumulate_grad_batches={0: 1, 1: 4})
    assert trainer.global_step == 8 + 2


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping(tmp_path: Any, algorithm: str) -> None:
    norms: List[float] = []

    class Big(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return super().training_step(batch, batch_idx) * 1000.0

        def on_before_optimizer_step(self, optimizer: Any) -> None:
            self._pre = [p.grad.clone() for p in self.parameters()]

        def on_train_batch_end(self, *args: Any) -> None:
            grads = [p.grad for p in self.parameters()]
            if algorithm == "norm":
                norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))
            else:
                norms.append(max(float(g.abs().max()) for g in grads))

    trainer = quiet_trainer(tmp_path, max_steps=3, gradient_clip_val=0.5, gradient_clip_algorithm=algorithm)
    trainer.fit(Big(), loader(64))
    assert len(norms) == 3 and all(n <= 0.5 + 1e-4 for n in norms)


def test_deterministic_and_benchmark(tmp_path: Any) -> None:
    try:
        quiet_trainer(tmp_path, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
    quiet_trainer(tmp_path, benchmark=True)
    assert torch.backends.cudnn.benchmark
    quiet_trainer(tmp_path, benchmark=False)
    assert not torch.backends.cudnn.benchmark
    with pytest.raises(ValueError, match="deterministic"):
        quiet_trainer(tmp_path, deterministic=True, benchmark=True)
    torch.use_deterministic_algorithms(False)


def test_reload_dataloaders_every_n_epochs(tmp_path: Any) -> None:
    class Model(Counting):
        requested = 0

        def train_dataloader(self) -> Any:
            Model.requested += 1
            return loader(16)

    trainer = quiet_trainer(tmp_path, max_epochs=4, reload_dataloaders_every_n_epochs=2)
    trainer.fit(Model())
    assert Model.requested == 2  # epochs 0 and 2
    Model.requested = 0
    quiet_trainer(tmp_path, max_epochs=3, reload_dataloaders_every_epoch=True).fit(Model())
    assert Model.requested == 3


def test_terminate_on_nan_and_detect_anomaly(tmp_path: Any) -> None:
    class NaN(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return super().training_step(batch, batch_idx) * float("nan")

    with pytest.raises(ValueError, match="non-finite loss"):
        quiet_trainer(tmp_path, max_steps=2, terminate_on_nan=True).fit(NaN(), loader())

    class BadBackward(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, _ = batch
            return torch.sqrt(self(x) * 0 - 1).sum()  # sqrt of a negative: NaN in backward

    with pytest.raises(RuntimeError, match="nan|NaN"):
        quiet_trainer(tmp_path, max_steps=1, detect_anomaly=True).fit(BadBackward(), loader())


def test_track_grad_norm_logged_at_log_points(tmp_path: Any) -> None:
    trainer = quiet_trainer(tmp_path, max_steps=4, track_grad_norm=2, log_every_n_steps=2)
    trainer.fit(TinyModel(), loader())
    assert "grad_2.0_norm_total" in trainer.logged_metrics
    assert "grad_2.0_norm/layer.weight" in trainer.logged_metrics


def test_log_every_n_steps(tmp_path: Any, tiny: TinyModel) -> None:
    from volt.loggers import CSVLogger

    class Recording(CSVLogger):
        steps: List[int] = []

        def log_metrics(self, metrics: Any, step: Any = None) -> None:
            if "train_loss" in metrics:
                Recording.steps.append(step)
            super().log_metrics(metrics, step)

    trainer = quiet_trainer(tmp_path, max_steps=10, log_every_n_steps=3, logger=Recording(str(tmp_path)))
    trainer.fit(tiny, loader(128))
    assert Recording.steps == [2, 5, 8]


def test_iterable_without_length(tmp_path: Any) -> None:
    class Stream(IterableDataset):
        def __iter__(self) -> Any:
            g = torch.Generator().manual_seed(0)
            for _ in range(5):
                x = torch.randn(4, generator=g)
                yield x, x.sum(0, keepdim=True)

    model = Counting()
    trainer = quiet_trainer(tmp_path, max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(Stream(), batch_size=2), DataLoader(Stream(), batch_size=5))
    assert len(model.train_seen) == 6 and model.val_seen == [(0, 0), (1, 0)]
    # a plain list of batches works as a dataloader too
    batches = [(torch.randn(2, 4), torch.randn(2, 1)) for _ in range(3)]
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(TinyModel(), batches)
    assert trainer.global_step == 3


def test_1x_names_map_to_2x(tmp_path: Any) -> None:
    t = volt.Trainer(checkpoint_callback=False, weights_summary=None, progress_bar_refresh_rate=0,
                     replace_sampler_ddp=False, gpus=0, num_processes=1, amp_level="O0", amp_backend="native",
                     flush_logs_every_n_steps=10, process_position=1, logger=False, default_root_dir=str(tmp_path))
    assert not t.enable_checkpointing and not t.enable_model_summary and not t.enable_progress_bar
    assert not t.use_distributed_sampler and t.accelerator == "cpu" and t.precision == "32-true"
    assert t.checkpoint_callback is None
    t = volt.Trainer(logger=False, default_root_dir=str(tmp_path), weights_summary="full", enable_progress_bar=False)
    from volt.callbacks import ModelCheckpoint, ModelSummary

    assert isinstance(t.checkpoint_callback, ModelCheckpoint)
    assert [c._max_depth for c in t.callbacks if isinstance(c, ModelSummary)] == [-1]


def test_default_logger_and_log_dir(tmp_path: Any, tiny: TinyModel) -> None:
    trainer = volt.Trainer(default_root_dir=str(tmp_path), max_steps=1, enable_progress_bar=False,
                           enable_model_summary=False)
    trainer.fit(tiny, loader())
    assert trainer.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    assert type(trainer.logger).__name__ in ("TensorBoardLogger", "CSVLogger")
    assert quiet_trainer(tmp_path).log_dir == str(tmp_path)
