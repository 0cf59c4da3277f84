"""Loggers: CSV files, TensorBoard event files, versions, rank-zero-only writes."""
from __future__ import annotations

import argparse
import csv
import os

import pytest
import torch
import yaml

from volt.loggers import CSVLogger, Logger, TensorBoardLogger, rank_zero_only, tensorboard_available


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_writes_metrics_and_hparams(tmp_path):
    logger = CSVLogger(tmp_path, name="exp")
    assert logger.version == 0
    assert logger.log_dir == os.path.join(tmp_path, "exp", "version_0")
    logger.log_hyperparams({"lr": 0.1, "layers": (2, 3), "opt": {"name": "adam"}, "obj": object()})
    logger.log_metrics({"loss": torch.tensor(0.5)}, step=0)
    logger.log_metrics({"loss": 0.25, "acc": 0.75}, step=1)  # a new column appears
    logger.finalize("success")
    rows = _read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    assert list(rows[0].keys())[0] == "step"
    assert rows == [
        {"step": "0", "loss": "0.5", "acc": ""},
        {"step": "1", "loss": "0.25", "acc": "0.75"},
    ]
    hp = yaml.safe_load(open(os.path.join(logger.log_dir, "hparams.yaml")))
    assert hp["lr"] == 0.1 and hp["layers"] == [2, 3] and hp["opt"] == {"name": "adam"}
    assert hp["obj"].startswith("<object object")


def test_csv_logger_rewrites_hparams_only_after_they_change(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"lr": 0.1})
    logger.save()
    path = os.path.join(logger.log_dir, "hparams.yaml")
    os.remove(path)
    logger.log_metrics({"loss": 0.5}, step=0)
    logger.save()  # a metrics flush: the unchanged hparams are not dumped again
    assert not os.path.exists(path)
    logger.log_hyperparams({"layers": 2})
    logger.save()
    assert yaml.safe_load(open(path)) == {"lr": 0.1, "layers": 2}


def test_csv_logger_flushes_every_n_steps_and_appends(tmp_path):
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=10)
    path = os.path.join(logger.log_dir, "metrics.csv")
    for step in range(0, 25, 5):  # logged every 5 steps: 0..20
        logger.log_metrics({"loss": float(step)}, step=step)
        if step < 9:
            assert not os.path.exists(path) or len(_read_csv(path)) == 0
    # Flushed once step 9 was passed (at 10) and again 10 steps later (at 20).
    assert [r["step"] for r in _read_csv(path)] == ["0", "5", "10", "15", "20"]
    logger.log_metrics({"loss": 1.0}, step=25)
    logger.save()
    assert len(_read_csv(path)) == 6


def test_csv_logger_versions_increment_and_explicit_version(tmp_path):
    a = CSVLogger(tmp_path)
    a.log_metrics({"x": 1.0}, step=0)
    a.save()
    b = CSVLogger(tmp_path)
    assert b.version == 1
    c = CSVLogger(tmp_path, version="run-a")
    assert c.log_dir.endswith(os.path.join("lightning_logs", "run-a"))
    d = CSVLogger(tmp_path, version=7)
    assert d.log_dir.endswith("version_7")


def test_csv_logger_prefix_and_bad_args(tmp_path):
    logger = CSVLogger(tmp_path, prefix="train")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.save()
    assert "train-loss" in _read_csv(os.path.join(logger.log_dir, "metrics.csv"))[0]
    with pytest.raises(ValueError, match="flush_logs_every_n_steps"):
        CSVLogger(tmp_path, flush_logs_every_n_steps=0)
    with pytest.raises(ValueError, match="loss"):
        logger.log_metrics({"loss": torch.ones(3)}, step=1)
    with pytest.raises(TypeError, match="hyper-parameters"):
        logger.log_hyperparams([1, 2])


def test_csv_logger_accepts_namespace(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams(argparse.Namespace(batch_size=32))
    assert yaml.safe_load(open(os.path.join(logger.log_dir, "hparams.yaml"))) == {"batch_size": 32}


def test_loggers_write_nothing_on_nonzero_rank(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = CSVLogger(tmp_path)
    logger.log_hyperparams({"a": 1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    # User code calling the experiment directly runs on every rank and does nothing here.
    assert not logger.experiment
    logger.experiment.log_metrics({"x": 1.0}, 0)
    tb = TensorBoardLogger(tmp_path) if tensorboard_available() else None
    if tb is not None:
        tb.experiment.add_scalar("x", 1.0, 0)
        tb.finalize("success")
    assert not os.path.exists(os.path.join(tmp_path, "lightning_logs"))


def test_logger_base_is_abstract_and_subclassable(tmp_path):
    with pytest.raises(TypeError):
        Logger()  # type: ignore[abstract]

    class ListLogger(Logger):
        def __init__(self):
            self.rows = []

        @property
        def name(self):
            return "list"

        @property
        def version(self):
            return 0

        def log_metrics(self, metrics, step=None):
            self.rows.append((step, dict(metrics)))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    lg = ListLogger()
    lg.log_metrics({"a": 1.0}, step=3)
    lg.finalize("success")
    assert lg.rows == [(3, {"a": 1.0})] and lg.log_dir is None


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard not installed")
def test_tensorboard_logger_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    logger.log_hyperparams({"lr": 0.01, "nested": {"depth": 2}})
    for step in range(3):
        logger.log_metrics({"loss": torch.tensor(1.0 / (step + 1))}, step=step)
    logger.finalize("success")
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [0, 1, 2]
    assert loss[2].value == pytest.approx(1 / 3)
    assert acc.Scalars("hp_metric")[0].value == -1
    assert yaml.safe_load(open(os.path.join(logger.log_dir, "hparams.yaml"))) == {"lr": 0.01, "nested": {"depth": 2}}
    assert TensorBoardLogger(tmp_path, name="tb").version == 1


def test_csv_logger_through_fit(tmp_path):
    from tiny_models import TinyModel, loader, quiet_trainer

    logger = CSVLogger(tmp_path, name="fit")
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, log_every_n_steps=2)
    trainer.fit(TinyModel(), loader(n=32, batch_size=8), loader(n=16, batch_size=8))
    assert trainer.log_dir == logger.log_dir
    rows = _read_csv(os.path.join(logger.log_dir, "metrics.csv"))
    train_rows = [r for r in rows if r.get("train_loss")]
    assert [int(r["step"]) for r in train_rows] == [1, 3, 5, 7]  # every 2nd of 8 steps (0-based)
    assert [r for r in rows if r.get("val_loss")], "epoch-level val_loss rows are missing"
    assert yaml.safe_load(open(os.path.join(logger.log_dir, "hparams.yaml"))) == {"dim": 4, "lr": 0.05}


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard not installed")
def test_default_logger_is_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tiny_models import TinyModel, loader, quiet_trainer

    trainer = quiet_trainer(tmp_path, max_epochs=1, logger=True, log_every_n_steps=1)
    trainer.fit(TinyModel(), loader(n=32, batch_size=8))
    assert isinstance(trainer.logger, TensorBoardLogger)
    assert trainer.log_dir == os.path.join(tmp_path, "lightning_logs", "version_0")
    acc = EventAccumulator(trainer.log_dir)
    acc.Reload()
    assert len(acc.Scalars("train_loss")) == 4


def test_sync_version_adopts_rank_zeros_version(tmp_path):
    (tmp_path / "lightning_logs" / "version_0").mkdir(parents=True)
    late = CSVLogger(tmp_path)  # would pick version_1 on its own
    late.sync_version(lambda value: 0)  # what rank 0's broadcast returns
    assert late.version == 0 and late.log_dir.endswith("version_0")


def test_1x_names():
    from volt.callbacks.progress import ProgressBar, ProgressBarBase
    from volt.loggers import LightningLoggerBase

    assert LightningLoggerBase is Logger and ProgressBarBase is ProgressBar


@pytest.mark.skipif(not tensorboard_available(), reason="tensorboard not installed")
def test_tensorboard_log_graph(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    logger = TensorBoardLogger(tmp_path, log_graph=True)
    with pytest.warns(UserWarning, match="example_input_array"):
        logger.log_graph(model)
    model.example_input_array = torch.zeros(2, 4)
    logger.log_graph(model)
    logger.finalize("success")
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    assert acc.Graph() is not None
