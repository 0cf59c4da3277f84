"""Demo models and data modules (Lightning's ``demos`` path).

Lightning's LSTM and Transformer demos download text corpora; volt leaves them out."""
from volt.demos.boring_classes import BoringDataModule, BoringModel, DemoModel

__all__ = ["BoringDataModule", "BoringModel", "DemoModel"]
