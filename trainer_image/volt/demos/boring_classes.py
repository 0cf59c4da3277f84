"""Tiny models and random data for trying the Trainer and for tests (Lightning's demo names).

The classes take the constructor arguments of Lightning's ``demos.boring_classes``: 32 features,
a ``Linear(32, 2)`` model whose loss pushes its outputs towards one, datasets of random vectors.
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
    """``Linear(32, 2)`` trained with SGD (lr 0.1, StepLR) to output ones, on 64 random samples per stage."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def loss(self, preds: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if labels is None:
            labels = torch.ones_like(preds)
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
        quarter = {"fit": 0, "validate": 1, "test": 2, "predict": 3}
        if stage == "fit":
            self.random_train = Subset(self.random_full, range(0, 64))
        if stage in ("fit", "validate"):
            self.random_val = Subset(self.random_full, range(64, 128))
        if stage in ("test", "predict"):
            start = quarter[stage] * 64
            setattr(self, f"random_{stage}", Subset(self.random_full, range(start, start + 64)))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.random_train)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.random_val)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.random_test)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.random_predict)


class BoringDataModuleNoLen(LightningDataModule):
    """Iterable datasets without ``len()``: 512 train, 128 validation, 256 test, 64 predict samples."""

    _COUNTS = {"train": 512, "val": 128, "test": 256, "predict": 64}

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(RandomIterableDataset(32, self._COUNTS[split]))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")


class IterableBoringDataModule(LightningDataModule):
    """Two loaders per stage over 4-feature samples, one map-style and one iterable: 16 per training
    loader (combined), then 32, 64 and 128 per validation, test and predict loader."""

    _COUNTS = {"train": 16, "val": 32, "test": 64, "predict": 128}

    def _loaders(self, split: str) -> List[DataLoader]:
        count = self._COUNTS[split]
        return [DataLoader(RandomDataset(4, count)), DataLoader(RandomIterableDataset(4, count))]

    def train_dataloader(self) -> List[DataLoader]:
        return self._loaders("train")

    def val_dataloader(self) -> List[DataLoader]:
        return self._loaders("val")

    def test_dataloader(self) -> List[DataLoader]:
        return self._loaders("test")

    def predict_dataloader(self) -> List[DataLoader]:
        return self._loaders("predict")


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

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return F.log_softmax(self.fc2(x), dim=1)


class DemoModel(LightningModule):
    """``Linear(32, out_dim)`` with a ReLU, trained with Adam at ``learning_rate`` on the sum of its outputs."""

    def __init__(self, out_dim: int = 10, learning_rate: float = 0.02) -> None:
        super().__init__()
        self.l1 = nn.Linear(32, out_dim)
        self.learning_rate = learning_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.l1(x.view(x.size(0), -1)))

    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        return self(batch).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


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
