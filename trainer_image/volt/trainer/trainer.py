"""The Trainer: arguments, state and entry points (fit, validate, test, predict, tune).

The loops themselves live in ``fit_loop.py`` (training) and ``eval_loop.py``
(validation, test, predict); this file wires the pieces together and exposes
Lightning's public properties.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

import torch

from volt import termination
from volt.callbacks.base import Callback
from volt.contract import ENV_TRAINER, JobContract
from volt.datamodule import LightningDataModule
from volt.module import LightningModule
from volt.overrides import apply_trainer_settings
from volt.plugins import CheckpointIO, TorchCheckpointIO
from volt.precision import Precision, parse_precision
from volt.profilers import Profiler, profiler_from_argument
from volt.resume import RngSnapshots
from volt.strategies.single import SingleDeviceStrategy
from volt.strategies.strategy import Strategy
from volt.trainer import arguments as A
from volt.trainer import checkpoint_connector, eval_loop, fit_loop, profiling
from volt.trainer.data import INF, defines, limited_length, prepare_loaders, stage_loaders, without_shuffle
from volt.trainer.logger_connector import LoggerConnector
from volt.trainer.optimizers import LightningOptimizer, LRSchedulerConfig
from volt.trainer.progress import Progress
from volt.trainer.run_state import RunState

#: Strategy names that select FSDP2 (``volt.strategies.fsdp``); Lightning's names.
FSDP_NAMES = ("fsdp", "fsdp_cpu_offload")

log = logging.getLogger(__name__)


class TrainerFn:
    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


@dataclass
class TrainerState:
    """What the trainer is doing: ``fn`` (the entry point), ``stage`` (the loop), ``status``."""

    fn: Optional[str] = None
    stage: Optional[str] = None  # train | sanity_check | validate | test | predict
    status: str = "initializing"  # running | finished | interrupted

    @property
    def finished(self) -> bool:
        return self.status == "finished"


class Trainer:
    """Lightning-compatible trainer. Accepts Lightning 2.x arguments and their 1.x names."""

    def __init__(
        self,
        *,
        accelerator: Any = "auto",
        strategy: Any = "auto",
        devices: Any = "auto",
        num_nodes: int = 1,
        precision: Any = None,
        logger: Any = None,
        callbacks: Any = None,
        fast_dev_run: Union[bool, int] = False,
        max_epochs: Optional[int] = None,
        min_epochs: Optional[int] = None,
        max_steps: Optional[int] = -1,
        min_steps: Optional[int] = None,
        max_time: Any = None,
        limit_train_batches: Any = None,
        limit_val_batches: Any = None,
        limit_test_batches: Any = None,
        limit_predict_batches: Any = None,
        overfit_batches: Union[int, float] = 0.0,
        val_check_interval: Any = None,
        check_val_every_n_epoch: Optional[int] = 1,
        num_sanity_val_steps: Optional[int] = None,
        log_every_n_steps: Optional[int] = None,
        enable_checkpointing: Optional[bool] = None,
        enable_progress_bar: Optional[bool] = None,
        enable_model_summary: Optional[bool] = None,
        accumulate_grad_batches: Any = 1,
        gradient_clip_val: Optional[Union[int, float]] = None,
        gradient_clip_algorithm: Optional[str] = None,
        deterministic: Any = None,
        benchmark: Optional[bool] = None,
        inference_mode: bool = True,
        use_distributed_sampler: bool = True,
        profiler: Any = None,
        detect_anomaly: bool = False,
        barebones: bool = False,
        plugins: Any = None,
        sync_batchnorm: bool = False,
        reload_dataloaders_every_n_epochs: int = 0,
        default_root_dir: Optional[Union[str, os.PathLike]] = None,
        # --- Lightning 1.x names ------------------------------------------------------
        checkpoint_callback: Optional[bool] = None,
        process_position: int = 0,
        num_processes: Optional[int] = None,
        gpus: Any = None,
        auto_select_gpus: Optional[bool] = None,
        tpu_cores: Any = None,
        ipus: Any = None,
        log_gpu_memory: Optional[str] = None,
        progress_bar_refresh_rate: Optional[int] = None,
        track_grad_norm: Union[int, float, str] = -1,
        flush_logs_every_n_steps: Optional[int] = None,
        weights_summary: Optional[str] = "top",
        weights_save_path: Optional[str] = None,
        truncated_bptt_steps: Optional[int] = None,
        resume_from_checkpoint: Optional[Union[str, os.PathLike]] = None,
        reload_dataloaders_every_epoch: bool = False,
        auto_lr_find: Union[bool, str] = False,
        replace_sampler_ddp: Optional[bool] = None,
        terminate_on_nan: bool = False,
        auto_scale_batch_size: Union[bool, str] = False,
        prepare_data_per_node: Optional[bool] = None,
        amp_backend: Optional[str] = None,
        amp_level: Optional[str] = None,
        distributed_backend: Optional[str] = None,
        automatic_optimization: Optional[bool] = None,
        move_metrics_to_cpu: bool = False,
    ) -> None:
        passed = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        #: What the TrainingJob told this process (volt.contract), parsed once for the whole run.
        self.job_contract = JobContract.from_env(os.environ)
        passed = self._apply_job_settings(passed, self.job_contract)
        self._setup_arguments(**passed)

    # ------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------
    @staticmethod
    def _apply_job_settings(passed: Dict[str, Any], contract: JobContract) -> Dict[str, Any]:
        """The script's arguments with the TrainingJob's ``VOLT_TRAINER`` applied (volt.overrides)."""
        if not contract.trainer_settings:
            return passed
        defaults = {n: p.default for n, p in inspect.signature(Trainer.__init__).parameters.items() if n != "self"}
        explicit = {k: v for k, v in passed.items() if v is not defaults.get(k) and v != defaults.get(k)}
        merged = apply_trainer_settings(explicit, contract.trainer_settings)
        unknown = set(merged) - set(defaults)
        if unknown:
            raise ValueError(f"{ENV_TRAINER} sets unknown Trainer arguments {sorted(unknown)}")
        # what the job's settings replaced goes back to its default, not to the script's value
        return {**defaults, **merged}

    def _setup_arguments(self, **a: Any) -> None:
        self.state = TrainerState()
        self.should_stop = False
        self.sanity_checking = False
        self.progress = Progress()
        self._logger_connector = LoggerConnector(self)
        self.lightning_module_ref: Optional[LightningModule] = None
        self.datamodule: Optional[LightningDataModule] = None
        self.optimizers: List[torch.optim.Optimizer] = []
        self._lightning_optimizers: List[LightningOptimizer] = []
        self.lr_scheduler_configs: List[LRSchedulerConfig] = []
        self.num_training_batches: float = INF
        self.num_sanity_val_batches: List[float] = []
        self.num_val_batches: List[float] = []
        self.num_test_batches: List[float] = []
        self.num_predict_batches: List[float] = []
        self.train_dataloader: Optional[Iterable] = None
        self.val_dataloaders: List[Iterable] = []
        self.test_dataloaders: List[Iterable] = []
        self.predict_dataloaders: List[Iterable] = []
        self.ckpt_path: Optional[str] = None
        self._is_last_batch = False  # set per training batch by the fit loop
        self.rng_snapshots = RngSnapshots()  # exact resume: written by the fit loop and the checkpoint code
        self.predict_loop = eval_loop.PredictLoopState()  # batch indices and predictions, for prediction writers
        self.run_state = RunState()
        self._reset_hook_cache()

        # -- 1.x names onto 2.x ones --
        legacy_ckpt = a["checkpoint_callback"]
        if legacy_ckpt is not None:
            if a["enable_checkpointing"] is not None and a["enable_checkpointing"] != legacy_ckpt:
                raise ValueError("Trainer(checkpoint_callback=...) is the 1.x name of enable_checkpointing; pass only one")
            a["enable_checkpointing"] = A.check_bool("checkpoint_callback", legacy_ckpt)
        if a["replace_sampler_ddp"] is not None:
            a["use_distributed_sampler"] = A.check_bool("replace_sampler_ddp", a["replace_sampler_ddp"])
        if a["reload_dataloaders_every_epoch"]:
            A.check_bool("reload_dataloaders_every_epoch", a["reload_dataloaders_every_epoch"])
            a["reload_dataloaders_every_n_epochs"] = 1
        if a["terminate_on_nan"]:
            A.check_bool("terminate_on_nan", a["terminate_on_nan"])
        if a["resume_from_checkpoint"] is not None and not isinstance(a["resume_from_checkpoint"], (str, os.PathLike)):
            raise TypeError("Trainer(resume_from_checkpoint=...) must be a path")

        # -- plugins, devices and strategy --
        self._plugins = plugins = A.parse_plugins(a["plugins"])
        if plugins.strategy is not None:  # 1.x: plugins="ddp_..." named the strategy
            if a["strategy"] not in (None, "auto", plugins.strategy):
                raise ValueError(f"Trainer(plugins={plugins.strategy!r}) names a strategy but strategy={a['strategy']!r} "
                                 "was also given; pass only strategy=")
            a["strategy"] = plugins.strategy
        self._device_choice = A.choose_devices(
            a["accelerator"], a["strategy"], a["devices"], a["num_nodes"], a["gpus"], a["num_processes"],
            a["tpu_cores"], a["ipus"], a["distributed_backend"], a["auto_select_gpus"],
            cluster=plugins.cluster_environment,
        )
        if self._device_choice.legacy_note:
            log.info(self._device_choice.legacy_note)
        if plugins.precision is not None and a["precision"] is not None:
            raise ValueError(f"Trainer(plugins=[{plugins.precision!r}]) sets the precision, and precision= "
                             "was also given; pass only one")
        self._precision_name = (plugins.precision.precision if plugins.precision is not None
                                else parse_precision(a["precision"], a["amp_level"], a["amp_backend"]))
        self.sync_batchnorm = A.check_bool("sync_batchnorm", a["sync_batchnorm"])
        self.use_distributed_sampler = A.check_bool("use_distributed_sampler", a["use_distributed_sampler"])
        self.strategy = self._build_strategy(self._device_choice)
        if plugins.precision is not None:
            if plugins.precision.device.type != self.strategy.root_device.type:
                raise ValueError(f"Trainer(plugins=[...]): the Precision plugin is for device type "
                                 f"{plugins.precision.device.type!r} but training runs on {self.strategy.root_device}")
            self.precision_plugin = plugins.precision
        else:
            self.precision_plugin = Precision(self._precision_name, self.strategy.root_device)
        # Lightning keeps the CheckpointIO on the strategy (trainer.strategy.checkpoint_io); so does volt.
        own_io = getattr(self.strategy, "checkpoint_io", None)
        if own_io is not None and plugins.checkpoint_io is not None and own_io is not plugins.checkpoint_io:
            raise ValueError("Trainer(plugins=[CheckpointIO]) and a strategy with its own checkpoint_io: pass one")
        self.strategy.checkpoint_io = plugins.checkpoint_io or own_io or TorchCheckpointIO()

        # -- loop limits --
        self.fast_dev_run = self._parse_fast_dev_run(a["fast_dev_run"])
        self.max_steps = A.check_int("max_steps", -1 if a["max_steps"] is None else a["max_steps"], minimum=-1)
        self.min_steps = A.check_int("min_steps", a["min_steps"], minimum=0, allow_none=True)
        self.max_time = A.parse_max_time(a["max_time"])
        max_epochs = A.check_int("max_epochs", a["max_epochs"], minimum=-1, allow_none=True)
        if max_epochs is None:
            max_epochs = 1000 if (self.max_steps == -1 and self.max_time is None) else -1
        self.max_epochs = max_epochs
        self.min_epochs = A.check_int("min_epochs", a["min_epochs"], minimum=0, allow_none=True)
        self.limit_train_batches = A.parse_limit("limit_train_batches", a["limit_train_batches"])
        self.limit_val_batches = A.parse_limit("limit_val_batches", a["limit_val_batches"])
        self.limit_test_batches = A.parse_limit("limit_test_batches", a["limit_test_batches"])
        self.limit_predict_batches = A.parse_limit("limit_predict_batches", a["limit_predict_batches"])
        self.overfit_batches = A.parse_limit("overfit_batches", a["overfit_batches"], default=0.0)
        if self.overfit_batches:
            self.limit_train_batches = self.limit_val_batches = self.overfit_batches
        self.val_check_interval = self._parse_val_check_interval(a["val_check_interval"])
        self.check_val_every_n_epoch = A.check_int(
            "check_val_every_n_epoch", a["check_val_every_n_epoch"], minimum=1, allow_none=True
        )
        if self.check_val_every_n_epoch is None and not isinstance(self.val_check_interval, int):
            raise ValueError("Trainer(check_val_every_n_epoch=None) needs an int val_check_interval (a number of batches)")
        self.num_sanity_val_steps = A.check_int(
            "num_sanity_val_steps", 2 if a["num_sanity_val_steps"] is None else a["num_sanity_val_steps"], minimum=-1
        )
        self.log_every_n_steps = A.check_int(
            "log_every_n_steps", 50 if a["log_every_n_steps"] is None else a["log_every_n_steps"], minimum=0
        )
        self.flush_logs_every_n_steps = A.check_int(
            "flush_logs_every_n_steps", 100 if a["flush_logs_every_n_steps"] is None else a["flush_logs_every_n_steps"],
            minimum=1,
        )
        self.accumulate_grad_batches = self._parse_accumulation(a["accumulate_grad_batches"])
        self.gradient_clip_val = a["gradient_clip_val"]
        if self.gradient_clip_val is not None and (not A._is_number(self.gradient_clip_val) or self.gradient_clip_val < 0):
            raise ValueError(f"Trainer(gradient_clip_val={self.gradient_clip_val!r}) must be a number >= 0")
        self.gradient_clip_algorithm = a["gradient_clip_algorithm"]
        if self.gradient_clip_algorithm is not None:
            A.check_choice("gradient_clip_algorithm", self.gradient_clip_algorithm, ("norm", "value"))
        self.track_grad_norm = self._parse_track_grad_norm(a["track_grad_norm"])
        self.truncated_bptt_steps = A.check_int("truncated_bptt_steps", a["truncated_bptt_steps"], minimum=1, allow_none=True)
        self.reload_dataloaders_every_n_epochs = A.check_int(
            "reload_dataloaders_every_n_epochs", a["reload_dataloaders_every_n_epochs"], minimum=0
        )
        self.terminate_on_nan = a["terminate_on_nan"]
        self.detect_anomaly = A.check_bool("detect_anomaly", a["detect_anomaly"])
        self.inference_mode = A.check_bool("inference_mode", a["inference_mode"])
        self.move_metrics_to_cpu = A.check_bool("move_metrics_to_cpu", a["move_metrics_to_cpu"])
        self.log_gpu_memory = a["log_gpu_memory"]
        if self.log_gpu_memory is not None:
            A.check_choice("log_gpu_memory", self.log_gpu_memory, ("all", "min_max"))
        self.process_position = A.check_int("process_position", a["process_position"], minimum=0)
        if a["automatic_optimization"] is not None:
            A.check_bool("automatic_optimization", a["automatic_optimization"])
        self._automatic_optimization = a["automatic_optimization"]
        if a["prepare_data_per_node"] is not None:
            A.check_bool("prepare_data_per_node", a["prepare_data_per_node"])
        self._prepare_data_per_node = a["prepare_data_per_node"]
        self.auto_lr_find = a["auto_lr_find"]
        if not isinstance(self.auto_lr_find, (bool, str)):
            raise TypeError("Trainer(auto_lr_find=...) must be a bool or the name of the learning-rate attribute")
        self.auto_scale_batch_size = a["auto_scale_batch_size"]
        if self.auto_scale_batch_size not in (False, True, "power", "binsearch"):
            raise ValueError("Trainer(auto_scale_batch_size=...) must be False, True, 'power' or 'binsearch'")
        self.resume_from_checkpoint = a["resume_from_checkpoint"]
        self._trial_run = False  # the tuner's trial fits: they start fresh, whatever the resume settings
        self._setup_determinism(a["deterministic"], a["benchmark"])
        self.profiler: Profiler = profiler_from_argument(a["profiler"])

        # -- output locations --
        root = a["default_root_dir"]
        if root is not None and not isinstance(root, (str, os.PathLike)):
            raise TypeError(f"Trainer(default_root_dir=...) must be a path, got {type(root).__name__}")
        self._default_root_dir = os.fspath(root) if root is not None else os.getcwd()
        # The default logger's folder: a TrainingJob's checkpoint volume outlives its pods.
        self._logs_root = self._default_root_dir
        if root is None and self.job_contract.checkpoint_dir:
            self._logs_root = os.path.join(self.job_contract.checkpoint_dir, "logs")
        if a["weights_save_path"] is not None and not isinstance(a["weights_save_path"], (str, os.PathLike)):
            raise TypeError("Trainer(weights_save_path=...) must be a path")
        self._weights_save_path_given = a["weights_save_path"] is not None
        self._weights_save_path = os.fspath(a["weights_save_path"]) if a["weights_save_path"] else self._default_root_dir

        # -- barebones, fast_dev_run, switches --
        self.barebones = A.check_bool("barebones", a["barebones"])
        enable_checkpointing = a["enable_checkpointing"]
        enable_progress_bar = a["enable_progress_bar"]
        enable_model_summary = a["enable_model_summary"]
        for name, value in (("enable_checkpointing", enable_checkpointing), ("enable_progress_bar", enable_progress_bar),
                            ("enable_model_summary", enable_model_summary)):
            if value is not None:
                A.check_bool(name, value)
        if self.barebones:
            if enable_checkpointing or enable_progress_bar or enable_model_summary or a["logger"]:
                raise ValueError("Trainer(barebones=True) turns off checkpointing, logger, progress bar and model summary; "
                                 "do not enable them")
            enable_checkpointing = enable_progress_bar = enable_model_summary = False
            a["logger"] = False
            self.num_sanity_val_steps = 0
            self._logger_connector.enabled = False
        refresh = a["progress_bar_refresh_rate"]
        if refresh is not None:
            refresh = A.check_int("progress_bar_refresh_rate", refresh, minimum=0)
            if refresh == 0:
                if enable_progress_bar:
                    raise ValueError("progress_bar_refresh_rate=0 disables the bar but enable_progress_bar=True")
                enable_progress_bar = False
        self._progress_bar_refresh_rate = refresh or 1
        summary = a["weights_summary"]
        if summary not in (None, "top", "full"):
            raise ValueError(f"Trainer(weights_summary={summary!r}) must be None, 'top' or 'full'")
        if summary is None:
            if enable_model_summary:
                raise ValueError("weights_summary=None disables the summary but enable_model_summary=True")
            enable_model_summary = False
        self._summary_depth = -1 if summary == "full" else 1
        if self.fast_dev_run:
            n = self.fast_dev_run
            self.limit_train_batches = self.limit_val_batches = n
            self.limit_test_batches = self.limit_predict_batches = n
            self.max_steps, self.max_epochs, self.num_sanity_val_steps = n, 1, 0
            self.val_check_interval, self.check_val_every_n_epoch, self.max_time = 1.0, 1, None
            a["logger"] = False
            log.info("fast_dev_run=%d: running %d batch(es) of each loop, no logger, no checkpoints", n, n)
        self.enable_checkpointing = True if enable_checkpointing is None else enable_checkpointing
        self.enable_progress_bar = True if enable_progress_bar is None else enable_progress_bar
        self.enable_model_summary = True if enable_model_summary is None else enable_model_summary

        self.loggers = self._build_loggers(a["logger"])
        self.callbacks = self._build_callbacks(a["callbacks"])
        self._call_callbacks_init("on_init_start")
        self._call_callbacks_init("on_init_end")

    def _parse_fast_dev_run(self, value: Any) -> int:
        if isinstance(value, bool):
            return 1 if value else 0
        return A.check_int("fast_dev_run", value, minimum=0)  # type: ignore[return-value]

    @staticmethod
    def _parse_val_check_interval(value: Any) -> Union[int, float]:
        if value is None:
            return 1.0
        if A._is_int(value):
            if value < 1:
                raise ValueError(f"Trainer(val_check_interval={value}) must be >= 1 batches")
            return value
        if isinstance(value, float):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"Trainer(val_check_interval={value}) must be a fraction in (0, 1] or an int")
            return value
        raise TypeError(f"Trainer(val_check_interval=...) must be an int or float, got {type(value).__name__}")

    @staticmethod
    def _parse_accumulation(value: Any) -> Union[int, Dict[int, int]]:
        if isinstance(value, dict):  # 1.x: {epoch: factor}, as GradientAccumulationScheduler
            if not value or not all(A._is_int(k) and k >= 0 and A._is_int(v) and v >= 1 for k, v in value.items()):
                raise ValueError(
                    f"Trainer(accumulate_grad_batches={value!r}): a dict must map epoch (int >= 0) to factor (int >= 1)"
                )
            return dict(sorted(value.items()))
        return A.check_int("accumulate_grad_batches", value, minimum=1)  # type: ignore[return-value]

    @staticmethod
    def _parse_track_grad_norm(value: Any) -> float:
        if value == "inf":
            return float("inf")
        if not A._is_number(value):
            raise TypeError(f"Trainer(track_grad_norm=...) must be -1, a positive number or 'inf', got {value!r}")
        if value != -1 and value <= 0:
            raise ValueError(f"Trainer(track_grad_norm={value}) must be -1 (off), a positive p or 'inf'")
        return float(value)

    @staticmethod
    def _setup_determinism(deterministic: Any, benchmark: Any) -> None:
        if deterministic not in (None, True, False, "warn"):
            raise ValueError(f"Trainer(deterministic={deterministic!r}) must be None, True, False or 'warn'")
        if benchmark is not None:
            A.check_bool("benchmark", benchmark)
        if deterministic:
            # cuBLAS needs a fixed workspace for deterministic matmuls.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=deterministic == "warn")
            if benchmark:
                raise ValueError("Trainer(deterministic=True, benchmark=True) contradict each other: cudnn autotuning is nondeterministic")
            torch.backends.cudnn.benchmark = False
        elif benchmark is not None:
            torch.backends.cudnn.benchmark = benchmark

    def _build_strategy(self, choice: A.DeviceChoice) -> Strategy:
        strategy = choice.strategy
        world = choice.num_devices * choice.num_nodes
        cluster = self._plugins.cluster_environment
        if isinstance(strategy, Strategy):
            if hasattr(strategy, "_configure"):
                strategy._configure(accelerator=choice.accelerator, devices=choice.num_devices,
                                    num_nodes=choice.num_nodes, sync_batchnorm=self.sync_batchnorm)
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
        if strategy in ("auto", "single_device") and world == 1 and launched == 1:
            return SingleDeviceStrategy(self._device_for(choice))
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
                          sync_batchnorm=self.sync_batchnorm, **extra)
        if cluster is not None:
            ddp._cluster = cluster
        return ddp

    @staticmethod
    def _device_for(choice: A.DeviceChoice) -> torch.device:
        if choice.accelerator == "cuda":
            return torch.device("cuda", choice.device_ids[0])
        return torch.device(choice.accelerator)

    def _build_loggers(self, logger: Any) -> List[Any]:
        if logger is None or logger is True:
            from volt.loggers import CSVLogger

            try:
                from volt.loggers import TensorBoardLogger

                return [TensorBoardLogger(save_dir=self._logs_root)]
            except ImportError:  # tensorboard not installed
                return [CSVLogger(save_dir=self._logs_root)]
        if logger is False:
            return []
        if isinstance(logger, (list, tuple)):
            return list(logger)
        if not hasattr(logger, "log_metrics"):
            raise TypeError(f"Trainer(logger=...) must be True, False, a Logger or a list of Loggers, got {type(logger).__name__}")
        return [logger]

    def _build_callbacks(self, callbacks: Any) -> List[Callback]:
        if callbacks is None:
            user: List[Callback] = []
        elif isinstance(callbacks, Callback):
            user = [callbacks]
        elif isinstance(callbacks, (list, tuple)):
            user = list(callbacks)
        else:
            raise TypeError(f"Trainer(callbacks=...) must be a Callback or a list of Callbacks, got {type(callbacks).__name__}")
        for cb in user:
            if not isinstance(cb, Callback):
                raise TypeError(f"Trainer(callbacks=[...]) holds {type(cb).__name__}, which is not a volt Callback")
        from volt import callbacks as C

        out = list(user)
        checkpointing = [c for c in user if isinstance(c, C.Checkpoint)]  # ModelCheckpoint and the like
        if self.enable_checkpointing and not checkpointing:
            out.append(C.ModelCheckpoint())
        elif not self.enable_checkpointing and checkpointing:
            raise ValueError(f"Trainer(enable_checkpointing=False) but callbacks holds a checkpoint callback "
                             f"({type(checkpointing[0]).__name__})")
        bar_type = getattr(C, "ProgressBar", None)
        if bar_type is not None and not any(isinstance(c, bar_type) for c in out):
            if self.enable_progress_bar and sys.stdout.isatty():
                out.append(bar_type(refresh_rate=self._progress_bar_refresh_rate, process_position=self.process_position))
        summary_type = getattr(C, "ModelSummary", None)
        if self.enable_model_summary and summary_type is not None and not any(isinstance(c, summary_type) for c in out):
            out.append(summary_type(max_depth=self._summary_depth))
        if self.max_time is not None:
            from volt.callbacks.timer import Timer

            if not any(isinstance(c, Timer) for c in out):
                out.append(Timer(duration=self.max_time, interval="step"))
        try:
            from volt.signals import PreemptionCallback
        except ModuleNotFoundError as err:
            if err.name != "volt.signals":
                raise
        else:
            if not any(isinstance(c, PreemptionCallback) for c in out):
                out.append(PreemptionCallback())
        if self.job_contract.metrics_port is not None:
            from volt.callbacks.prometheus import PrometheusCallback

            if not any(isinstance(c, PrometheusCallback) for c in out):
                out.append(PrometheusCallback())
        return _checkpoints_last(out)

    def _call_callbacks_init(self, hook: str) -> None:
        from volt.callbacks.base import overrides

        for cb in self.callbacks:
            if overrides(cb, hook):
                getattr(cb, hook)(self)

    # ------------------------------------------------------------------------------------
    # public properties (Lightning's names)
    # ------------------------------------------------------------------------------------
    @property
    def lightning_module(self) -> LightningModule:
        return self.strategy.lightning_module or self.lightning_module_ref  # type: ignore[return-value]

    @property
    def model(self) -> Optional[torch.nn.Module]:
        return self.strategy.model

    @property
    def current_epoch(self) -> int:
        return self.progress.current_epoch

    @property
    def global_step(self) -> int:
        return self.progress.global_step

    @property
    def precision(self) -> str:
        return self._precision_name

    @property
    def accelerator(self) -> str:
        return self._device_choice.accelerator

    @property
    def device_ids(self) -> List[int]:
        return list(self._device_choice.device_ids)

    @property
    def num_devices(self) -> int:
        return self._device_choice.num_devices

    @property
    def num_nodes(self) -> int:
        return self._device_choice.num_nodes

    @property
    def global_rank(self) -> int:
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        return self.strategy.local_rank

    @property
    def node_rank(self) -> int:
        return self.strategy.node_rank

    @property
    def world_size(self) -> int:
        return self.strategy.world_size

    @property
    def is_global_zero(self) -> bool:
        return self.strategy.is_global_zero

    @property
    def root_device(self) -> torch.device:
        return self.strategy.root_device

    @property
    def default_root_dir(self) -> str:
        return self._default_root_dir

    @property
    def weights_save_path(self) -> str:
        return self._weights_save_path

    @property
    def logger(self) -> Optional[Any]:
        return self.loggers[0] if self.loggers else None

    @logger.setter
    def logger(self, logger: Optional[Any]) -> None:
        self.loggers = [] if logger is None else [logger]

    @property
    def log_dir(self) -> str:
        logger = self.logger
        if logger is None:
            return self._default_root_dir
        path = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        return path if path is not None else self._default_root_dir

    @property
    def callback_metrics(self) -> Dict[str, torch.Tensor]:
        return self._logger_connector.callback_metrics

    @property
    def logged_metrics(self) -> Dict[str, torch.Tensor]:
        return self._logger_connector.logged_metrics

    @property
    def progress_bar_metrics(self) -> Dict[str, float]:
        return self._logger_connector.progress_bar_metrics

    @property
    def checkpoint_callbacks(self) -> List[Callback]:
        from volt.callbacks.checkpoint_base import Checkpoint

        return [c for c in self.callbacks if isinstance(c, Checkpoint)]

    @property
    def checkpoint_callback(self) -> Optional[Callback]:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callbacks(self) -> List[Callback]:
        from volt import callbacks as C

        es_type = getattr(C, "EarlyStopping", None)
        return [c for c in self.callbacks if es_type is not None and isinstance(c, es_type)]

    @property
    def early_stopping_callback(self) -> Optional[Callback]:
        cbs = self.early_stopping_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> Optional[Callback]:
        from volt import callbacks as C

        bar_type = getattr(C, "ProgressBar", None)
        return next((c for c in self.callbacks if bar_type is not None and isinstance(c, bar_type)), None)

    @property
    def checkpoint_io(self) -> CheckpointIO:
        """How checkpoints are written, read and removed (``plugins=[CheckpointIO]``; ``strategy.checkpoint_io``)."""
        return self.strategy.checkpoint_io  # type: ignore[attr-defined, no-any-return]

    @checkpoint_io.setter
    def checkpoint_io(self, io: CheckpointIO) -> None:
        self.strategy.checkpoint_io = io  # type: ignore[attr-defined]

    @property
    def is_last_batch(self) -> bool:
        """True while the epoch's last training batch runs (from on_train_batch_start to on_train_batch_end)."""
        return self._is_last_batch

    @property
    def evaluating(self) -> bool:
        return self.state.stage in ("validate", "test", "sanity_check")

    @property
    def enable_validation(self) -> bool:
        """Whether fit runs validation: a validation_step, validation data, and limit_val_batches > 0."""
        module = self.lightning_module_ref
        return (module is not None and self.module_overrides("validation_step") and bool(self.val_dataloaders)
                and self.limit_val_batches != 0)

    @property
    def received_sigterm(self) -> bool:
        from volt.signals import PreemptionCallback

        return any(cb.flag.is_set for cb in self.callbacks if isinstance(cb, PreemptionCallback))

    @property
    def scaler(self) -> Optional[torch.amp.GradScaler]:
        return self.precision_plugin.scaler

    @property
    def distributed_sampler_kwargs(self) -> Optional[Dict[str, Any]]:
        return self.strategy.distributed_sampler_kwargs

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank 0 only."""
        if self.is_global_zero:
            print(*args, **kwargs)

    @property
    def training(self) -> bool:
        return self.state.stage == "train"

    @property
    def validating(self) -> bool:
        return self.state.stage == "validate"

    @property
    def testing(self) -> bool:
        return self.state.stage == "test"

    @property
    def predicting(self) -> bool:
        return self.state.stage == "predict"

    @property
    def interrupted(self) -> bool:
        return self.state.status == "interrupted"

    @property
    def current_accumulation(self) -> int:
        """accumulate_grad_batches for the current epoch (the 1.x dict form varies by epoch)."""
        acc = self.accumulate_grad_batches
        if isinstance(acc, int):
            return acc
        factor = 1
        for epoch, value in acc.items():
            if self.current_epoch >= epoch:
                factor = value
        return factor

    @property
    def estimated_stepping_batches(self) -> float:
        """Optimizer steps the fit will take (for schedulers such as OneCycleLR in configure_optimizers)."""
        if self.state.fn == TrainerFn.FITTING and not self.run_state.train_loader_loaded:
            fit_loop._load_train_dataloader(self)  # configure_optimizers runs before the loop loads it
        batches = self.num_training_batches
        if batches == INF:
            return float(self.max_steps) if self.max_steps != -1 else INF
        per_epoch = max(1, int(batches) // self.current_accumulation + (int(batches) % self.current_accumulation > 0))
        total = per_epoch * self.max_epochs if self.max_epochs != -1 else INF
        if self.max_steps != -1:
            total = min(total, self.max_steps)
        return float(total)

    # ------------------------------------------------------------------------------------
    # entry points
    # ------------------------------------------------------------------------------------
    def fit(
        self,
        model: LightningModule,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Optional[LightningDataModule] = None,
        ckpt_path: Optional[str] = None,
        *,
        train_dataloader: Any = None,
    ) -> None:
        """Train ``model``. ``train_dataloader=`` is the 1.x spelling of ``train_dataloaders=``."""
        if train_dataloader is not None:
            if train_dataloaders is not None:
                raise ValueError("fit(train_dataloader=...) is the 1.x name of train_dataloaders; pass only one")
            train_dataloaders = train_dataloader
        if isinstance(train_dataloaders, LightningDataModule):  # fit(model, dm) positional, as Lightning allows
            datamodule, train_dataloaders = train_dataloaders, None
        self._check_model(model, "fit")
        self._check_sources(train_dataloaders, val_dataloaders, datamodule, "fit")
        if not self._trial_run:
            ckpt_path = self._resume_path(ckpt_path)
        self.state.fn = TrainerFn.FITTING
        self._run(fit_loop.run_fit, model, datamodule, dict(train=train_dataloaders, val=val_dataloaders), ckpt_path)

    def _resume_path(self, ckpt_path: Optional[str]) -> Optional[str]:
        """fit()'s checkpoint: the argument, else the 1.x resume_from_checkpoint, then VOLT_RESUME's say."""
        if ckpt_path is None and self.resume_from_checkpoint is not None:
            ckpt_path = os.fspath(self.resume_from_checkpoint)
        return self.job_contract.resume_ckpt_path(ckpt_path)

    def validate(self, model: Optional[LightningModule] = None, dataloaders: Any = None, ckpt_path: Optional[str] = None,
                 verbose: bool = True, datamodule: Optional[LightningDataModule] = None,
                 *, val_dataloaders: Any = None) -> List[Dict[str, float]]:
        """Run the validation loop once; returns one dict of epoch metrics per dataloader."""
        return self._evaluate("validate", model, dataloaders if dataloaders is not None else val_dataloaders,
                              ckpt_path, verbose, datamodule)

    def test(self, model: Optional[LightningModule] = None, dataloaders: Any = None, ckpt_path: Optional[str] = None,
             verbose: bool = True, datamodule: Optional[LightningDataModule] = None,
             *, test_dataloaders: Any = None) -> List[Dict[str, float]]:
        """Run the test loop; ``test_dataloaders=`` is the 1.x name of ``dataloaders=``."""
        return self._evaluate("test", model, dataloaders if dataloaders is not None else test_dataloaders,
                              ckpt_path, verbose, datamodule)

    def predict(self, model: Optional[LightningModule] = None, dataloaders: Any = None,
                datamodule: Optional[LightningDataModule] = None, return_predictions: Optional[bool] = None,
                ckpt_path: Optional[str] = None) -> Optional[List[Any]]:
        """Run predict_step over the loaders; returns the predictions (a list per loader when several)."""
        if isinstance(dataloaders, LightningDataModule):  # predict(model, datamodule), as Lightning accepts
            datamodule, dataloaders = dataloaders, None
        model = self._eval_model(model, "predict")
        self._check_sources(dataloaders, None, datamodule, "predict")
        self.state.fn = TrainerFn.PREDICTING
        self._return_predictions = True if return_predictions is None else return_predictions
        return self._run(eval_loop.run_predict, model, datamodule, dict(predict=dataloaders), self._eval_ckpt(ckpt_path, model))

    def tune(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
             datamodule: Optional[LightningDataModule] = None, *, train_dataloader: Any = None,
             scale_batch_size_kwargs: Optional[Dict[str, Any]] = None,
             lr_find_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """1.x ``trainer.tune()``: batch-size scaling and/or the learning-rate finder, as configured."""
        from volt.tuner import Tuner

        train_dataloaders = train_dataloaders if train_dataloaders is not None else train_dataloader
        tuner = Tuner(self)
        result: Dict[str, Any] = {}
        if self.auto_scale_batch_size:
            mode = "power" if self.auto_scale_batch_size is True else self.auto_scale_batch_size
            result["scale_batch_size"] = tuner.scale_batch_size(
                model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, datamodule=datamodule,
                mode=mode, **(scale_batch_size_kwargs or {}))
        if self.auto_lr_find:
            kwargs = dict(lr_find_kwargs or {})
            if isinstance(self.auto_lr_find, str):
                kwargs.setdefault("attr_name", self.auto_lr_find)
            result["lr_find"] = tuner.lr_find(model, train_dataloaders=train_dataloaders,
                                              val_dataloaders=val_dataloaders, datamodule=datamodule, **kwargs)
        return result

    @contextlib.contextmanager
    def init_module(self, empty_init: Optional[bool] = None) -> Iterator[None]:
        """Create the model's tensors directly on the training device, in the ``*-true`` precision's dtype."""
        device = self.strategy.root_device
        previous = torch.get_default_dtype()
        torch.set_default_dtype(self.precision_plugin.param_dtype)
        try:
            with device if device.type != "cpu" else contextlib.nullcontext():
                yield
        finally:
            torch.set_default_dtype(previous)

    def save_checkpoint(self, filepath: Union[str, os.PathLike], weights_only: bool = False,
                        storage_options: Any = None) -> None:
        """Write a checkpoint of the current state. Call it on every rank: rank 0 writes, all wait."""
        if self.lightning_module is None:
            raise RuntimeError("save_checkpoint() needs a model: call it during or after fit()")
        sharded = getattr(self.checkpoint_io, "collective", False)
        checkpoint = checkpoint_connector.dump_checkpoint(self, weights_only, sharded=sharded)
        if sharded:  # every rank writes its own part (volt.checkpoint_sharded); the IO synchronises the ranks
            self.checkpoint_io.save_checkpoint(checkpoint, os.fspath(filepath), storage_options=storage_options)
            return
        if self.is_global_zero:  # the default CheckpointIO writes atomically (volt.checkpoint.atomic_save)
            self.checkpoint_io.save_checkpoint(checkpoint, os.fspath(filepath), storage_options=storage_options)
        self.strategy.barrier("save_checkpoint")

    # ------------------------------------------------------------------------------------
    # running
    # ------------------------------------------------------------------------------------
    def _evaluate(self, fn: str, model: Optional[LightningModule], dataloaders: Any, ckpt_path: Optional[str],
                  verbose: bool, datamodule: Optional[LightningDataModule]) -> List[Dict[str, float]]:
        if isinstance(dataloaders, LightningDataModule):
            datamodule, dataloaders = dataloaders, None
        model = self._eval_model(model, fn)
        self._check_sources(dataloaders, None, datamodule, fn)
        self.state.fn = fn
        self._verbose = verbose
        return self._run(eval_loop.run_evaluate, model, datamodule, {fn: dataloaders}, self._eval_ckpt(ckpt_path, model))

    def _eval_model(self, model: Optional[LightningModule], fn: str) -> LightningModule:
        if model is None:
            model = self.lightning_module
            if model is None:
                raise ValueError(f"trainer.{fn}() needs a model: pass one, or call fit() first")
            self._eval_model_from_fit = True
        else:
            self._check_model(model, fn)
            self._eval_model_from_fit = False
        return model

    def _eval_ckpt(self, ckpt_path: Optional[str], model: LightningModule) -> Optional[str]:
        if ckpt_path is None and getattr(self, "_eval_model_from_fit", False):
            cb = self.checkpoint_callback
            best = getattr(cb, "best_model_path", "") if cb is not None else ""
            return "best" if best else None
        return ckpt_path

    @staticmethod
    def _check_model(model: Any, fn: str) -> None:
        if not isinstance(model, LightningModule):
            raise TypeError(f"trainer.{fn}(model=...) must be a volt LightningModule, got {type(model).__name__}")

    @staticmethod
    def _check_sources(loaders: Any, val_loaders: Any, datamodule: Any, fn: str) -> None:
        if datamodule is not None and not isinstance(datamodule, LightningDataModule):
            raise TypeError(f"trainer.{fn}(datamodule=...) must be a LightningDataModule, got {type(datamodule).__name__}")
        if datamodule is not None and (loaders is not None or val_loaders is not None):
            raise ValueError(f"trainer.{fn}(): pass dataloaders or a datamodule, not both")

    def _run(self, loop: Any, model: LightningModule, datamodule: Optional[LightningDataModule],
             loaders: Dict[str, Any], ckpt_path: Optional[str]) -> Any:
        self.lightning_module_ref = model
        self.datamodule = datamodule
        self._loader_args = loaders
        model.trainer = self
        if datamodule is not None:
            datamodule.trainer = self
        if self._automatic_optimization is not None:
            model.automatic_optimization = self._automatic_optimization
        if self.truncated_bptt_steps is not None:
            model.truncated_bptt_steps = self.truncated_bptt_steps
        if self._prepare_data_per_node is not None:
            model.prepare_data_per_node = self._prepare_data_per_node
            if datamodule is not None:
                datamodule.prepare_data_per_node = self._prepare_data_per_node
        self.state.status = "running"
        self.should_stop = False
        self.run_state = RunState()  # engine-internal: what the loops decide for this run (trainer/run_state.py)
        self._reset_hook_cache()
        # with a profiler, the dispatch methods are swapped for profiled ones for this run only
        self.run_state.profiling = profiling.instrument(self, self.state.fn or "fit")
        try:
            with torch.autograd.set_detect_anomaly(self.detect_anomaly):
                result = loop(self, ckpt_path)
            self.state.status = "finished"
            self._finalize_loggers("success")
            return result
        except KeyboardInterrupt as err:
            log.warning("KeyboardInterrupt: stopping, running on_keyboard_interrupt/on_exception hooks")
            self.state.status = "interrupted"
            self.call_callbacks("on_keyboard_interrupt")
            self._on_exception(err)
            self._finalize_loggers("interrupted")
            raise
        except (Exception, SystemExit) as err:
            # SystemExit too, as Lightning (it handles every BaseException): the SIGTERM checkpoint
            # exits through it, and callbacks must stop what they run (a metrics server thread
            # answering scrapes while the interpreter shuts down can abort the process).
            self.state.status = "interrupted"
            self._on_exception(err)
            self._finalize_loggers("failed" if isinstance(err, Exception) else "interrupted")
            exit_ = termination.exit_for_error(err)  # e.g. a full checkpoint volume: a retryable exit code
            if exit_ is not None:
                raise exit_ from err
            if isinstance(err, Exception):
                termination.record_error(err)  # volt-run reports the failing rank's exception to the operator
            raise
        finally:
            self.state.stage = None
            self.sanity_checking = False
            if self.run_state.profiling:
                self.run_state.profiling = False
                profiling.uninstrument(self)  # writes the report
            self.strategy.teardown()
            self.checkpoint_io.teardown()

    def _on_exception(self, err: BaseException) -> None:
        self.call_callbacks("on_exception", err)
        if defines(self.lightning_module_ref, "on_exception", LightningModule):
            self.lightning_module_ref.on_exception(err)  # type: ignore[union-attr]
        if self.datamodule is not None:
            self.datamodule.on_exception(err)

    def _finalize_loggers(self, status: str) -> None:
        for logger in self.loggers:
            logger.finalize(status)

    # ------------------------------------------------------------------------------------
    # The loops' API (engine-internal, not Lightning's): what fit_loop, eval_loop and stage
    # call on the Trainer. Hook dispatch: callbacks_for, call_callbacks, module_overrides,
    # call_module, call_hook, call_step; data: request_loaders, limited_batches; per-run
    # decisions: run_state. Each hook goes only to the callbacks that override it (computed once).
    # ------------------------------------------------------------------------------------
    def _reset_hook_cache(self) -> None:
        self._hook_cache = {}
        self._module_hooks: Dict[str, bool] = {}
        self._hook_plan: Dict[str, Any] = {}
        self.run_state.transfer_hooks = None  # looked up again with the hooks

    def callbacks_for(self, hook: str) -> List[Callback]:
        cbs = self._hook_cache.get(hook)
        if cbs is None:
            from volt.callbacks.base import overrides

            cbs = [cb for cb in self.callbacks if overrides(cb, hook)]
            self._hook_cache[hook] = cbs
        return cbs

    def call_callbacks(self, hook: str, *args: Any, only: Optional[List[Callback]] = None) -> None:
        module = self.lightning_module_ref
        cbs = self.callbacks_for(hook) if only is None else only
        if not cbs:
            return
        connector = self._logger_connector
        prev, connector.fx = connector.fx, hook  # self.log's defaults depend on the calling hook
        try:
            for cb in cbs:
                getattr(cb, hook)(self, module, *args)
        finally:
            connector.fx = prev

    def module_overrides(self, hook: str) -> bool:
        cache = self._module_hooks
        found = cache.get(hook)
        if found is None:
            found = defines(self.lightning_module_ref, hook, LightningModule)
            cache[hook] = found
        return found

    def call_module(self, hook: str, *args: Any, always: bool = False, **kwargs: Any) -> Any:
        """Call a module hook; no-op defaults are skipped unless ``always``."""
        if not always and not self.module_overrides(hook):
            return None
        connector = self._logger_connector
        prev, connector.fx = connector.fx, hook
        try:
            return getattr(self.lightning_module_ref, hook)(*args, **kwargs)
        finally:
            connector.fx = prev

    def call_hook(self, hook: str, *args: Any) -> Any:
        """Callbacks first, then the module (Lightning's order for most hooks); returns the module's result.

        Who overrides ``hook`` is looked up once per run, so a hook nobody
        overrides costs one dict lookup per call.
        """
        plan = self._hook_plan.get(hook)
        if plan is None:
            plan = self._hook_plan[hook] = (self.callbacks_for(hook), self.module_overrides(hook))
        cbs, module_overrides = plan
        if not cbs and not module_overrides:
            return None
        # call_callbacks then call_module, inlined: this runs for per-step hooks
        module = self.lightning_module_ref
        connector = self._logger_connector
        prev, connector.fx = connector.fx, hook  # self.log's defaults depend on the calling hook
        try:
            for cb in cbs:
                getattr(cb, hook)(self, module, *args)
            if module_overrides:
                return getattr(module, hook)(*args)
            return None
        finally:
            connector.fx = prev

    def call_step(self, name: str, *args: Any) -> Any:
        """A *_step through the strategy (so DDP hooks fire), under the precision's autocast."""
        connector = self._logger_connector
        prev, connector.fx = connector.fx, name
        try:
            if name == "training_step" and self.run_state.direct_training_step:  # the strategy would only forward it
                step = self.lightning_module_ref.training_step  # type: ignore[union-attr]
            else:
                step = getattr(self.strategy, name)
            plugin = self.precision_plugin
            if plugin._autocast_dtype is None:
                return step(*args)
            with plugin.forward_context():
                return step(*args)
        finally:
            connector.fx = prev

    # --- used by LightningModule ---------------------------------------------------------------
    def _run_backward(self, loss: torch.Tensor, optimizer: Optional[torch.optim.Optimizer], *args: Any, **kwargs: Any) -> None:
        """on_before_backward -> module.backward(scaled loss) -> on_after_backward."""
        silent = self.run_state.silent
        if "on_before_backward" not in silent:
            self.call_hook("on_before_backward", loss)
        scaler = self.precision_plugin.scaler
        scaled = scaler.scale(loss) if scaler is not None else loss
        if self.module_overrides("backward") or args or kwargs:
            self.call_module("backward", scaled, *args, always=True, **kwargs)
        else:
            scaled.backward()
        if "on_after_backward" not in silent:
            self.call_hook("on_after_backward")

    def _optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Any, **kwargs: Any) -> Any:
        return fit_loop.optimizer_step(self, optimizer, closure, **kwargs)

    # --- data sources ---------------------------------------------------------------------------
    def request_loaders(self, stage: str) -> List[Iterable]:
        """The loaders for ``stage`` (train|val|test|predict): argument, datamodule, then module."""
        arg_key = {"train": "train", "val": "val", "test": "test", "predict": "predict"}[stage]
        args = self._loader_args
        given = args.get(arg_key)
        if stage == "val" and given is None and self.state.fn == "validate":
            given = args.get("validate")
        if given is not None:
            loaders = stage_loaders(given, stage)
        else:
            method = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader",
                      "predict": "predict_dataloader"}[stage]
            source: Any = None
            if defines(self.datamodule, method, LightningDataModule):
                source = self.datamodule
            elif defines(self.lightning_module_ref, method, LightningModule):
                source = self.lightning_module_ref
            if source is None:
                return []
            loaders = stage_loaders(self._call_source(source, method), stage)
        if stage == "train" and len(loaders) != 1:
            raise ValueError("fit() takes one training dataloader (combine several into one iterable)")
        if stage == "train" and self.overfit_batches:
            loaders = [without_shuffle(loaders[0])]
        return prepare_loaders(loaders, stage, self.strategy.process_dataloader)

    def _call_source(self, source: Any, method: str) -> Any:
        connector = self._logger_connector
        prev, connector.fx = connector.fx, method
        try:
            return getattr(source, method)()
        finally:
            connector.fx = prev

    def limited_batches(self, stage: str, loaders: List[Iterable]) -> List[float]:
        limit, arg, name = {
            "train": (self.limit_train_batches, "limit_train_batches", "train_dataloader"),
            "val": (self.limit_val_batches, "limit_val_batches", "val_dataloader"),
            "test": (self.limit_test_batches, "limit_test_batches", "test_dataloader"),
            "predict": (self.limit_predict_batches, "limit_predict_batches", "predict_dataloader"),
        }[stage]
        return [limited_length(name, arg, dl, limit) for dl in loaders]

    def __repr__(self) -> str:
        return f"Trainer(strategy={self.strategy!r}, precision={self.precision!r}, max_epochs={self.max_epochs})"


def _checkpoints_last(callbacks: List[Callback]) -> List[Callback]:
    """Lightning's order: the tuner's callbacks first (they change what the others see), then the
    rest, then checkpoint callbacks, so that they see every metric of the step/epoch."""
    from volt.callbacks.checkpoint_base import Checkpoint
    from volt.callbacks.finders import BatchSizeFinder, LearningRateFinder

    tuners = [c for c in callbacks if isinstance(c, (BatchSizeFinder, LearningRateFinder))]
    checkpoints = [c for c in callbacks if isinstance(c, Checkpoint) and not isinstance(c, (BatchSizeFinder,
                                                                                            LearningRateFinder))]
    placed = {id(c) for c in tuners + checkpoints}
    return tuners + [c for c in callbacks if id(c) not in placed] + checkpoints
