"""Callbacks: the base class and the built-in callbacks (Lightning's names)."""
from volt.callbacks.base import Callback
from volt.callbacks.early_stopping import EarlyStopping
from volt.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler
from volt.callbacks.lambda_function import LambdaCallback
from volt.callbacks.lr_monitor import LearningRateMonitor
from volt.callbacks.model_checkpoint import ModelCheckpoint
from volt.callbacks.model_summary import ModelSummary
from volt.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from volt.callbacks.prediction_writer import BasePredictionWriter
from volt.callbacks.progress import ProgressBar, ProgressBarBase, TQDMProgressBar
from volt.callbacks.prometheus import PrometheusCallback
from volt.callbacks.timer import Timer

__all__ = [
    "BasePredictionWriter",
    "Callback",
    "EarlyStopping",
    "GradientAccumulationScheduler",
    "LambdaCallback",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ProgressBar",
    "ProgressBarBase",
    "PrometheusCallback",
    "TQDMProgressBar",
    "Timer",
]
