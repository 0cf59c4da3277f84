"""Tiny models and random data for trying the Trainer and for tests (Lightning's demo names).

The classes take the constructor arguments of Lightning's ``demos.boring_classes``: 32 features,
a ``Linear(32, 2)`` model whose loss pushes its outputs towards zero, datasets of random vectors.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from volt.datamodule import LightningDataModule
from volt.module import LightningModule
from volt.utilities.types import STEP_OUTPUT


class RandomDataset(Dataset):
    """``length`` random vectors of ``size`` features, drawn once."""

    def __init__(self, size: int, length: int) -> None:
        self.len = length
        self.data = torch.randn(length, size)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]

    def __len__(self) -> int:
        return self.len


class RandomDictDataset(RandomDataset):
    """Items are ``{"a": x, "b": x + 2}``."""

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        a = self.data[index]
        return {"a": a, "b": a + 2}


class RandomIterableDataset(IterableDataset):
    """``count`` fresh random vectors per pass, no length."""

    def __init__(self, size: int, count: int) -> None:
        self.count = count
        self.size = size

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (torch.randn(self.size) for _ in range(self.count))


class RandomIterableDatasetWithLen(RandomIterableDataset):
    """A RandomIterableDataset that reports its length."""

    def __len__(self) -> int:
        return self.count


class BoringModel(LightningModule):
    """``Linear(32, 2)`` trained with SGD (lr 0.1, StepLR) to output zeros, on 64 random samples per stage."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def loss(self, preds: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if labels is None:
            labels = torch.zeros_like(preds)
        return F.mse_loss(preds, labels)

    def step(self, batch: Any) -> torch.Tensor:
        return self.loss(self(batch))

    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return {"loss": self.step(batch)}

    def validation_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return {"x": self.step(batch)}

    def test_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return {"y": self.step(batch)}

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        return [optimizer], [torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(RandomDataset(32, 64))


class BoringDataModule(LightningDataModule):
    """256 random samples split 64/64/64/64 into train/val/test/predict."""

    def __init__(self) -> None:
        super().__init__()
        self.random_full = RandomDataset(32, 64 * 4)

    def setup(self, stage: str) -> None:
        quarters = [Subset(self.random_full, range(i * 64, (i + 1) * 64)) for i in range(4)]
        self.random_train, self.random_val, self.random_test, self.random_predict = quarters

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.random_train)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.random_val)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.random_test)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.random_predict)


class BoringDataModuleNoLen(LightningDataModule):
    """Like BoringDataModule, with iterable datasets that have no ``len()``."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomIterableDataset(32, 512))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomIterableDataset(32, 128))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(RandomIterableDataset(32, 128))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(RandomIterableDataset(32, 128))


class IterableBoringDataModule(BoringDataModuleNoLen):
    """Iterable datasets that report their length."""

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomIterableDatasetWithLen(32, 512))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomIterableDatasetWithLen(32, 128))

    def test_dataloader(self) -> DataLoader:
        return DataLoader(RandomIterableDatasetWithLen(32, 128))

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(RandomIterableDatasetWithLen(32, 128))


class ManualOptimBoringModel(BoringModel):
    """BoringModel under manual optimization: one optimizer, stepped by hand every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        optimizer = self.optimizers()
        loss = self.step(batch)
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss


class Net(nn.Module):
    """A small convolutional classifier for 28x28 single-channel images."""

    def __init__(self, out_dim: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


class DemoModel(LightningModule):
    """``Linear(32, out_dim)`` trained with SGD at ``learning_rate`` on the sum of its outputs."""

    def __init__(self, out_dim: int = 10, learning_rate: float = 0.02) -> None:
        super().__init__()
        self.l1 = nn.Linear(32, out_dim)
        self.learning_rate = learning_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.l1(x.view(x.size(0), -1)))

    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return self(batch).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.learning_rate)


__all__: List[str] = [
    "BoringDataModule",
    "BoringDataModuleNoLen",
    "BoringModel",
    "DemoModel",
    "IterableBoringDataModule",
    "ManualOptimBoringModel",
    "Net",
    "RandomDataset",
    "RandomDictDataset",
    "RandomIterableDataset",
    "RandomIterableDatasetWithLen",
]
