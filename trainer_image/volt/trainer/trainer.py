"""The Trainer: a facade over the parsed arguments, the run's state and the loops.

Its arguments are parsed once into a frozen ``TrainerConfig`` (``config.py``, ``trainer.config``),
from which ``components.py`` builds the strategy, precision plugin, loggers and callbacks. The
loops live in ``fit_loop.py`` (training) and ``eval_loop.py`` (validation, test, predict), what
every entry point shares in ``stage.py``. This file holds Lightning's public properties and
entry points, and the named API the loops call (hook dispatch, data).
"""
from __future__ import annotations

import contextlib
import inspect
import os
from functools import lru_cache
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

import torch

from volt.callbacks import EarlyStopping, ProgressBar
from volt.callbacks.base import Callback, overrides
from volt.callbacks.checkpoint_base import Checkpoint
from volt.contract import JobContract
from volt.datamodule import LightningDataModule
from volt.module import LightningModule
from volt.plugins import CheckpointIO
from volt.resume import RngSnapshots
from volt.signals import PreemptionCallback
from volt.trainer import checkpoint_connector, eval_loop, fit_loop
from volt.trainer.compiled_step import CompileStats
from volt.trainer.components import (apply_determinism, build_callbacks, build_loggers, build_precision_plugin,
                                     build_strategy)
from volt.trainer.config import TRAINER_ATTRIBUTES, TrainerConfig, parse_arguments
from volt.trainer.data import INF, defines, limited_length, prepare_loaders, stage_loaders, without_shuffle
from volt.trainer.logger_connector import LoggerConnector
from volt.trainer.optimizers import LightningOptimizer, LRSchedulerConfig
from volt.trainer.progress import Progress
from volt.trainer.run_state import RunState
from volt.trainer.stage import check_model, check_sources, run_stage
from volt.trainer.states import TrainerFn, TrainerState
from volt.tuner import Tuner


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
        compile: Any = False,
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
        #: The arguments, checked, with the job's settings applied and 1.x names mapped (trainer/config.py).
        self.config = parse_arguments(passed, _argument_defaults(), self.job_contract)
        self._setup(self.config)

    # ------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------
    def _setup(self, config: TrainerConfig) -> None:
        self.state = TrainerState()
        self.should_stop = False
        self.sanity_checking = False
        self.progress = Progress()
        self._logger_connector = LoggerConnector(self)
        self._logger_connector.enabled = not config.barebones  # barebones: self.log is a no-op
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
        #: Trainer(compile=...): whether the step runs compiled, why not, and how often it compiled.
        self.compile_stats = CompileStats(mode=config.compile.mode)
        self._trial_run = False  # the tuner's trial fits: they start fresh, whatever the resume settings
        self._reset_hook_cache()
        # Lightning's public settings (trainer.max_epochs, ...): callbacks and the tuner may change them
        for name in TRAINER_ATTRIBUTES:
            setattr(self, name, getattr(config, name))
        self.strategy = build_strategy(config)
        self.precision_plugin = build_precision_plugin(config, self.strategy)
        apply_determinism(config)
        self.loggers = build_loggers(config)
        self.callbacks = build_callbacks(config, self.job_contract)
        self._call_callbacks_init("on_init_start")
        self._call_callbacks_init("on_init_end")

    def _call_callbacks_init(self, hook: str) -> None:
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
        return self.config.precision

    @property
    def accelerator(self) -> str:
        return self.config.placement.accelerator

    @property
    def device_ids(self) -> List[int]:
        return list(self.config.placement.device_ids)

    @property
    def num_devices(self) -> int:
        return self.config.placement.num_devices

    @property
    def num_nodes(self) -> int:
        return self.config.placement.num_nodes

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
        return self.config.default_root_dir

    @property
    def weights_save_path(self) -> str:
        return self.config.weights_save_path

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
            return self.config.default_root_dir
        path = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
        return path if path is not None else self.config.default_root_dir

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
        return [c for c in self.callbacks if isinstance(c, Checkpoint)]

    @property
    def checkpoint_callback(self) -> Optional[Callback]:
        cbs = self.checkpoint_callbacks
        return cbs[0] if cbs else None

    @property
    def early_stopping_callbacks(self) -> List[Callback]:
        return [c for c in self.callbacks if isinstance(c, EarlyStopping)]

    @property
    def early_stopping_callback(self) -> Optional[Callback]:
        cbs = self.early_stopping_callbacks
        return cbs[0] if cbs else None

    @property
    def progress_bar_callback(self) -> Optional[Callback]:
        return next((c for c in self.callbacks if isinstance(c, ProgressBar)), None)

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
        check_model(model, "fit")
        check_sources(train_dataloaders, val_dataloaders, datamodule, "fit")
        if not self._trial_run:
            ckpt_path = self._resume_path(ckpt_path)
        self.state.fn = TrainerFn.FITTING
        loaders = dict(train=train_dataloaders, val=val_dataloaders)
        run_stage(self, fit_loop.run_fit, model, datamodule, loaders, ckpt_path)

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
        check_sources(dataloaders, None, datamodule, "predict")
        self.state.fn = TrainerFn.PREDICTING
        self._return_predictions = True if return_predictions is None else return_predictions
        return run_stage(self, eval_loop.run_predict, model, datamodule, dict(predict=dataloaders),
                         self._eval_ckpt(ckpt_path, model))

    def tune(self, model: LightningModule, train_dataloaders: Any = None, val_dataloaders: Any = None,
             datamodule: Optional[LightningDataModule] = None, *, train_dataloader: Any = None,
             scale_batch_size_kwargs: Optional[Dict[str, Any]] = None,
             lr_find_kwargs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """1.x ``trainer.tune()``: batch-size scaling and/or the learning-rate finder, as configured."""
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
        check_sources(dataloaders, None, datamodule, fn)
        self.state.fn = fn
        self._verbose = verbose
        return run_stage(self, eval_loop.run_evaluate, model, datamodule, {fn: dataloaders},
                         self._eval_ckpt(ckpt_path, model))

    def _eval_model(self, model: Optional[LightningModule], fn: str) -> LightningModule:
        if model is None:
            model = self.lightning_module
            if model is None:
                raise ValueError(f"trainer.{fn}() needs a model: pass one, or call fit() first")
            self._eval_model_from_fit = True
        else:
            check_model(model, fn)
            self._eval_model_from_fit = False
        return model

    def _eval_ckpt(self, ckpt_path: Optional[str], model: LightningModule) -> Optional[str]:
        if ckpt_path is None and getattr(self, "_eval_model_from_fit", False):
            cb = self.checkpoint_callback
            best = getattr(cb, "best_model_path", "") if cb is not None else ""
            return "best" if best else None
        return ckpt_path

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
    def flush_step_logs(self) -> None:
        """Write the current step's metrics now, where the batch loop would write them after
        on_train_batch_end: a callback that ends the run inside that hook calls this first."""
        fit_loop.maybe_flush_logs(self)

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


@lru_cache(maxsize=1)
def _argument_defaults() -> Dict[str, Any]:
    """``Trainer.__init__``'s defaults: the parser tells them from what a script passed explicitly."""
    return {n: p.default for n, p in inspect.signature(Trainer.__init__).parameters.items() if n != "self"}
