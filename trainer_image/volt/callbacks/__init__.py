"""Callbacks: the base class and the built-in callbacks (Lightning's names)."""
from volt.callbacks.base import Callback
from volt.callbacks.checkpoint_base import Checkpoint
from volt.callbacks.device_stats import DeviceStatsMonitor
from volt.callbacks.early_stopping import EarlyStopping
from volt.callbacks.finders import BatchSizeFinder, LearningRateFinder
from volt.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
from volt.callbacks.gradient_accumulation_scheduler import GradientAccumulationScheduler
from volt.callbacks.lambda_function import LambdaCallback
from volt.callbacks.lr_monitor import LearningRateMonitor
from volt.callbacks.model_checkpoint import ModelCheckpoint
from volt.callbacks.model_summary import ModelSummary
from volt.callbacks.on_exception_checkpoint import OnExceptionCheckpoint
from volt.callbacks.prediction_writer import BasePredictionWriter
from volt.callbacks.progress import ProgressBar, ProgressBarBase, TQDMProgressBar
from volt.callbacks.prometheus import PrometheusCallback
from volt.callbacks.pruning import ModelPruning
from volt.callbacks.rich_ui import RichModelSummary, RichProgressBar
from volt.callbacks.spike import SpikeDetection
from volt.callbacks.stochastic_weight_avg import StochasticWeightAveraging
from volt.callbacks.throughput import ThroughputMonitor
from volt.callbacks.timer import Timer
from volt.callbacks.weight_averaging import EMAWeightAveraging, WeightAveraging

__all__ = [
    "BackboneFinetuning",
    "BaseFinetuning",
    "BasePredictionWriter",
    "BatchSizeFinder",
    "Callback",
    "Checkpoint",
    "DeviceStatsMonitor",
    "EMAWeightAveraging",
    "EarlyStopping",
    "GradientAccumulationScheduler",
    "LambdaCallback",
    "LearningRateFinder",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ModelPruning",
    "ModelSummary",
    "OnExceptionCheckpoint",
    "ProgressBar",
    "ProgressBarBase",
    "PrometheusCallback",
    "RichModelSummary",
    "RichProgressBar",
    "SpikeDetection",
    "StochasticWeightAveraging",
    "TQDMProgressBar",
    "ThroughputMonitor",
    "Timer",
    "WeightAveraging",
]
