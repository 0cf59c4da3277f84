"""Lightning's ``core.datamodule`` path; the class lives in ``volt.datamodule``."""
from volt.datamodule import LightningDataModule

__all__ = ["LightningDataModule"]
