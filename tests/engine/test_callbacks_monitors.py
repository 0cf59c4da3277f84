"""DeviceStatsMonitor, ThroughputMonitor, SpikeDetection and Checkpoint through real training runs."""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch

from volt.callbacks.base import Callback
from volt.callbacks.checkpoint_base import Checkpoint
from volt.callbacks.device_stats import DeviceStatsMonitor, psutil_available
from volt.callbacks.spike import SpikeDetection, TrainingSpikeException
from volt.callbacks.throughput import ThroughputMonitor, _chip, throughput_metrics
from volt.loggers.base import Logger

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = [pytest.mark.timeout(120), pytest.mark.filterwarnings("ignore:ThroughputMonitor.*flops_per_batch")]

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class ListLogger(Logger):
    """Keeps every log_metrics call as (step, metrics)."""

    def __init__(self) -> None:
        self.rows: List[Tuple[Optional[int], Dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def steps_with(self, key: str) -> List[Optional[int]]:
        return [step for step, metrics in self.rows if key in metrics]

    def values(self, key: str) -> List[float]:
        return [metrics[key] for _, metrics in self.rows if key in metrics]

    def row(self, key: str, step: int) -> Dict[str, float]:
        return next(m for s, m in self.rows if s == step and key in m)


# =====================================================================================
# DeviceStatsMonitor
# =====================================================================================

class ThreadStats(DeviceStatsMonitor):
    """A device-stats callback whose stat is readable on any CPU (no psutil needed)."""

    def __init__(self) -> None:
        super().__init__(cpu_stats=False)

    def _collect(self, device: torch.device) -> Dict[str, float]:
        return {"threads": float(torch.get_num_threads())}


def test_device_stats_argument_and_logger_checks(tmp_path):
    with pytest.raises(TypeError, match="cpu_stats"):
        DeviceStatsMonitor(cpu_stats="yes")  # type: ignore[arg-type]
    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[DeviceStatsMonitor(cpu_stats=False)])
    with pytest.raises(ValueError, match="needs a logger"):
        trainer.fit(TinyModel(), loader(n=8))


@pytest.mark.skipif(psutil_available(), reason="checks the behaviour without psutil")
def test_device_stats_without_psutil(tmp_path):
    trainer = quiet_trainer(tmp_path, max_steps=1, logger=ListLogger(), callbacks=[DeviceStatsMonitor(cpu_stats=True)])
    with pytest.raises(ModuleNotFoundError, match="psutil"):
        trainer.fit(TinyModel(), loader(n=8))
    logger = ListLogger()
    trainer = quiet_trainer(tmp_path, max_steps=2, log_every_n_steps=1, logger=logger, callbacks=[DeviceStatsMonitor()])
    with pytest.warns(UserWarning, match="psutil is not installed"):
        trainer.fit(TinyModel(), loader(n=16))
    assert not any(k.startswith("DeviceStatsMonitor") for _, m in logger.rows for k in m)


@pytest.mark.skipif(not psutil_available(), reason="psutil not installed")
def test_device_stats_cpu_names(tmp_path):
    logger = ListLogger()
    trainer = quiet_trainer(tmp_path, max_steps=2, log_every_n_steps=1, logger=logger, callbacks=[DeviceStatsMonitor()])
    trainer.fit(TinyModel(), loader(n=16))
    for hook in ("on_train_batch_start", "on_train_batch_end"):
        for stat in ("cpu_percent", "cpu_vm_percent", "cpu_swap_percent"):
            assert logger.steps_with(f"DeviceStatsMonitor.{hook}/{stat}") == [0, 1]


def test_device_stats_cadence_names_and_steps(tmp_path):
    logger = ListLogger()
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=2, logger=logger, num_sanity_val_steps=0,
                            callbacks=[ThreadStats()])
    trainer.fit(TinyModel(), loader(n=48, batch_size=8), loader(n=32, batch_size=8))  # 6 train, 4 val batches
    threads = float(torch.get_num_threads())
    # Lightning's step is the count of stepped batches before this one; logged when (count + 1) % 2 == 0.
    assert logger.steps_with("ThreadStats.on_train_batch_start/threads") == [1, 3, 5]
    assert logger.steps_with("ThreadStats.on_train_batch_end/threads") == [1, 3, 5]
    assert set(logger.values("ThreadStats.on_train_batch_end/threads")) == {threads}
    # Validation at epoch end: its 2nd and 4th batch, at the fit loop's count before the last batch.
    assert logger.steps_with("ThreadStats.on_validation_batch_start/threads") == [5, 5]
    assert logger.steps_with("ThreadStats.on_validation_batch_end/threads") == [5, 5]
    # Stats go to the loggers only, as in Lightning.
    assert not any(k.startswith("ThreadStats") for k in trainer.callback_metrics)
    # Standalone test: the test loop's own cadence, at the fit loop's final count.
    trainer.test(TinyModel(), loader(n=16, batch_size=8), verbose=False)
    assert logger.steps_with("ThreadStats.on_test_batch_end/threads") == [6]


def test_device_stats_with_accumulation_follows_stepped_batches(tmp_path):
    logger = ListLogger()
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=2, accumulate_grad_batches=2, logger=logger,
                            callbacks=[ThreadStats()])
    trainer.fit(TinyModel(), loader(n=64, batch_size=8))  # 8 batches, 4 optimizer steps
    # Counts before each batch: 0,0,1,1,2,2,3,3 -> every batch of the windows where count + 1 is even.
    assert logger.steps_with("ThreadStats.on_train_batch_start/threads") == [1, 1, 3, 3]
    assert logger.steps_with("ThreadStats.on_train_batch_end/threads") == [1, 1, 3, 3]


def test_device_stats_log_every_n_steps_zero_logs_nothing(tmp_path):
    logger = ListLogger()
    trainer = quiet_trainer(tmp_path, max_steps=4, log_every_n_steps=0, logger=logger, callbacks=[ThreadStats()])
    trainer.fit(TinyModel(), loader(n=32))
    assert not any(k.startswith("ThreadStats") for _, m in logger.rows for k in m)


@needs_cuda
def test_device_stats_cuda_memory_stats(tmp_path):
    logger = ListLogger()
    trainer = quiet_trainer(tmp_path, accelerator="cuda", max_steps=4, log_every_n_steps=2, logger=logger,
                            callbacks=[DeviceStatsMonitor()])
    trainer.fit(TinyModel(), loader(n=32))
    key = "DeviceStatsMonitor.on_train_batch_end/allocated_bytes.all.current"
    assert logger.steps_with(key) == [1, 3]
    assert all(v > 0 for v in logger.values(key))
    assert logger.steps_with("DeviceStatsMonitor.on_train_batch_start/reserved_bytes.all.peak") == [1, 3]
    assert not logger.steps_with("DeviceStatsMonitor.on_train_batch_end/cpu_percent")  # cpu_stats=None on a GPU


# =====================================================================================
# ThroughputMonitor
# =====================================================================================

def _batch_size(batch: Any) -> int:
    return int(batch[0].shape[0])


def _items(batch: Any) -> int:
    return int(batch[0].numel())


class FlopsModel(TinyModel):
    flops_per_batch = 1000


def test_throughput_argument_checks():
    with pytest.raises(TypeError, match="batch_size_fn"):
        ThroughputMonitor(batch_size_fn=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="length_fn"):
        ThroughputMonitor(_batch_size, length_fn="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window_size"):
        ThroughputMonitor(_batch_size, window_size=1)
    with pytest.raises(TypeError, match="available_flops"):
        ThroughputMonitor(_batch_size, available_flops=1.0)
    assert ThroughputMonitor(_batch_size, separator=".").separator == "."


def test_throughput_metrics_formula():
    m = throughput_metrics([1.0, 2.0, 4.0], [1, 2, 3], [8, 16, 24], [32, 64, 96], [10, 20, 30], window_size=3,
                           world_size=2, peak_flops=100.0)
    assert m["time"] == 4.0 and m["batches"] == 3 and m["samples"] == 24 and m["lengths"] == 96
    assert m["device/batches_per_sec"] == pytest.approx(2 / 3)
    assert m["batches_per_sec"] == pytest.approx(4 / 3)
    assert m["device/samples_per_sec"] == pytest.approx(16 / 3) and m["samples_per_sec"] == pytest.approx(32 / 3)
    assert m["device/items_per_sec"] == pytest.approx(64 / 3) and m["items_per_sec"] == pytest.approx(128 / 3)
    assert m["flops_per_sec"] == pytest.approx(50 / 3) and m["device/flops_per_sec"] == pytest.approx(25 / 3)
    assert m["device/mfu"] == pytest.approx(25 / 300)
    short = throughput_metrics([1.0, 2.0], [1, 2], [8, 16], [], [], window_size=3)
    assert set(short) == {"time", "batches", "samples"}


def test_throughput_gpu_names():
    assert _chip("NVIDIA H200") == "h200 sxm" and _chip("NVIDIA H100 80GB HBM3") == "h100 sxm"
    assert _chip("NVIDIA A100-SXM4-80GB") == "a100" and _chip("NVIDIA L40") == "l40" and _chip("NVIDIA L4") == "l4"
    assert _chip("NVIDIA RTX A4000") is None and _chip("Tesla T4") == "t4"


def test_throughput_train_metrics_on_a_rolling_window(tmp_path):
    logger = ListLogger()
    monitor = ThroughputMonitor(_batch_size, length_fn=_items, window_size=3)
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=2, logger=logger, callbacks=[monitor])
    trainer.fit(FlopsModel(), loader(n=64, batch_size=8))  # 8 batches of 8 samples, 32 items each
    assert logger.steps_with("train/time") == [1, 3, 5, 7]
    first = logger.row("train/time", 1)
    assert first["train/batches"] == 2 and first["train/samples"] == 16 and first["train/lengths"] == 64
    assert first["epoch"] == 0.0
    assert "train/device/batches_per_sec" not in first  # two updates: the window of 3 is not full
    times = dict(zip(logger.steps_with("train/time"), logger.values("train/time")))
    assert all(b > a for a, b in zip(list(times.values()), list(times.values())[1:]))
    for step in (5, 7):
        # window of 3 updates, logged every 2: the window starts at the previous logging point
        row = logger.row("train/time", step)
        span = times[step] - times[step - 2]
        assert row["train/batches"] == step + 1 and row["train/samples"] == 8 * (step + 1)
        assert row["train/device/batches_per_sec"] == pytest.approx(2 / span)
        assert row["train/device/samples_per_sec"] == pytest.approx(16 / span)
        assert row["train/device/items_per_sec"] == pytest.approx(64 / span)
        assert row["train/device/flops_per_sec"] == pytest.approx(2000 / span)  # the first update's FLOPs excluded
        assert "train/batches_per_sec" not in row and "train/device/mfu" not in row  # one process, CPU
    assert trainer.logged_metrics["train/batches"].item() == 8
    assert not trainer.run_state.train_outputs_needed  # the loop need not detach step outputs for it


def test_throughput_counts_optimizer_steps_and_separator(tmp_path):
    logger = ListLogger()
    monitor = ThroughputMonitor(_batch_size, window_size=2, separator=".")
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=1, accumulate_grad_batches=2, logger=logger,
                            callbacks=[monitor])
    with pytest.warns(UserWarning, match="flops_per_batch"):
        trainer.fit(TinyModel(), loader(n=32, batch_size=8))  # 4 batches, 2 optimizer steps
    # Computed once an accumulation window closes: after batches 2 and 4.
    assert logger.steps_with("train.time") == [0, 1]
    assert logger.values("train.batches") == [2, 4]
    assert "train.device.batches_per_sec" in logger.row("train.time", 1)


class SlowValidation(TinyModel):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        time.sleep(0.1)
        super().validation_step(batch, batch_idx)


def test_throughput_validation_is_not_training_time(tmp_path):
    logger = ListLogger()
    monitor = ThroughputMonitor(_batch_size, window_size=2)
    trainer = quiet_trainer(tmp_path, max_epochs=2, log_every_n_steps=1, logger=logger, num_sanity_val_steps=0,
                            callbacks=[monitor])
    trainer.fit(SlowValidation(), loader(n=16, batch_size=8), loader(n=16, batch_size=8))  # 2 + 2 batches per epoch
    train = logger.values("train/time")
    assert len(train) == 4
    # 0.2 s of validation after epoch 0's last batch is taken out of the training clock.
    assert train[2] - train[1] < 0.1
    val_rows = [(s, m) for s, m in logger.rows if "validate/time" in m]
    assert [s for s, _ in val_rows] == [1, 2, 1, 2]  # each validation run's batch count, as Lightning logs it
    assert [m["validate/batches"] for _, m in val_rows] == [1, 2, 1, 2]  # reset at each validation run in fit
    assert val_rows[1][1]["validate/time"] >= 0.2
    assert "epoch" not in val_rows[0][1]


def test_throughput_test_and_predict(tmp_path):
    logger = ListLogger()
    monitor = ThroughputMonitor(_batch_size, window_size=2)
    trainer = quiet_trainer(tmp_path, log_every_n_steps=2, logger=logger, callbacks=[monitor])
    model = FlopsModel()
    trainer.test(model, loader(n=32, batch_size=8), verbose=False)
    assert logger.steps_with("test/time") == [2, 4]
    assert logger.row("test/time", 4)["test/samples"] == 32
    trainer.predict(model, loader(n=32, batch_size=8))
    assert logger.steps_with("predict/time") == [2, 4]
    assert "predict/device/flops_per_sec" in logger.row("predict/time", 4)
    # A second test() keeps counting samples (Lightning keeps the totals outside fit) with a new window.
    trainer.test(model, loader(n=16, batch_size=8), verbose=False)
    assert logger.values("test/samples")[-1] == 48


def test_throughput_rejects_inconsistent_counts(tmp_path):
    monitor = ThroughputMonitor(lambda batch: 0, window_size=2)
    trainer = quiet_trainer(tmp_path, max_steps=2, log_every_n_steps=2, logger=ListLogger(), callbacks=[monitor])
    with pytest.raises(ValueError, match="batch_size_fn"):
        trainer.fit(TinyModel(), loader(n=32))


def test_throughput_reads_tensor_counts_only_at_logging_points(tmp_path):
    logger = ListLogger()
    monitor = ThroughputMonitor(lambda batch: batch[0].new_tensor(batch[0].shape[0]).long(), window_size=2)
    trainer = quiet_trainer(tmp_path, max_steps=4, log_every_n_steps=2, logger=logger, callbacks=[monitor])
    trainer.fit(TinyModel(), loader(n=32))
    assert logger.values("train/samples") == [16.0, 32.0]


@needs_cuda
def test_throughput_cuda_events_give_consistent_rates(tmp_path):
    logger = ListLogger()
    monitor = ThroughputMonitor(_batch_size, window_size=3)
    trainer = quiet_trainer(tmp_path, accelerator="cuda", max_steps=8, log_every_n_steps=2, logger=logger,
                            callbacks=[monitor])
    trainer.fit(TinyModel(), loader(n=64))
    times = dict(zip(logger.steps_with("train/time"), logger.values("train/time")))
    assert list(times) == [1, 3, 5, 7]
    for step in (5, 7):
        span = times[step] - times[step - 2]
        assert span > 0
        assert logger.row("train/time", step)["train/device/batches_per_sec"] == pytest.approx(2 / span)
    assert len(monitor._clock._spare) <= 2 + 1  # events are recycled, not one per step forever


# =====================================================================================
# SpikeDetection
# =====================================================================================

class ScriptedLoss(TinyModel):
    """training_step returns the scripted loss of each global batch (still a function of the weights)."""

    def __init__(self, losses: List[float]) -> None:
        super().__init__()
        self.losses = losses
        self.seen = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        value = self.losses[min(self.seen, len(self.losses) - 1)]
        self.seen += 1
        return self(x).sum() * 0.0 + torch.tensor(value)


def _fit_losses(tmp_path, losses, spike, epochs=1, batches=None):
    n = batches if batches is not None else len(losses)
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, callbacks=[spike])
    trainer.fit(ScriptedLoss(losses), loader(n=8 * n, batch_size=8))
    return trainer


def test_spike_argument_checks():
    with pytest.raises(ValueError, match="mode"):
        SpikeDetection(mode="error")  # Lightning's mode is the direction: 'min' or 'max'
    with pytest.raises(ValueError, match="window"):
        SpikeDetection(window=0)
    with pytest.raises(ValueError, match="warmup"):
        SpikeDetection(warmup=-1)
    with pytest.raises(ValueError, match="atol"):
        SpikeDetection(atol="big")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtol"):
        SpikeDetection(rtol=float("nan"))
    with pytest.raises(TypeError, match="finite_only"):
        SpikeDetection(finite_only=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_spike"):
        SpikeDetection(on_spike="ignore")


# losses 1.0, 0.9, 0.95, 0.85 then x: mean of the four is 0.925; a spike needs |x - 0.925| >= 2 * 0.925 = 1.85
BASE = [1.0, 0.9, 0.95, 0.85]


def test_spike_below_the_relative_tolerance_trains_on(tmp_path):
    spike = SpikeDetection()
    trainer = _fit_losses(tmp_path, BASE + [2.7, 2.6], spike)
    assert trainer.global_step == 6 and spike.bad_batches == []
    # 0.95 (not an improvement, but on the mean) and 2.7 (1.775 < 1.85 away) are not spikes
    assert list(spike.running) == pytest.approx(BASE + [2.7, 2.6])
    assert not os.path.exists(tmp_path / "skip_batches.json")


def test_spike_raises_and_writes_the_batches_to_skip(tmp_path):
    spike = SpikeDetection()
    with pytest.raises(TrainingSpikeException, match="Training spike detected in batch 4") as info:
        _fit_losses(tmp_path, BASE + [2.8, 0.5], spike)
    assert isinstance(info.value, RuntimeError) and info.value.batch_idx == 4
    assert spike.bad_batches == [3, 4]
    path = tmp_path / "skip_batches.json"  # default: <default_root_dir>/skip_batches.json
    assert spike.exclude_batches_path == str(path) and json.loads(path.read_text()) == [3, 4]
    assert list(spike.running) == pytest.approx(BASE)  # the spike never entered the mean


def test_spike_warn_mode_keeps_training(tmp_path):
    spike = SpikeDetection(on_spike="warn", exclude_batches_path=tmp_path / "out")
    with pytest.warns(UserWarning, match="training spike in batch 4"):
        trainer = _fit_losses(tmp_path, BASE + [2.8, 0.5], spike)
    assert trainer.global_step == 6
    assert json.loads((tmp_path / "out" / "skip_batches.json").read_text()) == [3, 4]
    assert list(spike.running) == pytest.approx(BASE + [0.5])


def test_spike_atol_only_window_and_warmup(tmp_path):
    # rtol=None: any non-improving loss at least 0.5 away from the mean of the last 2 losses is a spike
    spike = SpikeDetection(atol=0.5, rtol=None, window=2)
    with pytest.raises(TrainingSpikeException, match="batch 3"):
        _fit_losses(tmp_path, [5.0, 1.0, 0.9, 1.7], spike)  # mean(1.0, 0.9) = 0.95; 1.7 is 0.75 away
    spike = SpikeDetection(atol=0.5, rtol=None, window=2)
    _fit_losses(tmp_path / "b", [5.0, 1.0, 0.9, 1.4], spike)  # 0.45 away: fine
    assert list(spike.running) == pytest.approx([0.9, 1.4])
    # warmup counts each epoch's batch index: batch 0 of every epoch is never judged
    spike = SpikeDetection(warmup=1)
    _fit_losses(tmp_path / "c", [1.0, 0.9, 50.0, 0.8], spike, epochs=2, batches=2)
    assert spike.bad_batches == [] and list(spike.running) == pytest.approx([1.0, 0.9, 50.0, 0.8])


def test_spike_mode_max(tmp_path):
    spike = SpikeDetection(mode="max")
    _fit_losses(tmp_path, [1.0, 5.0, 9.0], spike)  # rising is the good direction
    assert spike.bad_batches == []
    with pytest.raises(TrainingSpikeException, match="batch 3"):
        _fit_losses(tmp_path / "b", [10.0, 10.0, 10.0, -20.0], SpikeDetection(mode="max"))


def test_spike_non_finite_losses(tmp_path):
    with pytest.raises(TrainingSpikeException, match="batch 2"):
        _fit_losses(tmp_path, [1.0, 0.9, float("nan")], SpikeDetection())
    # finite_only=False: NaN is judged by the rule (not a spike) and kept out of the mean
    spike = SpikeDetection(finite_only=False)
    _fit_losses(tmp_path / "b", [1.0, 0.9, float("nan"), 0.8], spike)
    assert spike.bad_batches == [] and list(spike.running) == pytest.approx([1.0, 0.9, 0.8])
    with pytest.raises(TrainingSpikeException, match="batch 2"):  # +inf is far from any mean
        _fit_losses(tmp_path / "c", [1.0, 0.9, float("inf")], SpikeDetection(finite_only=False))


def test_spike_state_dict_round_trip():
    spike = SpikeDetection(window=3)
    for value in (1.0, 2.0, 3.0, 4.0):
        spike._accept(value)
    spike.bad_batches = [6, 7]
    other = SpikeDetection(window=3)
    other.load_state_dict(spike.state_dict())
    assert list(other.running) == [2.0, 3.0, 4.0] and other.last_val == 4.0 and other.bad_batches == [6, 7]
    assert other.running_mean == pytest.approx(3.0)


def test_spike_needs_the_loss(tmp_path):
    class NoLoss(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> None:
            return None

    trainer = quiet_trainer(tmp_path, max_steps=1, callbacks=[SpikeDetection()])
    with pytest.raises(TypeError, match="SpikeDetection needs training_step to return the loss"):
        trainer.fit(NoLoss(), loader(n=8))


# =====================================================================================
# Checkpoint
# =====================================================================================

def test_checkpoint_base_class_is_a_callback(tmp_path):
    class EveryStep(Checkpoint):
        def __init__(self) -> None:
            self.saved: List[int] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.saved.append(trainer.global_step)

    class Other(Callback):
        pass

    cb, other = EveryStep(), Other()
    assert isinstance(cb, Callback)
    # The trainer treats it as Lightning's does: it takes the default ModelCheckpoint's place,
    # runs after the other callbacks, and needs checkpointing on.
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[cb, other], enable_checkpointing=True)
    assert trainer.checkpoint_callbacks == [cb] and trainer.checkpoint_callback is cb
    assert trainer.callbacks.index(cb) > trainer.callbacks.index(other)
    trainer.fit(TinyModel(), loader(n=32))
    assert cb.saved == [1, 2, 3]
    with pytest.raises(ValueError, match="enable_checkpointing=False"):
        quiet_trainer(tmp_path, callbacks=[EveryStep()])
