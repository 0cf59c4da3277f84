"""Experiment loggers: ``from volt.loggers import CSVLogger, TensorBoardLogger``."""
from volt.loggers.base import DummyLogger, Logger, rank_zero_only
from volt.loggers.csv_logs import CSVLogger
from volt.loggers.tensorboard import TensorBoardLogger, tensorboard_available

__all__ = ["Logger", "DummyLogger", "CSVLogger", "TensorBoardLogger", "rank_zero_only", "tensorboard_available"]
