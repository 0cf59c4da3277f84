"""TrainerConfig: the Trainer's arguments, parsed once at ``Trainer(...)``.

``parse_arguments`` is the one parser. It applies the TrainingJob's ``VOLT_TRAINER``
(volt.overrides), maps each Lightning 1.x name onto its 2.x argument (the ``LIGHTNING_1X``
table), checks every value, and returns a frozen ``TrainerConfig``. A bad argument raises
here, before any data is touched, with a message that names it. Building objects from the
config (strategy, loggers, callbacks) is ``components.py``'s job; the loops read the Trainer.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from volt.callbacks.base import Callback
from volt.contract import ENV_TRAINER, JobContract
from volt.overrides import apply_trainer_settings
from volt.precision import parse_precision
from volt.profilers import Profiler, profiler_from_argument
from volt.trainer import arguments as A
from volt.trainer.compiled_step import CompileSetting, parse_compile

log = logging.getLogger(__name__)

Number = Union[int, float]


@dataclass(frozen=True)
class Legacy:
    """A Lightning 1.x argument and what it becomes.

    ``target`` is the 2.x argument it sets and ``to_2x`` its value there (None: it sets nothing);
    giving the 2.x argument too, with another value, raises when ``exclusive``. Without
    ``to_2x`` the named parse step reads the 1.x argument itself (``becomes`` says what it does).
    ``unset`` is the signature's default: the value that says nothing.
    """

    name: str
    becomes: str
    target: Optional[str] = None
    to_2x: Optional[Callable[[Any], Any]] = None
    exclusive: bool = True
    unset: Any = None


def _refresh_rate_to_bar(rate: Any) -> Optional[bool]:
    return False if A.check_int("progress_bar_refresh_rate", rate, minimum=0) == 0 else None


def _weights_summary_to_switch(summary: Any) -> Optional[bool]:
    if summary not in (None, "top", "full"):
        raise ValueError(f"Trainer(weights_summary={summary!r}) must be None, 'top' or 'full'")
    return False if summary is None else None


#: Every Lightning 1.x argument of ``Trainer``: the 2.x argument it maps to, or what volt does with it.
LIGHTNING_1X: Tuple[Legacy, ...] = (
    Legacy("checkpoint_callback", "enable_checkpointing", "enable_checkpointing",
           lambda v: A.check_bool("checkpoint_callback", v)),
    Legacy("replace_sampler_ddp", "use_distributed_sampler", "use_distributed_sampler",
           lambda v: A.check_bool("replace_sampler_ddp", v), exclusive=False),
    Legacy("reload_dataloaders_every_epoch", "reload_dataloaders_every_n_epochs=1", "reload_dataloaders_every_n_epochs",
           lambda v: 1 if A.check_bool("reload_dataloaders_every_epoch", v) else None, exclusive=False,
           unset=False),
    Legacy("progress_bar_refresh_rate", "the bar's refresh rate; 0: enable_progress_bar=False", "enable_progress_bar",
           _refresh_rate_to_bar),
    Legacy("weights_summary", "ModelSummary(max_depth=1 | -1); None: enable_model_summary=False",
           "enable_model_summary", _weights_summary_to_switch, unset="top"),
    Legacy("gpus", "accelerator='cuda', devices=..."),
    Legacy("num_processes", "accelerator='cpu', devices=n"),
    Legacy("tpu_cores", "ValueError: no TPU support"),
    Legacy("ipus", "ValueError: no IPU support"),
    Legacy("distributed_backend", "strategy=..."),
    Legacy("auto_select_gpus", "the GPUs with the most free memory"),
    Legacy("amp_backend", "precision (only 'native'; 'apex' raises)"),
    Legacy("amp_level", "ignored with the native backend, as in 1.x"),
    Legacy("resume_from_checkpoint", "fit(ckpt_path=...) when fit gets none"),
    Legacy("process_position", "ProgressBar(process_position=...)"),
    Legacy("log_gpu_memory", "CUDA memory logged at logging points"),
    Legacy("track_grad_norm", "gradient p-norms logged at logging points"),
    Legacy("flush_logs_every_n_steps", "logger.save() every n steps"),
    Legacy("weights_save_path", "ModelCheckpoint's default directory root"),
    Legacy("truncated_bptt_steps", "module.truncated_bptt_steps"),
    Legacy("terminate_on_nan", "a non-finite loss raises"),
    Legacy("auto_lr_find", "trainer.tune(): Tuner.lr_find"),
    Legacy("auto_scale_batch_size", "trainer.tune(): Tuner.scale_batch_size"),
    Legacy("prepare_data_per_node", "module.prepare_data_per_node (and the datamodule's)"),
    Legacy("automatic_optimization", "module.automatic_optimization"),
    Legacy("move_metrics_to_cpu", "epoch outputs moved to CPU"),
)

#: The settings the Trainer keeps as attributes of its own (Lightning's public names): callbacks
#: and the tuner may change them during a run (GradientAccumulationScheduler sets
#: accumulate_grad_batches), while the config keeps what was asked.
TRAINER_ATTRIBUTES = (
    "sync_batchnorm", "use_distributed_sampler", "fast_dev_run", "max_epochs", "min_epochs", "max_steps", "min_steps",
    "max_time", "limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
    "overfit_batches", "val_check_interval", "check_val_every_n_epoch", "num_sanity_val_steps", "log_every_n_steps",
    "flush_logs_every_n_steps", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
    "track_grad_norm", "truncated_bptt_steps", "reload_dataloaders_every_n_epochs", "terminate_on_nan",
    "detect_anomaly", "inference_mode", "move_metrics_to_cpu", "log_gpu_memory", "process_position", "auto_lr_find",
    "auto_scale_batch_size", "resume_from_checkpoint", "barebones", "enable_checkpointing", "enable_progress_bar",
    "enable_model_summary", "profiler",
)


@dataclass(frozen=True)
class TrainerConfig:
    """What ``Trainer(...)`` was asked, checked, in 2.x terms (``trainer.config``)."""

    # where the processes run: accelerator, device ids, nodes, strategy (from every 1.x and 2.x spelling)
    placement: A.DeviceChoice
    plugins: A.PluginChoice
    precision: str  # the canonical name, e.g. "32-true"
    sync_batchnorm: bool
    use_distributed_sampler: bool
    # how long
    fast_dev_run: int
    max_epochs: int  # -1: unlimited
    min_epochs: Optional[int]
    max_steps: int  # -1: unlimited
    min_steps: Optional[int]
    max_time: Optional[timedelta]
    limit_train_batches: Number
    limit_val_batches: Number
    limit_test_batches: Number
    limit_predict_batches: Number
    overfit_batches: Number
    val_check_interval: Number
    check_val_every_n_epoch: Optional[int]
    num_sanity_val_steps: int
    reload_dataloaders_every_n_epochs: int
    # what a step does
    accumulate_grad_batches: Union[int, Dict[int, int]]
    gradient_clip_val: Optional[Number]
    gradient_clip_algorithm: Optional[str]
    track_grad_norm: float  # -1: off
    truncated_bptt_steps: Optional[int]
    terminate_on_nan: bool
    detect_anomaly: bool
    inference_mode: bool
    move_metrics_to_cpu: bool
    automatic_optimization: Optional[bool]  # None: the module decides
    prepare_data_per_node: Optional[bool]  # None: the module and datamodule decide
    deterministic: Any  # None | bool | "warn"
    benchmark: Optional[bool]
    compile: CompileSetting  # Trainer(compile=...): the step compiled or CUDA-graph captured (compiled_step.py)
    # logging and outputs
    log_every_n_steps: int
    flush_logs_every_n_steps: int
    log_gpu_memory: Optional[str]
    default_root_dir: str
    logs_root: str  # the default logger's folder
    weights_save_path: str
    weights_save_path_given: bool
    logger: Any  # None/True: the default logger; False: none; a Logger or a list
    callbacks: Tuple[Callback, ...]  # the script's
    profiler: Profiler
    barebones: bool
    enable_checkpointing: bool
    enable_progress_bar: bool
    enable_model_summary: bool
    progress_bar_refresh_rate: int
    process_position: int
    summary_depth: int  # ModelSummary(max_depth=...)
    # 1.x tuning and resume
    auto_lr_find: Union[bool, str]
    auto_scale_batch_size: Union[bool, str]
    resume_from_checkpoint: Optional[Union[str, os.PathLike]]


def with_job_settings(arguments: Mapping[str, Any], defaults: Mapping[str, Any],
                      contract: JobContract) -> Dict[str, Any]:
    """The script's arguments with the TrainingJob's ``VOLT_TRAINER`` applied (volt.overrides)."""
    if not contract.trainer_settings:
        return dict(arguments)
    explicit = {k: v for k, v in arguments.items() if v is not defaults.get(k) and v != defaults.get(k)}
    merged = apply_trainer_settings(explicit, contract.trainer_settings)
    unknown = set(merged) - set(defaults)
    if unknown:
        raise ValueError(f"{ENV_TRAINER} sets unknown Trainer arguments {sorted(unknown)}")
    # what the job's settings replaced goes back to its default, not to the script's value
    return {**defaults, **merged}


def parse_arguments(arguments: Mapping[str, Any], defaults: Mapping[str, Any], contract: JobContract) -> TrainerConfig:
    """``Trainer(**arguments)`` (its signature's ``defaults``) in a TrainingJob described by ``contract``."""
    a = with_job_settings(arguments, defaults, contract)
    _map_1x_names(a)
    plugins = A.parse_plugins(a["plugins"])
    placement = _placement(a, plugins)
    if plugins.precision is not None and a["precision"] is not None:
        raise ValueError(f"Trainer(plugins=[{plugins.precision!r}]) sets the precision, and precision= "
                         "was also given; pass only one")
    precision = (plugins.precision.precision if plugins.precision is not None
                 else parse_precision(a["precision"], a["amp_level"], a["amp_backend"]))
    limits = _limits(a)
    switches = _switches(a, limits)
    if a["resume_from_checkpoint"] is not None and not isinstance(a["resume_from_checkpoint"], (str, os.PathLike)):
        raise TypeError("Trainer(resume_from_checkpoint=...) must be a path")
    return TrainerConfig(
        placement=placement, plugins=plugins, precision=precision,
        compile=parse_compile(a["compile"], placement.accelerator),
        sync_batchnorm=A.check_bool("sync_batchnorm", a["sync_batchnorm"]),
        use_distributed_sampler=A.check_bool("use_distributed_sampler", a["use_distributed_sampler"]),
        **limits, **_step_settings(a), **_outputs(a, contract), **switches,
        callbacks=_user_callbacks(a["callbacks"]),
        profiler=profiler_from_argument(a["profiler"]),
        auto_lr_find=_auto_lr_find(a["auto_lr_find"]),
        auto_scale_batch_size=A.check_choice("auto_scale_batch_size", a["auto_scale_batch_size"],
                                             (False, True, "power", "binsearch")),
        resume_from_checkpoint=a["resume_from_checkpoint"],
    )


def _map_1x_names(a: Dict[str, Any]) -> None:
    """Apply the renames of ``LIGHTNING_1X`` to ``a`` (in place)."""
    for legacy in LIGHTNING_1X:
        value = a[legacy.name]
        if legacy.to_2x is None or legacy.target is None:
            continue
        if value is None if legacy.unset is None else value == legacy.unset:
            continue
        mapped = legacy.to_2x(value)
        if mapped is None:
            continue
        given = a[legacy.target]
        if legacy.exclusive and given is not None and given != mapped:
            raise ValueError(f"Trainer({legacy.name}={value!r}) is the 1.x name of {legacy.target}={mapped!r}, "
                             f"but {legacy.target}={given!r} was also given; pass only one")
        a[legacy.target] = mapped


def _placement(a: Dict[str, Any], plugins: A.PluginChoice) -> A.DeviceChoice:
    """accelerator, strategy, devices, num_nodes and their 1.x spellings, as one DeviceChoice."""
    if plugins.strategy is not None:  # 1.x: plugins="ddp_..." named the strategy
        if a["strategy"] not in (None, "auto", plugins.strategy):
            raise ValueError(f"Trainer(plugins={plugins.strategy!r}) names a strategy but strategy={a['strategy']!r} "
                             "was also given; pass only strategy=")
        a["strategy"] = plugins.strategy
    choice = A.choose_devices(
        a["accelerator"], a["strategy"], a["devices"], a["num_nodes"], a["gpus"], a["num_processes"],
        a["tpu_cores"], a["ipus"], a["distributed_backend"], a["auto_select_gpus"],
        cluster=plugins.cluster_environment,
    )
    if choice.legacy_note:
        log.info(choice.legacy_note)
    return choice


def _limits(a: Dict[str, Any]) -> Dict[str, Any]:
    """How long fit runs and how many batches each loop takes (fast_dev_run and overfit_batches applied)."""
    out: Dict[str, Any] = {}
    out["fast_dev_run"] = fast_dev_run = _fast_dev_run(a["fast_dev_run"])
    out["max_steps"] = max_steps = A.check_int("max_steps", -1 if a["max_steps"] is None else a["max_steps"], minimum=-1)
    out["min_steps"] = A.check_int("min_steps", a["min_steps"], minimum=0, allow_none=True)
    out["max_time"] = max_time = A.parse_max_time(a["max_time"])
    max_epochs = A.check_int("max_epochs", a["max_epochs"], minimum=-1, allow_none=True)
    if max_epochs is None:
        max_epochs = 1000 if (max_steps == -1 and max_time is None) else -1
    out["max_epochs"] = max_epochs
    out["min_epochs"] = A.check_int("min_epochs", a["min_epochs"], minimum=0, allow_none=True)
    for stage in ("train", "val", "test", "predict"):
        name = f"limit_{stage}_batches"
        out[name] = A.parse_limit(name, a[name])
    out["overfit_batches"] = overfit = A.parse_limit("overfit_batches", a["overfit_batches"], default=0.0)
    if overfit:
        out["limit_train_batches"] = out["limit_val_batches"] = overfit
    out["val_check_interval"] = interval = _val_check_interval(a["val_check_interval"])
    out["check_val_every_n_epoch"] = every = A.check_int(
        "check_val_every_n_epoch", a["check_val_every_n_epoch"], minimum=1, allow_none=True)
    if every is None and not isinstance(interval, int):
        raise ValueError("Trainer(check_val_every_n_epoch=None) needs an int val_check_interval (a number of batches)")
    sanity = a["num_sanity_val_steps"]
    out["num_sanity_val_steps"] = A.check_int("num_sanity_val_steps", 2 if sanity is None else sanity, minimum=-1)
    out["reload_dataloaders_every_n_epochs"] = A.check_int(
        "reload_dataloaders_every_n_epochs", a["reload_dataloaders_every_n_epochs"], minimum=0)
    if fast_dev_run:
        n = fast_dev_run
        for stage in ("train", "val", "test", "predict"):
            out[f"limit_{stage}_batches"] = n
        out.update(max_steps=n, max_epochs=1, num_sanity_val_steps=0, val_check_interval=1.0,
                   check_val_every_n_epoch=1, max_time=None)
        log.info("fast_dev_run=%d: running %d batch(es) of each loop, no logger, no checkpoints", n, n)
    return out


def _step_settings(a: Dict[str, Any]) -> Dict[str, Any]:
    """What each training step does beyond forward, backward and step."""
    clip = a["gradient_clip_val"]
    if clip is not None and (not A._is_number(clip) or clip < 0):
        raise ValueError(f"Trainer(gradient_clip_val={clip!r}) must be a number >= 0")
    algorithm = a["gradient_clip_algorithm"]
    if algorithm is not None:
        A.check_choice("gradient_clip_algorithm", algorithm, ("norm", "value"))
    for name in ("automatic_optimization", "prepare_data_per_node"):
        if a[name] is not None:
            A.check_bool(name, a[name])
    deterministic, benchmark = a["deterministic"], a["benchmark"]
    if deterministic not in (None, True, False, "warn"):
        raise ValueError(f"Trainer(deterministic={deterministic!r}) must be None, True, False or 'warn'")
    if benchmark is not None:
        A.check_bool("benchmark", benchmark)
    if deterministic and benchmark:
        raise ValueError("Trainer(deterministic=True, benchmark=True) contradict each other: cudnn autotuning is nondeterministic")
    if a["terminate_on_nan"]:
        A.check_bool("terminate_on_nan", a["terminate_on_nan"])
    return dict(
        accumulate_grad_batches=_accumulation(a["accumulate_grad_batches"]),
        gradient_clip_val=clip, gradient_clip_algorithm=algorithm,
        track_grad_norm=_track_grad_norm(a["track_grad_norm"]),
        truncated_bptt_steps=A.check_int("truncated_bptt_steps", a["truncated_bptt_steps"], minimum=1, allow_none=True),
        terminate_on_nan=a["terminate_on_nan"],
        detect_anomaly=A.check_bool("detect_anomaly", a["detect_anomaly"]),
        inference_mode=A.check_bool("inference_mode", a["inference_mode"]),
        move_metrics_to_cpu=A.check_bool("move_metrics_to_cpu", a["move_metrics_to_cpu"]),
        automatic_optimization=a["automatic_optimization"], prepare_data_per_node=a["prepare_data_per_node"],
        deterministic=deterministic, benchmark=benchmark,
    )


def _outputs(a: Dict[str, Any], contract: JobContract) -> Dict[str, Any]:
    """Where logs and checkpoints go, and how often logs are written."""
    root = a["default_root_dir"]
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"Trainer(default_root_dir=...) must be a path, got {type(root).__name__}")
    default_root_dir = os.fspath(root) if root is not None else os.getcwd()
    # The default logger's folder: a TrainingJob's checkpoint volume outlives its pods.
    logs_root = default_root_dir
    if root is None and contract.checkpoint_dir:
        logs_root = os.path.join(contract.checkpoint_dir, "logs")
    weights = a["weights_save_path"]
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError("Trainer(weights_save_path=...) must be a path")
    memory = a["log_gpu_memory"]
    if memory is not None:
        A.check_choice("log_gpu_memory", memory, ("all", "min_max"))
    every, flush = a["log_every_n_steps"], a["flush_logs_every_n_steps"]
    return dict(
        default_root_dir=default_root_dir, logs_root=logs_root,
        weights_save_path=os.fspath(weights) if weights else default_root_dir,
        weights_save_path_given=weights is not None,
        log_gpu_memory=memory,
        log_every_n_steps=A.check_int("log_every_n_steps", 50 if every is None else every, minimum=0),
        flush_logs_every_n_steps=A.check_int("flush_logs_every_n_steps", 100 if flush is None else flush, minimum=1),
    )


def _switches(a: Dict[str, Any], limits: Dict[str, Any]) -> Dict[str, Any]:
    """barebones, the logger, checkpointing, the progress bar and the model summary.

    barebones and fast_dev_run turn some off (``limits`` is updated: barebones runs no sanity check).
    """
    barebones = A.check_bool("barebones", a["barebones"])
    logger = a["logger"]
    enabled = {name: a[name] for name in ("enable_checkpointing", "enable_progress_bar", "enable_model_summary")}
    for name, value in enabled.items():
        if value is not None:
            A.check_bool(name, value)
    if barebones:
        if any(enabled.values()) or logger:
            raise ValueError("Trainer(barebones=True) turns off checkpointing, logger, progress bar and model summary; "
                             "do not enable them")
        enabled = dict.fromkeys(enabled, False)
        logger = False
        limits["num_sanity_val_steps"] = 0
    if limits["fast_dev_run"]:
        logger = False
    if logger is not None and logger is not True and logger is not False and not isinstance(logger, (list, tuple)) \
            and not hasattr(logger, "log_metrics"):
        raise TypeError(f"Trainer(logger=...) must be True, False, a Logger or a list of Loggers, got {type(logger).__name__}")
    rate = a["progress_bar_refresh_rate"]
    return dict(
        barebones=barebones, logger=logger,
        **{name: True if value is None else value for name, value in enabled.items()},
        progress_bar_refresh_rate=rate or 1,
        process_position=A.check_int("process_position", a["process_position"], minimum=0),
        summary_depth=-1 if a["weights_summary"] == "full" else 1,
    )


def _user_callbacks(callbacks: Any) -> Tuple[Callback, ...]:
    if callbacks is None:
        return ()
    if isinstance(callbacks, Callback):
        return (callbacks,)
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"Trainer(callbacks=...) must be a Callback or a list of Callbacks, got {type(callbacks).__name__}")
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"Trainer(callbacks=[...]) holds {type(cb).__name__}, which is not a volt Callback")
    return tuple(callbacks)


def _fast_dev_run(value: Any) -> int:
    if isinstance(value, bool):
        return 1 if value else 0
    return A.check_int("fast_dev_run", value, minimum=0)  # type: ignore[return-value]


def _val_check_interval(value: Any) -> Number:
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


def _accumulation(value: Any) -> Union[int, Dict[int, int]]:
    if isinstance(value, dict):  # 1.x: {epoch: factor}, as GradientAccumulationScheduler
        if not value or not all(A._is_int(k) and k >= 0 and A._is_int(v) and v >= 1 for k, v in value.items()):
            raise ValueError(
                f"Trainer(accumulate_grad_batches={value!r}): a dict must map epoch (int >= 0) to factor (int >= 1)"
            )
        return dict(sorted(value.items()))
    return A.check_int("accumulate_grad_batches", value, minimum=1)  # type: ignore[return-value]


def _track_grad_norm(value: Any) -> float:
    if value == "inf":
        return float("inf")
    if not A._is_number(value):
        raise TypeError(f"Trainer(track_grad_norm=...) must be -1, a positive number or 'inf', got {value!r}")
    if value != -1 and value <= 0:
        raise ValueError(f"Trainer(track_grad_norm={value}) must be -1 (off), a positive p or 'inf'")
    return float(value)


def _auto_lr_find(value: Any) -> Union[bool, str]:
    if not isinstance(value, (bool, str)):
        raise TypeError("Trainer(auto_lr_find=...) must be a bool or the name of the learning-rate attribute")
    return value
