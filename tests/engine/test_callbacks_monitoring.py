"""EarlyStopping, LearningRateMonitor and Timer through real training runs."""
from __future__ import annotations

import csv
import math
import os
import time
from datetime import timedelta

import pytest
import torch

from volt.callbacks import EarlyStopping, LearningRateMonitor, Timer
from volt.callbacks.timer import parse_duration
from volt.loggers import CSVLogger

from tiny_models import TinyModel, loader, quiet_trainer


class ScriptedVal(TinyModel):
    def __init__(self, values, name="val_loss"):
        super().__init__()
        self.values = list(values)
        self.name = name

    def validation_step(self, batch, batch_idx):
        self.log(self.name, torch.tensor(self.values[min(self.current_epoch, len(self.values) - 1)]))


def _fit(tmp_path, model, callbacks, epochs=10, **kwargs):
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks, **kwargs)
    trainer.fit(model, loader(n=16, batch_size=8), loader(n=8, batch_size=8))
    return trainer


# --- EarlyStopping -----------------------------------------------------------------

def test_early_stopping_patience(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=2)
    trainer = _fit(tmp_path, ScriptedVal([1.0, 0.5, 0.6, 0.7, 0.1, 0.1]), [es])
    # best at epoch 1; epochs 2 and 3 do not improve -> stop after epoch 3.
    assert (trainer.current_epoch, trainer.global_step) == (4, 8)  # 4 epochs ran (0..3)
    assert es.stopped_epoch == 3
    assert es.wait_count == 2
    assert es.best_score.item() == pytest.approx(0.5)
    assert "did not improve" in es.stopping_reason


def test_early_stopping_min_delta_and_mode_max(tmp_path):
    es = EarlyStopping(monitor="acc", mode="max", patience=1, min_delta=0.05)
    trainer = _fit(tmp_path, ScriptedVal([0.5, 0.52, 0.9], name="acc"), [es])
    # 0.52 is not 0.05 better than 0.5: stop after epoch 1.
    assert es.stopped_epoch == 1 and es.best_score.item() == pytest.approx(0.5)


def test_early_stopping_thresholds_and_nan(tmp_path):
    es = EarlyStopping(monitor="val_loss", stopping_threshold=0.2, patience=100)
    _fit(tmp_path / "a", ScriptedVal([1.0, 0.5, 0.1, 0.05]), [es])
    assert es.stopped_epoch == 2 and "Stopping threshold" in es.stopping_reason
    es = EarlyStopping(monitor="val_loss", divergence_threshold=5.0, patience=100)
    _fit(tmp_path / "b", ScriptedVal([1.0, 6.0, 0.1]), [es])
    assert es.stopped_epoch == 1 and "Divergence" in es.stopping_reason
    es = EarlyStopping(monitor="val_loss", patience=100)
    _fit(tmp_path / "c", ScriptedVal([1.0, math.nan, 0.1]), [es])
    assert es.stopped_epoch == 1 and "not finite" in es.stopping_reason


def test_early_stopping_strict_and_lenient(tmp_path):
    with pytest.raises(RuntimeError, match="nope"):
        _fit(tmp_path / "a", TinyModel(), [EarlyStopping(monitor="nope")])
    trainer = _fit(tmp_path / "b", TinyModel(), [EarlyStopping(monitor="nope", strict=False)], epochs=2)
    assert trainer.current_epoch == 2


def test_early_stopping_respects_min_epochs(tmp_path):
    es = EarlyStopping(monitor="val_loss", patience=0)
    trainer = _fit(tmp_path, ScriptedVal([1.0, 2.0, 3.0, 4.0, 5.0]), [es], min_epochs=4)
    # Asked to stop from epoch 1 on, but min_epochs=4 runs epochs 0..3.
    assert trainer.current_epoch == 4 and es.stopped_epoch == 3


def test_early_stopping_state_roundtrip():
    es = EarlyStopping(monitor="val_loss", patience=5)
    es.wait_count, es.stopped_epoch, es.best_score = 3, 7, torch.tensor(0.25)
    other = EarlyStopping(monitor="val_loss")
    other.load_state_dict(es.state_dict())
    assert (other.wait_count, other.stopped_epoch, other.patience) == (3, 7, 5)
    assert other.best_score.item() == 0.25
    assert es.state_key == "EarlyStopping{'monitor': 'val_loss', 'mode': 'min'}"  # Lightning's key, keyword order


def test_early_stopping_bad_args():
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(monitor="x", mode="down")
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(monitor="x", patience=-1)
    with pytest.raises(ValueError, match="monitor"):
        EarlyStopping(monitor="")


# --- LearningRateMonitor ---------------------------------------------------------------

class TwoGroups(TinyModel):
    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(1, 1)

    def configure_optimizers(self):
        opt = torch.optim.SGD(
            [{"params": self.layer.parameters()}, {"params": self.head.parameters(), "lr": 0.01}], lr=0.1, momentum=0.9
        )
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _metrics_rows(logger):
    logger.save()
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_lr_monitor_logs_each_param_group_per_step(tmp_path):
    logger = CSVLogger(tmp_path)
    mon = LearningRateMonitor(log_momentum=True)
    _fit(tmp_path, TwoGroups(), [mon], epochs=1, logger=logger, log_every_n_steps=1)
    assert set(mon.lrs) == {"lr-SGD/pg1", "lr-SGD/pg2"}
    # StepLR halves every step: 0.1, 0.05 (two steps per epoch here).
    assert mon.lrs["lr-SGD/pg1"] == pytest.approx([0.1, 0.05])
    assert mon.lrs["lr-SGD/pg2"] == pytest.approx([0.01, 0.005])
    assert mon.last_momentum_values["lr-SGD/pg1-momentum"] == 0.9
    rows = [r for r in _metrics_rows(logger) if r.get("lr-SGD/pg1")]
    assert [float(r["lr-SGD/pg1"]) for r in rows] == pytest.approx([0.1, 0.05])


def test_lr_monitor_epoch_interval_and_names(tmp_path):
    class Adam2(TinyModel):
        def configure_optimizers(self):
            opt = torch.optim.Adam(self.parameters(), lr=0.02)
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1)
            return [opt], [{"scheduler": sched, "name": "my-lr"}]

    logger = CSVLogger(tmp_path)
    mon = LearningRateMonitor(logging_interval="epoch", log_momentum=True)
    _fit(tmp_path, Adam2(), [mon], epochs=3, logger=logger)
    assert mon.lrs["my-lr"] == pytest.approx([0.02, 0.002, 0.0002])
    assert mon.last_momentum_values["my-lr-momentum"] == 0.9  # Adam's beta1


def test_lr_monitor_needs_a_logger(tmp_path):
    with pytest.raises(ValueError, match="logger"):
        _fit(tmp_path, TinyModel(), [LearningRateMonitor()], epochs=1)
    with pytest.raises(ValueError, match="logging_interval"):
        LearningRateMonitor(logging_interval="batch")


# --- Timer ------------------------------------------------------------------------------

class SlowSteps(TinyModel):
    def training_step(self, batch, batch_idx):
        time.sleep(0.05)
        return super().training_step(batch, batch_idx)


def test_timer_stops_training(tmp_path):
    timer = Timer(duration=timedelta(seconds=0.3))
    trainer = quiet_trainer(tmp_path, max_epochs=1000, callbacks=[timer])
    start = time.monotonic()
    trainer.fit(SlowSteps(), loader(n=16, batch_size=8))
    took = time.monotonic() - start
    # Stopped by the clock, not by max_epochs, and only once 0.3 s of training passed.
    assert 0 < trainer.global_step < 2000 and trainer.current_epoch < 1000
    assert took < 30
    assert timer.time_elapsed("train") >= 0.3
    assert timer.time_remaining("train") <= 0
    assert timer.start_time("train") is not None and timer.end_time("train") is not None


def test_timer_max_time_and_state_offset(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=1000, max_time={"seconds": 0.2})
    trainer.fit(SlowSteps(), loader(n=16, batch_size=8))
    timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
    assert timer.duration == pytest.approx(0.2)
    assert timer.time_elapsed("train") >= 0.2 and 0 < trainer.global_step < 2000
    # A resumed run counts the time already spent.
    timer = Timer(duration="00:00:00:10")
    timer.load_state_dict({"time_elapsed": {"train": 9.5}})
    assert timer.time_elapsed("train") == 9.5 and timer.time_remaining() == pytest.approx(0.5)
    timer2 = Timer(duration="00:00:00:10")
    timer2.load_state_dict({"time_elapsed": {"train": 11.0}})
    trainer2 = quiet_trainer(tmp_path, max_epochs=5, callbacks=[timer2])
    trainer2.fit(TinyModel(), loader(n=16, batch_size=8))
    assert trainer2.global_step == 0  # budget already spent: stops before the first step


def test_timer_duration_parsing():
    assert parse_duration("01:02:03:04") == timedelta(days=1, hours=2, minutes=3, seconds=4)
    assert parse_duration({"minutes": 2}) == timedelta(minutes=2)
    assert parse_duration(None) is None
    with pytest.raises(ValueError, match="DD:HH:MM:SS"):
        Timer(duration="10 minutes")
    with pytest.raises(ValueError, match="positive"):
        Timer(duration="00:00:00:00")
    with pytest.raises(ValueError, match="interval"):
        Timer(duration="00:00:01:00", interval="batch")
    with pytest.raises(ValueError, match="stage"):
        Timer().time_elapsed("training")
