"""Experiment loggers: ``from volt.loggers import CSVLogger, TensorBoardLogger``."""
from volt.loggers.base import DummyExperiment, DummyLogger, Logger, rank_zero_experiment, rank_zero_only
from volt.loggers.comet import CometLogger, comet_available
from volt.loggers.csv_logs import CSVLogger
from volt.loggers.mlflow import MLFlowLogger, mlflow_available
from volt.loggers.tensorboard import TensorBoardLogger, tensorboard_available
from volt.loggers.wandb import WandbLogger, wandb_available

#: The 1.x name of the Logger base class (Lightning 1.x), for scripts that subclass it.
LightningLoggerBase = Logger

__all__ = [
    "Logger",
    "LightningLoggerBase",
    "DummyLogger",
    "DummyExperiment",
    "rank_zero_experiment",
    "CSVLogger",
    "TensorBoardLogger",
    "rank_zero_only",
    "tensorboard_available",
    "CometLogger",
    "MLFlowLogger",
    "WandbLogger",
    "comet_available",
    "mlflow_available",
    "wandb_available",
]
