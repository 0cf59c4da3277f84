"""The objects a TrainerConfig asks for: strategy, precision plugin, loggers, callbacks.

Each function takes the parsed config (``config.py``) and builds; the checks that need the
built objects (a Precision plugin for another device than the strategy's) live here too.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Dict, List

import torch

from volt import callbacks as C
from volt.callbacks.base import Callback
from volt.callbacks.checkpoint_base import Checkpoint
from volt.callbacks.finders import BatchSizeFinder, LearningRateFinder
from volt.callbacks.prometheus import PrometheusCallback
from volt.callbacks.timer import Timer
from volt.contract import JobContract
from volt.plugins import TorchCheckpointIO
from volt.precision import Precision
from volt.signals import PreemptionCallback
from volt.strategies.single import SingleDeviceStrategy
from volt.strategies.strategy import Strategy
from volt.trainer import arguments as A
from volt.trainer.config import TrainerConfig

#: Strategy names that select FSDP2 (``volt.strategies.fsdp``); Lightning's names.
FSDP_NAMES = ("fsdp", "fsdp_cpu_offload")

log = logging.getLogger(__name__)


def build_strategy(config: TrainerConfig) -> Strategy:
    """The strategy for ``config.placement`` (a configured Strategy is given the placement), with its CheckpointIO."""
    strategy = _strategy(config.placement, config.plugins.cluster_environment, config.sync_batchnorm)
    # Lightning keeps the CheckpointIO on the strategy (trainer.strategy.checkpoint_io); so does volt.
    own_io = getattr(strategy, "checkpoint_io", None)
    given_io = config.plugins.checkpoint_io
    if own_io is not None and given_io is not None and own_io is not given_io:
        raise ValueError("Trainer(plugins=[CheckpointIO]) and a strategy with its own checkpoint_io: pass one")
    strategy.checkpoint_io = given_io or own_io or TorchCheckpointIO()  # type: ignore[attr-defined]
    return strategy


def _strategy(choice: A.DeviceChoice, cluster: Any, sync_batchnorm: bool) -> Strategy:
    strategy = choice.strategy
    if isinstance(strategy, Strategy):
        if hasattr(strategy, "_configure"):
            strategy._configure(accelerator=choice.accelerator, devices=choice.num_devices,
                                num_nodes=choice.num_nodes, sync_batchnorm=sync_batchnorm)
        if cluster is not None:
            if not hasattr(strategy, "_cluster"):
                raise ValueError(f"Trainer(plugins=[ClusterEnvironment]) needs a distributed strategy; "
                                 f"{type(strategy).__name__} has no cluster environment")
            strategy._cluster = cluster
        return strategy
    if not isinstance(strategy, str):
        raise TypeError(f"Trainer(strategy=...) must be a name or a Strategy, got {type(strategy).__name__}")
    # a ClusterEnvironment plugin replaces what a launcher's environment variables would say
    launched = cluster.world_size if cluster is not None and cluster.launched else A.launched_world_size()
    if strategy in ("auto", "single_device") and choice.num_devices * choice.num_nodes == 1 and launched == 1:
        return SingleDeviceStrategy(device_for(choice))
    if strategy == "single_device":
        raise ValueError(f"strategy='single_device' but {choice.num_devices} devices x {choice.num_nodes} nodes requested")
    from volt.strategies.ddp import DDPStrategy, normalize_strategy_name  # lazy: only distributed runs need it

    if strategy in FSDP_NAMES:
        from volt.strategies.fsdp import FSDPStrategy  # lazy: imports torch.distributed.fsdp

        fsdp = FSDPStrategy(accelerator=choice.accelerator, devices=choice.num_devices, num_nodes=choice.num_nodes,
                            cpu_offload=strategy == "fsdp_cpu_offload")
        if cluster is not None:
            fsdp._cluster = cluster
        return fsdp
    extra: Dict[str, Any] = {}
    if strategy != "auto":
        if strategy == "ddp_find_unused_parameters_true":
            extra["find_unused_parameters"] = True
        strategy, note = normalize_strategy_name(strategy)
        if note:
            log.warning(note)
    ddp = DDPStrategy(accelerator=choice.accelerator, devices=choice.num_devices, num_nodes=choice.num_nodes,
                      sync_batchnorm=sync_batchnorm, **extra)
    if cluster is not None:
        ddp._cluster = cluster
    return ddp


def device_for(choice: A.DeviceChoice) -> torch.device:
    if choice.accelerator == "cuda":
        return torch.device("cuda", choice.device_ids[0])
    return torch.device(choice.accelerator)


def build_precision_plugin(config: TrainerConfig, strategy: Strategy) -> Precision:
    """``plugins=[Precision]`` (checked against the strategy's device), else one for ``config.precision``."""
    plugin = config.plugins.precision
    if plugin is None:
        return Precision(config.precision, strategy.root_device)
    if plugin.device.type != strategy.root_device.type:
        raise ValueError(f"Trainer(plugins=[...]): the Precision plugin is for device type "
                         f"{plugin.device.type!r} but training runs on {strategy.root_device}")
    return plugin  # type: ignore[no-any-return]


def apply_determinism(config: TrainerConfig) -> None:
    """``deterministic`` and ``benchmark``: torch's process-wide switches (checked by the parser)."""
    if config.deterministic:
        # cuBLAS needs a fixed workspace for deterministic matmuls.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=config.deterministic == "warn")
        torch.backends.cudnn.benchmark = False
    elif config.benchmark is not None:
        torch.backends.cudnn.benchmark = config.benchmark


def build_loggers(config: TrainerConfig) -> List[Any]:
    logger = config.logger
    if logger is None or logger is True:
        from volt.loggers import CSVLogger

        try:
            from volt.loggers import TensorBoardLogger

            return [TensorBoardLogger(save_dir=config.logs_root)]
        except ImportError:  # tensorboard not installed
            return [CSVLogger(save_dir=config.logs_root)]
    if logger is False:
        return []
    if isinstance(logger, (list, tuple)):
        return list(logger)
    return [logger]


def build_callbacks(config: TrainerConfig, contract: JobContract) -> List[Callback]:
    """The script's callbacks and the ones the config and the TrainingJob add, in Lightning's order."""
    out: List[Callback] = list(config.callbacks)
    checkpointing = [c for c in out if isinstance(c, Checkpoint)]  # ModelCheckpoint and the like
    if config.enable_checkpointing and not checkpointing:
        out.append(C.ModelCheckpoint())
    elif not config.enable_checkpointing and checkpointing:
        raise ValueError(f"Trainer(enable_checkpointing=False) but callbacks holds a checkpoint callback "
                         f"({type(checkpointing[0]).__name__})")
    if not any(isinstance(c, C.ProgressBar) for c in out):
        if config.enable_progress_bar and sys.stdout.isatty():
            out.append(C.ProgressBar(refresh_rate=config.progress_bar_refresh_rate,
                                     process_position=config.process_position))
    if config.enable_model_summary and not any(isinstance(c, C.ModelSummary) for c in out):
        out.append(C.ModelSummary(max_depth=config.summary_depth))
    if config.max_time is not None and not any(isinstance(c, Timer) for c in out):
        out.append(Timer(duration=config.max_time, interval="step"))
    if not any(isinstance(c, PreemptionCallback) for c in out):
        out.append(PreemptionCallback())
    if contract.metrics_port is not None and not any(isinstance(c, PrometheusCallback) for c in out):
        out.append(PrometheusCallback())
    return checkpoints_last(out)


def checkpoints_last(callbacks: List[Callback]) -> List[Callback]:
    """Lightning's order: the tuner's callbacks first (they change what the others see), then the
    rest, then checkpoint callbacks, so that they see every metric of the step/epoch."""
    finders = (BatchSizeFinder, LearningRateFinder)
    tuners = [c for c in callbacks if isinstance(c, finders)]
    checkpoints = [c for c in callbacks if isinstance(c, Checkpoint) and not isinstance(c, finders)]
    placed = {id(c) for c in tuners + checkpoints}
    return tuners + [c for c in callbacks if id(c) not in placed] + checkpoints
