"""Lightning's ``lightning.pytorch.core`` path: the module and datamodule base classes."""
from volt.datamodule import LightningDataModule
from volt.module import LightningModule

__all__ = ["LightningDataModule", "LightningModule"]
