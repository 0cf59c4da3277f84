"""Tiny real models and data for engine tests (no mocks): ``from tiny_models import TinyModel, loader``.

Importable by bare name from any engine test (pytest puts ``tests/engine`` on ``sys.path``
through its conftest.py); fixtures stay in conftest.py.
"""
from __future__ import annotations

from typing import Any, List

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import volt
from volt.strategies.single import SingleDeviceStrategy


def regression_data(n: int = 64, dim: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    w = torch.arange(1.0, dim + 1).unsqueeze(1)
    return TensorDataset(x, x @ w + 0.01 * torch.randn(n, 1, generator=g))


def loader(n: int = 64, batch_size: int = 8, dim: int = 4, shuffle: bool = False, seed: int = 0) -> DataLoader:
    return DataLoader(regression_data(n, dim, seed), batch_size=batch_size, shuffle=shuffle)


class TinyModel(volt.LightningModule):
    """Linear regression with train/val/test/predict steps and an SGD optimizer."""

    def __init__(self, dim: int = 4, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def quiet_trainer(tmp_path: Any, **kwargs: Any) -> volt.Trainer:
    """A Trainer writing under tmp_path, without logger/checkpoint/summary unless asked."""
    defaults = dict(default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False,
                    enable_model_summary=False, enable_progress_bar=False, accelerator="cpu", devices=1)
    defaults.update(kwargs)
    return volt.Trainer(**defaults)


class TwoEqualRanks(SingleDeviceStrategy):
    """A real strategy whose reduce pretends a second rank holds the same values; it records
    each call (``reduce_calls``), so a test can count how sync_dist values are reduced."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.reduce_calls: List[tuple] = []

    @property
    def world_size(self) -> int:
        return 2

    def reduce(self, tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        self.reduce_calls.append((reduce_op, tuple(tensor.shape)))
        return tensor * 2 if reduce_op == "sum" else tensor
