"""A TrainingJob with a checkpoint volume keeps the default logger's files on it."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import volt

pytestmark = pytest.mark.timeout(120)


class Tiny(volt.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(**kwargs) -> volt.Trainer:
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=4)
    trainer = volt.Trainer(max_steps=3, enable_progress_bar=False, enable_model_summary=False,
                           log_every_n_steps=1, **kwargs)
    trainer.fit(Tiny(), data)
    return trainer


def test_the_default_logger_writes_under_the_jobs_checkpoint_directory(tmp_path, monkeypatch):
    volume = tmp_path / "volume" / "job"
    monkeypatch.setenv("VOLT_CHECKPOINT_DIR", str(volume))
    monkeypatch.chdir(tmp_path)
    trainer = _fit(enable_checkpointing=False)
    assert trainer.logger.save_dir == str(volume / "logs")
    written = [name for _, _, files in os.walk(volume / "logs") for name in files]
    assert any(name.startswith("events.out.tfevents") or name == "metrics.csv" for name in written), written
    assert not (tmp_path / "lightning_logs").exists()


def test_default_root_dir_given_by_the_script_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLT_CHECKPOINT_DIR", str(tmp_path / "volume"))
    trainer = volt.Trainer(default_root_dir=str(tmp_path / "mine"), max_steps=1)
    assert trainer.logger.save_dir == str(tmp_path / "mine")


def test_without_a_job_the_logger_stays_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("VOLT_CHECKPOINT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert volt.Trainer(max_steps=1).logger.save_dir == str(tmp_path)
