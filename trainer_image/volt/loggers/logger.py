"""Lightning's ``loggers.logger`` path; the classes live in ``volt.loggers.base``."""
from volt.loggers.base import DummyExperiment, DummyLogger, Logger, rank_zero_experiment

__all__ = ["DummyExperiment", "DummyLogger", "Logger", "rank_zero_experiment"]
