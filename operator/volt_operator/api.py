"""The TrainingJob API: pydantic models that are the one source of the schema.

``crds/trainingjob.yaml`` is generated from these models (``crdgen.py``), so a
field, default, enum or validation rule is written once, here. Field names are
camelCase as Kubernetes expects; ``TrainerSettings.to_trainer_kwargs`` turns
them into Lightning's snake_case Trainer arguments for the engine.

CEL rules (``x-kubernetes-validations``) ride along in ``json_schema_extra`` so
that the API server refuses invalid objects; the same checks are repeated in
pydantic validators so that the operator and the unit tests agree with it.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from kubernetes.utils.quantity import parse_quantity
from pydantic.alias_generators import to_camel

GROUP = "volt.dev"
VERSION = "v1alpha1"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAMES = ["tj"]
API_VERSION = f"{GROUP}/{VERSION}"

# Schema helpers understood by crdgen (they are plain JSON-schema extras).
INT_OR_STRING = {"x-kubernetes-int-or-string": True}
PRESERVE = {"x-kubernetes-preserve-unknown-fields": True}
# An empty-object default, so the API server applies the nested defaults.
OBJECT_DEFAULT = {"default": {}}


def cel(rule: str, message: str, field_path: Optional[str] = None) -> Dict[str, str]:
    """One CEL validation rule for ``x-kubernetes-validations``."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
    )

    def to_api(self) -> Dict[str, Any]:
        """The object as the API server stores it (camelCase, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------
# Trainer settings
# --------------------------------------------------------------------------

# Lightning 1.x accepted a strategy name as `accelerator`; keep that meaning.
LEGACY_STRATEGY_ACCELERATORS = ("ddp", "ddp_cpu", "dp", "ddp2")
Accelerator = Literal["cpu", "gpu", "cuda", "auto", "ddp", "ddp_cpu", "dp", "ddp2"]
Strategy = Literal[
    "auto",
    "ddp",
    "ddp_spawn",
    "ddp_find_unused_parameters_true",
    "ddp_find_unused_parameters_false",
    "ddp_cpu",
    "dp",
    "ddp2",
    "single_device",
    "fsdp",
    "fsdp_cpu_offload",
]
PRECISIONS: List[Union[int, str]] = [
    16, 32, 64, "16", "32", "64", "bf16",
    "16-mixed", "bf16-mixed", "16-true", "bf16-true", "32-true", "64-true",
]
# Each precision once, as text: 16 and "16" are one setting (the CEL rule and messages list these).
PRECISION_NAMES: List[str] = list(dict.fromkeys(str(value) for value in PRECISIONS))
# Same pattern as the CEL rule in _DEVICES_SCHEMA.
_DEVICE_TEXT = re.compile(r"^(auto|[0-9]+( *, *[0-9]+)* *,?)$")
# Processes (devices) per node: each gets a metrics port and, on GPUs, a device;
# the largest machines have 8-16 accelerators or a few hundred cores.
MAX_PROCESSES_PER_NODE = 128
MAX_NODES = 4096
# Kubernetes' classic environment variable name (C identifier plus - and .).
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


def _batches(value: Union[int, float, None], field: str) -> Union[int, float, None]:
    """Lightning's count-or-fraction: whole numbers are counts, others fractions.

    JSON (and so the API server) cannot tell 1 from 1.0, so a whole number is
    always a number of batches and a fraction must lie strictly inside (0, 1).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field} must be >= 0, got {value}")
        return value
    if not 0.0 < value < 1.0:
        raise ValueError(f"{field}: a fraction must be in (0, 1), got {value}")
    return value


_COUNT_OR_FRACTION_RULE = cel(
    "self >= 0.0 && (self < 1.0 || self == double(int(self)))",
    "must be a whole number of batches or a fraction in (0, 1)",
)


def _device_count(value: Union[int, str, None], field: str) -> Optional[int]:
    """Number of devices a Lightning `gpus`/`devices` value asks for on one node."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field} must be a count or indices, got {value!r}")
    if isinstance(value, int):
        if value == -1:
            raise ValueError(
                f"{field}=-1 (all devices) cannot size a pod; give the number of devices"
            )
        if value < 0:
            raise ValueError(f"{field} must be >= 0, got {value}")
        count = value
    elif not _DEVICE_TEXT.match(value):
        raise ValueError(
            f"{field}: {value!r} is not a device count, \"auto\" or indices like \"0,1\""
        )
    elif value == "auto":
        return None
    elif "," not in value:
        count = int(value)
    else:
        count = len([part for part in value.split(",") if part.strip()])
    if count > MAX_PROCESSES_PER_NODE:
        raise ValueError(
            f"{field} asks for {count} devices: at most {MAX_PROCESSES_PER_NODE} processes "
            "per node"
        )
    return count


# A list of device indices is written as a string ("0,1"), as Lightning 1.x
# also accepted: the API server's CEL cannot see fields of mixed JSON types.
_DEVICES_SCHEMA = {
    **INT_OR_STRING,
    "maxLength": 512,
    "x-kubernetes-validations": [
        cel(
            "type(self) == int ? int(self) >= 0 : "
            "string(self).matches('^(auto|[0-9]+( *, *[0-9]+)* *,?)$')",
            "must be a device count >= 0, \"auto\" or a list of indices like \"0,1\"",
        ),
        cel(
            f"type(self) == int ? int(self) <= {MAX_PROCESSES_PER_NODE} : "
            "!string(self).matches('^[0-9]+$') || (string(self).size() <= 3 "
            f"&& int(string(self)) <= {MAX_PROCESSES_PER_NODE})",
            f"must be at most {MAX_PROCESSES_PER_NODE} processes per node",
        ),
    ],
}


# -- CEL expressions of what the operator derives (TrainingJobSpec.processes_per_node
# and friends), so that the API server checks the same numbers. `t` is the
# trainer object, `s` the spec.


def _cel_device_count(value: str) -> str:
    """Devices a gpus/devices value names (0 for "auto"), as _device_count."""
    return (
        f"(type({value}) == int ? int({value}) : string({value}) == 'auto' ? 0 : "
        # A single number ("8"); more than 6 digits is surely too many (no overflow).
        f"!string({value}).contains(',') ? (string({value}).size() <= 6 "
        f"? int(string({value})) : 1000000) : "
        f"string({value}).split(',').filter(p, p.trim() != '').size())"
    )


def _cel_gpus_asked(t: str) -> str:
    """trainer.gpus set to something other than 0 ("auto" counts)."""
    return (
        f"(has({t}.gpus) && (type({t}.gpus) == int ? int({t}.gpus) != 0 : "
        f"string({t}.gpus) == 'auto' || {_cel_device_count(t + '.gpus')} != 0))"
    )


def _cel_gpu_limit(s: str) -> str:
    """The nvidia.com/gpu amount of spec.resources (limits first), 0 when unset."""
    def whole(value: str) -> str:
        # A non-number is refused by the map's own rule; read it as 0 here.
        return f"(string({value}).matches('^[0-9]{{1,6}}$') ? int(string({value})) : 0)"

    limit = f"{s}.resources.limits['nvidia.com/gpu']"
    request = f"{s}.resources.requests['nvidia.com/gpu']"
    return (
        f"(has({s}.resources.limits) && 'nvidia.com/gpu' in {s}.resources.limits "
        f"? {whole(limit)} : "
        f"has({s}.resources.requests) && 'nvidia.com/gpu' in {s}.resources.requests "
        f"? {whole(request)} : 0)"
    )


def _cel_uses_gpu(s: str) -> str:
    t = f"{s}.trainer"
    return (
        f"({_cel_gpus_asked(t)} || (has({t}.accelerator) && ({t}.accelerator in "
        f"['gpu', 'cuda', 'dp', 'ddp2'] || ({t}.accelerator == 'ddp' && has({t}.gpus)))) "
        f"|| ((!has({t}.accelerator) || {t}.accelerator == 'auto') && {_cel_gpu_limit(s)} > 0))"
    )


def _cel_processes_per_node(s: str) -> str:
    t = f"{s}.trainer"
    gpus, devices = _cel_device_count(t + ".gpus"), _cel_device_count(t + ".devices")
    return (
        f"((has({t}.gpus) && {gpus} > 0) ? {gpus} : "
        f"(has({t}.devices) && {devices} > 0) ? {devices} : "
        f"has({t}.numProcesses) ? {t}.numProcesses : "
        f"({_cel_uses_gpu(s)} && {_cel_gpu_limit(s)} > 0) ? {_cel_gpu_limit(s)} : 1)"
    )


class TrainerExtra(BaseModel):
    """More Trainer arguments by their own snake_case names (Lightning 2.x and
    1.x ones), each typed. Arguments the operator owns (num_nodes,
    devices, resume paths, default_root_dir) or that have a camelCase field in
    ``trainer`` are not here on purpose."""

    model_config = ConfigDict(extra="forbid")

    amp_backend: Optional[Literal["native", "apex"]] = Field(
        None, description="1.x AMP backend (apex is refused by the engine with a clear error)."
    )
    auto_lr_find: Optional[bool] = Field(None, description="1.x: run the LR finder in tune().")
    auto_scale_batch_size: Optional[Literal["power", "binsearch"]] = Field(
        None, description="1.x: batch-size finder mode in tune() (1.x `true` means power)."
    )
    barebones: Optional[bool] = None
    detect_anomaly: Optional[bool] = None
    enable_checkpointing: Optional[bool] = None
    enable_model_summary: Optional[bool] = None
    enable_progress_bar: Optional[bool] = None
    fast_dev_run: Optional[int] = Field(
        None, ge=0, description="Run N batches of each loop (1 is Lightning's `True`)."
    )
    flush_logs_every_n_steps: Optional[int] = Field(None, ge=1)
    inference_mode: Optional[bool] = None
    limit_predict_batches: Optional[Union[int, float]] = Field(
        None, json_schema_extra={"x-kubernetes-validations": [_COUNT_OR_FRACTION_RULE]}
    )
    log_gpu_memory: Optional[Literal["all", "min_max"]] = None
    move_metrics_to_cpu: Optional[bool] = None
    overfit_batches: Optional[Union[int, float]] = Field(
        None, json_schema_extra={"x-kubernetes-validations": [_COUNT_OR_FRACTION_RULE]}
    )
    prepare_data_per_node: Optional[bool] = None
    process_position: Optional[int] = Field(None, ge=0)
    progress_bar_refresh_rate: Optional[int] = Field(None, ge=0)
    reload_dataloaders_every_epoch: Optional[bool] = None
    reload_dataloaders_every_n_epochs: Optional[int] = Field(None, ge=0)
    replace_sampler_ddp: Optional[bool] = None
    terminate_on_nan: Optional[bool] = None
    track_grad_norm: Optional[Union[int, str]] = Field(
        None,
        description="1.x: norm order to log (-1 off, or \"inf\").",
        json_schema_extra={
            **INT_OR_STRING,
            "x-kubernetes-validations": [
                cel("type(self) == int || string(self) == 'inf'",
                    "must be an integer norm order or \"inf\"")
            ],
        },
    )
    truncated_bptt_steps: Optional[int] = Field(None, ge=1)
    use_distributed_sampler: Optional[bool] = None
    weights_summary: Optional[Literal["top", "full"]] = None

    @field_validator("limit_predict_batches", "overfit_batches")
    @classmethod
    def _check_batches(cls, value: Any, info: Any) -> Any:
        return _batches(value, f"trainer.extra.{info.field_name}")

    @field_validator("track_grad_norm")
    @classmethod
    def _check_norm(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "inf":
            raise ValueError(
                f"trainer.extra.track_grad_norm must be a number or 'inf', got {value!r}"
            )
        return value


EXTRA_ALLOWED = tuple(TrainerExtra.model_fields)


class TrainerSettings(_Model):
    """Lightning Trainer settings (Lightning Trainer argument names, camelCase).

    They override the training script's own Trainer arguments; the engine
    logs each override.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.gpus) && has(self.devices))",
                    "set trainer.gpus or trainer.devices, not both",
                ),
                cel(
                    "!has(self.minEpochs) || !has(self.maxEpochs) || self.maxEpochs == -1 "
                    "|| self.minEpochs <= self.maxEpochs",
                    "trainer.minEpochs must not exceed trainer.maxEpochs",
                    ".minEpochs",
                ),
                cel(
                    "!has(self.numNodes) || self.numNodes == 1 || !has(self.strategy) "
                    "|| !(self.strategy in ['dp', 'single_device', 'ddp_spawn'])",
                    "trainer.strategy dp, ddp_spawn and single_device run on one node only",
                    ".strategy",
                ),
                cel(
                    f"!({_cel_gpus_asked('self')} && has(self.accelerator) "
                    "&& self.accelerator in ['cpu', 'ddp_cpu'])",
                    "trainer.gpus asks for GPUs but trainer.accelerator runs on CPU: "
                    "set one of them",
                    ".gpus",
                ),
            ]
        }
    )

    num_nodes: int = Field(
        1, ge=1, le=MAX_NODES,
        description="Number of nodes (pods) in the gang. The one trainer field that may change "
        "on a running job: a resize (the gang checkpoints and restarts at the new size).",
    )
    gpus: Optional[Union[int, str]] = Field(
        None,
        description="1.x: GPUs per node as a count or device indices (\"0,1\"). "
        "Implies accelerator gpu.",
        json_schema_extra=_DEVICES_SCHEMA,
    )
    devices: Optional[Union[int, str]] = Field(
        None,
        description="Processes (devices) per node: a count, \"auto\" or indices (\"0,1\").",
        json_schema_extra=_DEVICES_SCHEMA,
    )
    accelerator: Optional[Accelerator] = Field(
        None,
        description="cpu, gpu (cuda) or auto; the 1.x strategy names ddp, ddp_cpu, dp "
        "and ddp2 are accepted with their 1.x meaning.",
    )
    strategy: Optional[Strategy] = Field(None, description="Distributed strategy.")
    num_processes: Optional[int] = Field(
        None, ge=1, le=MAX_PROCESSES_PER_NODE,
        description="1.x: CPU processes per node (with ddp_cpu).",
    )
    precision: Optional[Union[int, str]] = Field(
        None,
        description="Numerical precision, a number (16) or a string (\"bf16-mixed\").",
        json_schema_extra={
            **INT_OR_STRING,
            "maxLength": 16,
            # A rule, not an enum: the API server's enum message would list 16 and "16" apart.
            "x-kubernetes-validations": [
                cel("string(self) in [" + ", ".join(f"'{name}'" for name in PRECISION_NAMES) + "]",
                    "must be one of " + ", ".join(PRECISION_NAMES)),
            ],
        },
    )
    compile: Optional[Literal["off", "on", "cudagraphs"]] = Field(
        None,
        description="Trainer(compile=...): on compiles the whole training step with torch.compile "
        "(eager, with the reason logged, when the step cannot be captured); cudagraphs replays "
        "it from one CUDA graph (GPU only, static shapes); off (the default) runs it eagerly.",
    )
    max_epochs: Optional[int] = Field(None, ge=-1, description="-1 trains until stopped.")
    min_epochs: Optional[int] = Field(None, ge=0)
    max_steps: Optional[int] = Field(None, ge=-1, description="-1 means no step limit.")
    min_steps: Optional[int] = Field(None, ge=0)
    max_time: Optional[str] = Field(
        None,
        pattern=r"^[0-9]{1,3}:([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]$",
        description="Wall-clock limit DD:HH:MM:SS (hours 00-23, minutes and seconds 00-59).",
        max_length=12,
    )
    accumulate_grad_batches: Optional[int] = Field(None, ge=1, le=65536)
    gradient_clip_val: Optional[float] = Field(None, ge=0)
    gradient_clip_algorithm: Optional[Literal["norm", "value"]] = None
    val_check_interval: Optional[Union[int, float]] = Field(
        None,
        description="Whole number: validate every N training batches; "
        "fraction in (0, 1): that part of an epoch.",
        json_schema_extra={"x-kubernetes-validations": [_COUNT_OR_FRACTION_RULE]},
    )
    check_val_every_n_epoch: Optional[int] = Field(None, ge=1)
    limit_train_batches: Optional[Union[int, float]] = Field(
        None,
        description="Whole number: batches per epoch; fraction in (0, 1): part of the data.",
        json_schema_extra={"x-kubernetes-validations": [_COUNT_OR_FRACTION_RULE]},
    )
    limit_val_batches: Optional[Union[int, float]] = Field(
        None, json_schema_extra={"x-kubernetes-validations": [_COUNT_OR_FRACTION_RULE]}
    )
    limit_test_batches: Optional[Union[int, float]] = Field(
        None, json_schema_extra={"x-kubernetes-validations": [_COUNT_OR_FRACTION_RULE]}
    )
    log_every_n_steps: Optional[int] = Field(None, ge=1)
    num_sanity_val_steps: Optional[int] = Field(None, ge=-1)
    deterministic: Optional[bool] = None
    benchmark: Optional[bool] = None
    sync_batchnorm: Optional[bool] = None
    amp_level: Optional[Literal["O0", "O1", "O2", "O3"]] = Field(
        None, description=(
            "1.x apex opt level. As in Lightning 1.x it applies only to amp_backend 'apex', which the "
            "engine refuses; with native AMP it is ignored (logged). Set precision instead."
        )
    )
    extra: TrainerExtra = Field(
        default_factory=TrainerExtra,
        description="Other Trainer arguments by their snake_case name, typed.",
    )

    @field_validator("gpus", "devices")
    @classmethod
    def _check_device_value(cls, value: Any, info: Any) -> Any:
        _device_count(value, f"trainer.{to_camel(info.field_name)}")
        return value

    @field_validator("precision")
    @classmethod
    def _check_precision(cls, value: Any) -> Any:
        if value is not None and value not in PRECISIONS:
            raise ValueError(f"trainer.precision {value!r} is not one of {', '.join(PRECISION_NAMES)}")
        return value

    @field_validator("val_check_interval", "limit_train_batches", "limit_val_batches",
                     "limit_test_batches")
    @classmethod
    def _check_batches(cls, value: Any, info: Any) -> Any:
        return _batches(value, f"trainer.{to_camel(info.field_name)}")

    @model_validator(mode="after")
    def _check_combinations(self) -> "TrainerSettings":
        if self.gpus is not None and self.devices is not None:
            raise ValueError("set trainer.gpus or trainer.devices, not both")
        if (
            self.min_epochs is not None
            and self.max_epochs not in (None, -1)
            and self.min_epochs > self.max_epochs
        ):
            raise ValueError("trainer.minEpochs must not exceed trainer.maxEpochs")
        if self.num_nodes > 1 and self.strategy in ("dp", "single_device", "ddp_spawn"):
            raise ValueError(
                "trainer.strategy dp, ddp_spawn and single_device run on one node only"
            )
        gpus_asked = self.gpus is not None and _device_count(self.gpus, "trainer.gpus") != 0
        if gpus_asked and self.accelerator in ("cpu", "ddp_cpu"):
            raise ValueError(
                "trainer.gpus asks for GPUs but trainer.accelerator runs on CPU: set one of them"
            )
        return self

    # -- what the operator derives from the settings ------------------------

    def uses_gpu(self, gpu_limit: Optional[int] = None) -> bool:
        """Whether the pods run on GPUs (this decides the nvidia.com/gpu request)."""
        if self.gpus is not None and _device_count(self.gpus, "trainer.gpus") != 0:
            return True
        if self.accelerator in ("gpu", "cuda", "dp", "ddp2"):
            return True
        if self.accelerator == "ddp" and self.gpus is not None:
            return True
        if self.accelerator == "auto" or self.accelerator is None:
            return bool(gpu_limit)
        return False

    def processes_per_node(self, gpu_limit: Optional[int] = None) -> int:
        """Processes `volt-run` starts on each node (WORLD_SIZE = this x numNodes)."""
        for field in ("gpus", "devices"):
            count = _device_count(getattr(self, field), f"trainer.{field}")
            if count:
                return count
        if self.num_processes:
            return self.num_processes
        if self.uses_gpu(gpu_limit) and gpu_limit:
            return gpu_limit
        return 1

    def to_trainer_kwargs(self, gpu_limit: Optional[int] = None) -> Dict[str, Any]:
        """Lightning Trainer kwargs (snake_case), normalised so that the engine
        starts exactly the processes the operator counted in WORLD_SIZE."""
        skip = {"gpus", "devices", "accelerator", "strategy", "num_processes", "extra"}
        kwargs: Dict[str, Any] = {
            name: value
            for name, value in self.model_dump(exclude_none=True).items()
            if name not in skip
        }
        gpu = self.uses_gpu(gpu_limit)
        nproc = self.processes_per_node(gpu_limit)
        kwargs["accelerator"] = "gpu" if gpu else "cpu"
        kwargs["devices"] = nproc
        strategy = self.strategy
        if self.accelerator in LEGACY_STRATEGY_ACCELERATORS and strategy is None:
            strategy = self.accelerator
        if strategy == "ddp_cpu":
            strategy = "ddp"
        if strategy is None and nproc * self.num_nodes > 1:
            strategy = "ddp"
        if strategy is not None:
            kwargs["strategy"] = strategy
        if self.compile is not None:  # the engine's argument: False, True or "cudagraphs"
            kwargs["compile"] = {"off": False, "on": True}.get(self.compile, self.compile)
        kwargs.update(self.extra.model_dump(exclude_none=True))
        return kwargs


# --------------------------------------------------------------------------
# Pod-level pieces
# --------------------------------------------------------------------------

# Set by the operator on every pod (builders.build_env); a TrainingJob may not
# set them itself. RANK and LOCAL_RANK are per process (volt-run sets them).
RESERVED_ENV = (
    "MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "NUM_NODES", "WORLD_SIZE",
    "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
    "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "PET_MASTER_ADDR",
    "PET_MASTER_PORT", "VOLT_JOB_NAME", "VOLT_JOB_UID", "VOLT_ATTEMPT", "VOLT_TRAINER",
    "VOLT_CHECKPOINT_DIR", "VOLT_RESUME", "VOLT_RESUME_ANY_JOB", "VOLT_METRICS_PORT",
    "VOLT_CHECKPOINT_EVERY_N_STEPS", "VOLT_CHECKPOINT_KEEP_LAST", "VOLT_RENDEZVOUS_TIMEOUT",
    "VOLT_GRACE_PERIOD_S", "VOLT_TERMINATION_MESSAGE_PATH",
)
# What the operator names in every pod; a TrainingJob's template may not reuse them.
CHECKPOINT_VOLUME = "volt-checkpoints"
RESERVED_LABELS = ("volt.dev/job", "volt.dev/node-rank", "volt.dev/attempt", "volt.dev/capacity-probe")
RESERVED_ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")


def _cel_list(items: Tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{k}'" for k in items) + "]"


_ENV_LIST_SCHEMA = {
    "x-kubernetes-validations": [
        cel(
            f"self.all(e, !(e.name in {_cel_list(RESERVED_ENV)}))",
            "env may not set the variables the operator sets: " + ", ".join(RESERVED_ENV),
        )
    ]
}


def _check_env_names(env: List["EnvVar"], field: str) -> List["EnvVar"]:
    for var in env:
        if var.name in RESERVED_ENV:
            raise ValueError(
                f"{field}: {var.name} is set by the operator and may not be overridden"
            )
    return env


# A ".." segment escapes the directory it is joined to.
_DOTDOT_CEL = "matches('(^|/)[.][.](/|$)')"
_DOTDOT = re.compile(r"(^|/)\.\.(/|$)")


class EnvVar(_Model):
    """A container environment variable (Kubernetes EnvVar)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.value) && has(self.valueFrom))",
                    "an env entry sets value or valueFrom, not both",
                    ".valueFrom",
                )
            ]
        }
    )

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=ENV_NAME_PATTERN,
        description="Letters, digits, '_', '-' and '.', not starting with a digit.",
    )
    value: Optional[str] = Field(None, max_length=32768)
    value_from: Optional[Dict[str, Any]] = Field(
        None, description="Kubernetes EnvVarSource.", json_schema_extra=PRESERVE
    )

    @model_validator(mode="after")
    def _one_source(self) -> "EnvVar":
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: set value or valueFrom, not both")
        return self


_QUANTITY_MAP = {
    "maxProperties": 32,
    "additionalProperties": {**INT_OR_STRING, "maxLength": 64},
    "x-kubernetes-validations": [
        cel(
            "self.all(k, isQuantity(string(self[k])))",
            "values must be Kubernetes quantities such as 500m, 2Gi or 4",
        ),
        cel(
            "!('nvidia.com/gpu' in self) || string(self['nvidia.com/gpu']).matches('^[0-9]+$')",
            "nvidia.com/gpu must be a whole number",
        ),
    ],
}


class ResourceRequirements(_Model):
    """Per-node (per-pod) compute resources; the GPU request follows the trainer."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.requests) || !has(self.limits) || self.requests.all(k, "
                    "!(k in self.limits) || !isQuantity(string(self.requests[k])) "
                    "|| !isQuantity(string(self.limits[k])) || "
                    "quantity(string(self.requests[k])).compareTo("
                    "quantity(string(self.limits[k]))) <= 0)",
                    "spec.resources.requests may not exceed spec.resources.limits",
                    ".requests",
                ),
            ]
        }
    )

    limits: Dict[str, Union[int, str]] = Field(
        default_factory=dict, json_schema_extra=_QUANTITY_MAP
    )
    requests: Dict[str, Union[int, str]] = Field(
        default_factory=dict, json_schema_extra=_QUANTITY_MAP
    )

    def gpu_limit(self) -> Optional[int]:
        """The nvidia.com/gpu amount the user set, if any."""
        for source in (self.limits, self.requests):
            if "nvidia.com/gpu" in source:
                return int(source["nvidia.com/gpu"])
        return None

    @field_validator("limits", "requests")
    @classmethod
    def _check_quantities(cls, value: Dict[str, Union[int, str]], info: Any) -> Any:
        for key, amount in value.items():
            try:
                parse_quantity(amount)
            except ValueError:
                raise ValueError(
                    f"resources.{info.field_name}.{key}: {amount!r} is not a Kubernetes "
                    "quantity such as 500m, 2Gi or 4"
                ) from None
        gpu = value.get("nvidia.com/gpu")
        if gpu is not None and not str(gpu).isdigit():
            raise ValueError(
                f"resources.{info.field_name}.nvidia.com/gpu must be a whole number, got {gpu!r}"
            )
        return value

    @model_validator(mode="after")
    def _requests_within_limits(self) -> "ResourceRequirements":
        for key, amount in self.requests.items():
            if key in self.limits and parse_quantity(amount) > parse_quantity(self.limits[key]):
                raise ValueError(
                    f"spec.resources.requests may not exceed spec.resources.limits: "
                    f"{key} {amount} > {self.limits[key]}"
                )
        return self


class CheckpointSpec(_Model):
    """Where the engine writes checkpoints: a PersistentVolumeClaim every node mounts."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!self.path.matches('^/+$') && !self.path." + _DOTDOT_CEL,
                    "spec.checkpoint.path must be a directory below / without '..'",
                    ".path",
                )
            ]
        }
    )

    claim_name: str = Field(
        min_length=1, max_length=253, description="PersistentVolumeClaim to mount."
    )
    path: str = Field(
        "/checkpoints",
        pattern=r"^/",
        max_length=1024,
        description="Mount path; the job writes under <path>/<job name>.",
    )
    every_n_steps: Optional[int] = Field(
        None, ge=1, description="Save every N optimizer steps (besides epoch ends)."
    )
    keep_last: int = Field(
        3, ge=1, le=1000,
        description="Checkpoints kept in the job's directory (older ones are deleted).",
    )
    allow_foreign_checkpoints: bool = Field(
        False,
        description="Resume from checkpoints that another TrainingJob wrote in the same "
        "directory (e.g. a deleted job of the same name). Off: the engine refuses them, so a "
        "recreated job never continues a stranger's run.",
    )

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.strip("/") or _DOTDOT.search(value):
            raise ValueError(
                f"spec.checkpoint.path must be a directory below / without '..', got {value!r}"
            )
        return value


class ExitCodeMatch(_Model):
    """Match on the container exit code, as Kubernetes podFailurePolicy does."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.operator != 'In' || !(0 in self.values)",
                    "onExitCodes: exit code 0 means success and cannot be matched with "
                    "operator In",
                    ".values",
                )
            ]
        }
    )

    operator: Literal["In", "NotIn"] = "In"
    values: List[int] = Field(
        min_length=1,
        max_length=255,
        json_schema_extra={
            "items": {"type": "integer", "minimum": 0, "maximum": 255},
            "x-kubernetes-list-type": "set",
        },
    )

    @model_validator(mode="after")
    def _check_values(self) -> "ExitCodeMatch":
        bad = [v for v in self.values if not 0 <= v <= 255]
        if bad:
            raise ValueError(f"onExitCodes.values must be exit codes 0-255, got {bad}")
        if len(set(self.values)) != len(self.values):
            raise ValueError("onExitCodes.values has a duplicate exit code")
        if self.operator == "In" and 0 in self.values:
            raise ValueError(
                "onExitCodes: exit code 0 means success and cannot be matched with operator In"
            )
        return self


class FailureRule(_Model):
    """A failure-policy rule; the first matching rule decides."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.onExitCodes) != has(self.onReasons)",
                    "a failurePolicy rule needs exactly one of onExitCodes or onReasons",
                )
            ]
        }
    )

    action: Literal["FailJob", "RestartGang", "RestartGangIgnoreBudget"]
    on_exit_codes: Optional[ExitCodeMatch] = None
    on_reasons: Optional[List[str]] = Field(
        None,
        min_length=1,
        max_length=16,
        description="Pod/container reasons, e.g. OOMKilled, Evicted, Preempted, Error.",
        json_schema_extra={"items": {"type": "string", "minLength": 1, "maxLength": 128}},
    )

    @model_validator(mode="after")
    def _one_match(self) -> "FailureRule":
        if (self.on_exit_codes is None) == (self.on_reasons is None):
            raise ValueError(
                "a failurePolicy rule needs exactly one of onExitCodes or onReasons"
            )
        return self


DEFAULT_STALL_TIMEOUT_SECONDS = 1800


class FailurePolicy(_Model):
    """How the gang restarts after a pod fails."""

    max_restarts: int = Field(
        3, ge=0, le=1000, description="Gang restarts that spend the budget before Failed."
    )
    max_free_restarts: int = Field(
        20, ge=0, le=10000,
        description="Restarts that do not spend maxRestarts (preemption, eviction, exit 75 "
        "after a checkpoint on SIGTERM); past this many the job fails with "
        "FreeRestartLimitExceeded, so a flapping node cannot loop forever.",
    )
    backoff_seconds: int = Field(
        10, ge=0, le=3600, description="Base delay before a restart; doubles each time."
    )
    stall_timeout_seconds: int = Field(
        DEFAULT_STALL_TIMEOUT_SECONDS, ge=0, le=7 * 86400,
        description="Restart the gang (condition Stalled, spends the budget) when rank 0 has "
        "made no optimizer step for this long while Running, counted from this attempt's last "
        "step (a restarted gang gets rendezvous.timeoutSeconds more to reach its first step), "
        "or when the gang has not become Ready this long after its pods were created. "
        "0 turns it off.",
    )
    rules: List[FailureRule] = Field(default_factory=list, max_length=32)


class RendezvousSpec(_Model):
    port: int = Field(29500, ge=1, le=65535, description="MASTER_PORT on node 0.")
    timeout_seconds: int = Field(
        600, ge=1, le=86400, description="How long nodes wait for each other."
    )


class MetricsSpec(_Model):
    port: int = Field(
        9090, ge=1, le=65535,
        description="Engine Prometheus/progress port; local rank L serves on port + L.",
    )


#: The trainer container's memory-backed /dev/shm (docs/operator.md, Shared memory).
SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"


class SharedMemorySpec(_Model):
    """The trainer container's /dev/shm: an emptyDir with medium Memory.

    Container runtimes give /dev/shm 64 MiB; DataLoader workers hand batches to
    the training process through it and fail with "Bus error" or "No space left on
    device" beyond that. A volume of spec.template named dshm, or one mounted at
    /dev/shm, replaces this one.
    """

    size_limit: Optional[Union[int, str]] = Field(
        None,
        description="Size limit of /dev/shm, a quantity such as 2Gi. Default: half of "
        "resources.limits.memory; without a memory limit, none (the node's memory bounds it). "
        "What is written there counts as the container's memory.",
        json_schema_extra={
            **INT_OR_STRING,
            "maxLength": 64,
            "x-kubernetes-validations": [
                cel("isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))",
                    "must be a Kubernetes quantity above 0, such as 512Mi or 2Gi"),
            ],
        },
    )

    @field_validator("size_limit")
    @classmethod
    def _check_size_limit(cls, value: Union[int, str, None]) -> Union[int, str, None]:
        if value is None:
            return value
        try:
            amount = parse_quantity(value)
        except ValueError:
            amount = None
        if amount is None or amount <= 0 or isinstance(value, bool):
            raise ValueError(
                f"spec.sharedMemory.sizeLimit: {value!r} is not a Kubernetes quantity above 0, "
                "such as 512Mi or 2Gi"
            )
        return value


class Toleration(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.tolerationSeconds) || (has(self.effect) "
                    "&& self.effect == 'NoExecute')",
                    "tolerationSeconds needs effect NoExecute",
                    ".tolerationSeconds",
                ),
                cel(
                    "!has(self.operator) || self.operator != 'Exists' || !has(self.value) "
                    "|| self.value == ''",
                    "a toleration with operator Exists has no value",
                    ".value",
                ),
                cel(
                    "(has(self.key) && self.key != '') || (has(self.operator) "
                    "&& self.operator == 'Exists')",
                    "a toleration without a key needs operator Exists",
                    ".operator",
                ),
            ]
        }
    )

    key: Optional[str] = Field(None, max_length=317)
    operator: Optional[Literal["Exists", "Equal"]] = None
    value: Optional[str] = Field(None, max_length=253)
    effect: Optional[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]] = None
    toleration_seconds: Optional[int] = None

    @model_validator(mode="after")
    def _check(self) -> "Toleration":
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("template.tolerations: tolerationSeconds needs effect NoExecute")
        if self.operator == "Exists" and self.value:
            raise ValueError("template.tolerations: a toleration with operator Exists has no value")
        if not self.key and self.operator != "Exists":
            raise ValueError(
                "template.tolerations: a toleration without a key needs operator Exists"
            )
        return self


class VolumeMount(_Model):
    name: str = Field(min_length=1, max_length=253)
    mount_path: str = Field(min_length=1, max_length=1024, pattern=r"^/")
    read_only: Optional[bool] = None
    sub_path: Optional[str] = Field(None, max_length=1024)


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Volume(_Model):
    """A Kubernetes Volume: `name` plus one volume source, passed through."""

    model_config = ConfigDict(extra="allow", json_schema_extra=PRESERVE)

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=_DNS_LABEL,
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self != '{CHECKPOINT_VOLUME}'",
                    f"{CHECKPOINT_VOLUME} is the checkpoint volume's name; use another",
                )
            ]
        },
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value == CHECKPOINT_VOLUME:
            raise ValueError(
                f"template.volumes: {CHECKPOINT_VOLUME} is the checkpoint volume's name; "
                "use another"
            )
        return value


class PodTemplateOverlay(_Model):
    """Merged into every node pod; lists are appended, maps are merged."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.volumeMounts) || self.volumeMounts.all(m, "
                    "self.volumeMounts.exists_one(n, n.mountPath == m.mountPath))",
                    "spec.template.volumeMounts: each mountPath may be used once",
                    ".volumeMounts",
                ),
            ]
        }
    )

    labels: Dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra={
            "maxProperties": 64,
            "x-kubernetes-validations": [
                cel(
                    f"self.all(k, !(k in {_cel_list(RESERVED_LABELS)}))",
                    "the operator sets the labels " + ", ".join(RESERVED_LABELS),
                )
            ],
        },
    )
    annotations: Dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra={
            "maxProperties": 64,
            "x-kubernetes-validations": [
                cel(
                    f"self.all(k, !(k in {_cel_list(RESERVED_ANNOTATIONS)}))",
                    "the operator sets the annotations " + ", ".join(RESERVED_ANNOTATIONS),
                )
            ],
        },
    )
    node_selector: Dict[str, str] = Field(
        default_factory=dict, json_schema_extra={"maxProperties": 64}
    )
    tolerations: List[Toleration] = Field(default_factory=list, max_length=64)
    affinity: Optional[Dict[str, Any]] = Field(
        None, description="Kubernetes Affinity.", json_schema_extra=PRESERVE
    )
    priority_class_name: Optional[str] = Field(None, max_length=253)
    scheduler_name: Optional[str] = Field(None, max_length=253)
    service_account_name: Optional[str] = Field(None, max_length=253)
    security_context: Optional[Dict[str, Any]] = Field(
        None,
        description="Kubernetes PodSecurityContext; each key replaces the operator's default "
        "(runAsNonRoot, runAsUser/runAsGroup/fsGroup 1000, seccompProfile RuntimeDefault).",
        json_schema_extra=PRESERVE,
    )
    container_security_context: Optional[Dict[str, Any]] = Field(
        None,
        description="Kubernetes SecurityContext of the trainer container; each key replaces "
        "the operator's default (allowPrivilegeEscalation false, capabilities.drop [ALL]).",
        json_schema_extra=PRESERVE,
    )
    image_pull_secrets: List[str] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"items": {"type": "string", "maxLength": 253}},
    )
    volumes: List[Volume] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
        },
    )
    volume_mounts: List[VolumeMount] = Field(default_factory=list, max_length=64)
    env: List[EnvVar] = Field(
        default_factory=list, max_length=256, json_schema_extra=_ENV_LIST_SCHEMA
    )

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: List[EnvVar]) -> List[EnvVar]:
        return _check_env_names(value, "spec.template.env")

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, value: Dict[str, str]) -> Dict[str, str]:
        taken = sorted(set(value) & set(RESERVED_LABELS))
        if taken:
            raise ValueError(f"spec.template.labels: the operator sets {', '.join(taken)}")
        return value

    @field_validator("annotations")
    @classmethod
    def _check_annotations(cls, value: Dict[str, str]) -> Dict[str, str]:
        taken = sorted(set(value) & set(RESERVED_ANNOTATIONS))
        if taken:
            raise ValueError(f"spec.template.annotations: the operator sets {', '.join(taken)}")
        return value

    @model_validator(mode="after")
    def _check_volumes(self) -> "PodTemplateOverlay":
        names = [v.name for v in self.volumes]
        if len(set(names)) != len(names):
            raise ValueError("spec.template.volumes: each volume name may be used once")
        paths = [m.mount_path for m in self.volume_mounts]
        if len(set(paths)) != len(paths):
            raise ValueError("spec.template.volumeMounts: each mountPath may be used once")
        return self


# --------------------------------------------------------------------------
# The spec
# --------------------------------------------------------------------------

# Spec fields that may change after creation (everything else is immutable).
MUTABLE_SPEC_FIELDS = ("suspend", "activeDeadlineSeconds", "ttlSecondsAfterFinished")
# Inside spec.trainer only the gang's size may change: a change is a resize
# (checkpoint on SIGTERM, a new gang at the new size resumes; docs/operator.md).
MUTABLE_TRAINER_FIELDS = ("numNodes",)
DEFAULT_SHRINK_AFTER_SECONDS = 300


class ElasticSpec(_Model):
    """Let the gang run with fewer nodes than spec.trainer.numNodes when they cannot be had."""

    min_nodes: int = Field(
        ge=1, le=MAX_NODES,
        description="Never shrink below this many nodes (1 <= minNodes <= trainer.numNodes).",
    )
    max_nodes: Optional[int] = Field(
        None, ge=1, le=MAX_NODES,
        description="trainer.numNodes may not be set (or patched) above this.",
    )
    shrink_after_seconds: int = Field(
        DEFAULT_SHRINK_AFTER_SECONDS, ge=1, le=7 * 86400,
        description="How long a node pod may stay unschedulable (no node fits it: capacity is "
        "short, or its node was lost or cordoned) before the gang restarts with the nodes that "
        "fit, not below minNodes. The restart checkpoints first and spends no restart budget.",
    )


class TrainingJobSpec(_Model):
    """Desired state of a TrainingJob."""

    image: str = Field(min_length=1, max_length=1024, description="Trainer image.")
    image_pull_policy: Optional[Literal["Always", "IfNotPresent", "Never"]] = None
    command: List[str] = Field(
        min_length=1,
        max_length=64,
        description="Training command; each node runs it under `volt-run`.",
        json_schema_extra={"items": {"type": "string", "maxLength": 4096}},
    )
    args: List[str] = Field(
        default_factory=list,
        max_length=256,
        json_schema_extra={"items": {"type": "string", "maxLength": 4096}},
    )
    env: List[EnvVar] = Field(
        default_factory=list, max_length=256, json_schema_extra=_ENV_LIST_SCHEMA
    )
    trainer: TrainerSettings = Field(
        default_factory=TrainerSettings, json_schema_extra=OBJECT_DEFAULT
    )
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, json_schema_extra=OBJECT_DEFAULT
    )
    checkpoint: Optional[CheckpointSpec] = None
    resume: Literal["Auto", "Never", "FromPath"] = Field(
        "Auto", description="Auto: continue from the latest checkpoint if any."
    )
    from_path: Optional[str] = Field(
        None,
        max_length=4096,
        pattern=r"^/",
        description="Absolute path of the checkpoint file to start from (resume: FromPath).",
    )
    failure_policy: FailurePolicy = Field(
        default_factory=FailurePolicy, json_schema_extra=OBJECT_DEFAULT
    )
    elastic: Optional[ElasticSpec] = Field(
        None,
        description="Shrink the gang, down to minNodes, when some of its pods cannot be "
        "scheduled (docs/operator.md, Elastic jobs).",
    )
    suspend: bool = Field(False, description="true deletes the pods and keeps the job.")
    active_deadline_seconds: Optional[int] = Field(
        None, ge=1, description="Fail the job when it has been running this long."
    )
    ttl_seconds_after_finished: Optional[int] = Field(
        None, ge=0, description="Delete the TrainingJob this long after it finished."
    )
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        "Running", description="Pods deleted when the job finishes."
    )
    termination_grace_period_seconds: int = Field(
        60, ge=0, le=3600, description="Time the engine has to checkpoint on SIGTERM."
    )
    rendezvous: RendezvousSpec = Field(
        default_factory=RendezvousSpec, json_schema_extra=OBJECT_DEFAULT
    )
    metrics: MetricsSpec = Field(default_factory=MetricsSpec, json_schema_extra=OBJECT_DEFAULT)
    shared_memory: SharedMemorySpec = Field(
        default_factory=SharedMemorySpec,
        description="The trainer container's memory-backed /dev/shm (DataLoader workers).",
        json_schema_extra=OBJECT_DEFAULT,
    )
    template: PodTemplateOverlay = Field(
        default_factory=PodTemplateOverlay, json_schema_extra=OBJECT_DEFAULT
    )

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: List[EnvVar]) -> List[EnvVar]:
        return _check_env_names(value, "spec.env")

    @model_validator(mode="after")
    def _check(self) -> "TrainingJobSpec":
        if self.resume == "FromPath" and not self.from_path:
            raise ValueError("spec.fromPath is required when spec.resume is FromPath")
        if self.from_path and self.resume != "FromPath":
            raise ValueError("spec.fromPath is only used with spec.resume: FromPath")
        if self.from_path and _DOTDOT.search(self.from_path):
            raise ValueError(f"spec.fromPath may not contain '..', got {self.from_path!r}")
        elastic, nodes = self.elastic, self.trainer.num_nodes
        if elastic is not None and elastic.min_nodes > nodes:
            raise ValueError(
                f"spec.elastic.minNodes ({elastic.min_nodes}) must not exceed "
                f"spec.trainer.numNodes ({nodes})"
            )
        if elastic is not None and elastic.max_nodes is not None and nodes > elastic.max_nodes:
            raise ValueError(
                f"spec.trainer.numNodes ({nodes}) must not exceed spec.elastic.maxNodes "
                f"({elastic.max_nodes})"
            )
        gpu_limit = self.resources.gpu_limit()
        wanted = self.trainer.processes_per_node(gpu_limit)
        if wanted > MAX_PROCESSES_PER_NODE:
            raise ValueError(
                f"spec.trainer (trainer.gpus, devices or numProcesses, or the nvidia.com/gpu "
                f"resource) asks for {wanted}: at most {MAX_PROCESSES_PER_NODE} processes per node"
            )
        metrics, rendezvous = self.metrics.port, self.rendezvous.port
        if metrics + wanted - 1 > 65535:
            raise ValueError(
                f"spec.metrics.port: local ranks serve on {metrics}..{metrics + wanted - 1}, "
                "beyond 65535"
            )
        if metrics <= rendezvous < metrics + wanted:
            raise ValueError(
                f"spec.rendezvous.port {rendezvous} is one of the per-rank metrics ports "
                f"spec.metrics.port..+{wanted - 1} ({metrics}..{metrics + wanted - 1})"
            )
        uses_gpu = self.trainer.uses_gpu(gpu_limit)
        if gpu_limit is not None and uses_gpu and gpu_limit != wanted:
            raise ValueError(
                f"spec.resources nvidia.com/gpu={gpu_limit} differs from the "
                f"{wanted} devices per node that spec.trainer asks for"
            )
        if gpu_limit and not uses_gpu:
            raise ValueError(
                f"spec.resources nvidia.com/gpu={gpu_limit} but spec.trainer runs on CPU "
                "(trainer.accelerator): set trainer.gpus or drop the GPU resource"
            )
        overlay = self.template
        volumes = {v.name for v in overlay.volumes}
        if self.checkpoint is not None:
            volumes.add(CHECKPOINT_VOLUME)
        for mount in overlay.volume_mounts:
            if mount.name not in volumes:
                raise ValueError(
                    f"spec.template.volumeMounts: {mount.name!r} names no volume in "
                    "spec.template.volumes"
                )
            if self.checkpoint is not None and mount.mount_path == self.checkpoint.path:
                raise ValueError(
                    f"spec.template.volumeMounts: {mount.mount_path} is spec.checkpoint.path"
                )
        return self

    def gpu_limit(self) -> Optional[int]:
        return self.resources.gpu_limit()

    def with_num_nodes(self, nodes: int) -> "TrainingJobSpec":
        """This spec for a gang of ``nodes`` (an elastic job may run below trainer.numNodes)."""
        if nodes == self.trainer.num_nodes:
            return self
        return self.model_copy(
            update={"trainer": self.trainer.model_copy(update={"num_nodes": nodes})}
        )

    def with_placement(
        self, node_selector: Mapping[str, str], tolerations: Sequence[Mapping[str, Any]],
        labels: Mapping[str, str], annotations: Mapping[str, str],
    ) -> "TrainingJobSpec":
        """This spec with the template's placement fields replaced by a scheduler's (Kueue's
        admission, which the caller merged with the template's own). The operator's own labels
        and annotations still win over these (the pod builder sets them last)."""
        template = self.template.model_copy(update={
            "node_selector": dict(node_selector),
            "tolerations": [Toleration.model_validate(t) for t in tolerations],
            "labels": dict(labels),
            "annotations": dict(annotations),
        })
        return self.model_copy(update={"template": template})

    def processes_per_node(self) -> int:
        return self.trainer.processes_per_node(self.gpu_limit())

    def gpus_per_node(self) -> int:
        """nvidia.com/gpu to request per pod (0 on CPU)."""
        if not self.trainer.uses_gpu(self.gpu_limit()):
            return 0
        return self.processes_per_node()


def _spec_schema_rules() -> List[Dict[str, str]]:
    nproc = _cel_processes_per_node("self")
    uses_gpu = _cel_uses_gpu("self")
    gpu_limit = _cel_gpu_limit("self")
    has_gpu_limit = (
        "((has(self.resources.limits) && 'nvidia.com/gpu' in self.resources.limits) || "
        "(has(self.resources.requests) && 'nvidia.com/gpu' in self.resources.requests))"
    )
    rules = [
        cel(
            "self.resume != 'FromPath' || has(self.fromPath)",
            "spec.fromPath is required when spec.resume is FromPath",
            ".fromPath",
        ),
        cel(
            "!has(self.fromPath) || self.resume == 'FromPath'",
            "spec.fromPath is only used with spec.resume: FromPath",
            ".fromPath",
        ),
        cel(
            "!has(self.fromPath) || !self.fromPath." + _DOTDOT_CEL,
            "spec.fromPath may not contain '..'",
            ".fromPath",
        ),
        cel(
            f"{nproc} <= {MAX_PROCESSES_PER_NODE}",
            "spec.trainer (trainer.gpus, devices or numProcesses, or the nvidia.com/gpu "
            f"resource) asks for too many: at most {MAX_PROCESSES_PER_NODE} processes per node",
            ".trainer",
        ),
        cel(
            f"self.metrics.port + {nproc} - 1 <= 65535",
            "spec.metrics.port: local rank L serves on spec.metrics.port + L, which must "
            "stay <= 65535",
            ".metrics.port",
        ),
        cel(
            f"self.rendezvous.port < self.metrics.port "
            f"|| self.rendezvous.port >= self.metrics.port + {nproc}",
            "spec.rendezvous.port must not be one of the per-rank metrics ports "
            "spec.metrics.port .. spec.metrics.port + processes per node - 1",
            ".rendezvous.port",
        ),
        cel(
            f"!{has_gpu_limit} || !{uses_gpu} || {gpu_limit} == {nproc}",
            "spec.resources nvidia.com/gpu differs from the devices per node that "
            "spec.trainer asks for",
            ".resources",
        ),
        cel(
            f"{gpu_limit} == 0 || {uses_gpu}",
            "spec.resources asks for nvidia.com/gpu but spec.trainer runs on CPU "
            "(trainer.accelerator): set trainer.gpus or drop the GPU resource",
            ".resources",
        ),
        cel(
            "!has(self.template.volumeMounts) || self.template.volumeMounts.all(m, "
            f"(has(self.checkpoint) && m.name == '{CHECKPOINT_VOLUME}') || "
            "(has(self.template.volumes) && self.template.volumes.exists(v, v.name == m.name)))",
            "spec.template.volumeMounts: each name must be a volume of spec.template.volumes "
            f"(or {CHECKPOINT_VOLUME} with spec.checkpoint)",
            ".template.volumeMounts",
        ),
        cel(
            "!has(self.checkpoint) || !has(self.template.volumeMounts) || "
            "self.template.volumeMounts.all(m, m.mountPath != self.checkpoint.path)",
            "spec.template.volumeMounts: a mountPath equals spec.checkpoint.path",
            ".template.volumeMounts",
        ),
    ]
    rules += [
        cel(
            "!has(self.elastic) || !has(self.trainer.numNodes) "
            "|| self.elastic.minNodes <= self.trainer.numNodes",
            "spec.elastic.minNodes must not exceed spec.trainer.numNodes",
            ".elastic.minNodes",
        ),
        cel(
            "!has(self.elastic) || !has(self.elastic.maxNodes) "
            "|| (has(self.trainer.numNodes) ? self.trainer.numNodes : 1) <= self.elastic.maxNodes",
            "spec.trainer.numNodes must not exceed spec.elastic.maxNodes",
            ".trainer.numNodes",
        ),
    ]
    for name, field in TrainerSettings.model_fields.items():
        alias = field.alias or name
        if alias in MUTABLE_TRAINER_FIELDS:
            continue
        now, before = f"self.trainer.{alias}", f"oldSelf.trainer.{alias}"
        rules.append(
            cel(
                f"has({now}) == has({before}) && (!has({now}) || {now} == {before})",
                f"spec.trainer.{alias} is immutable (in spec.trainer only "
                f"{', '.join(MUTABLE_TRAINER_FIELDS)} may change)",
                f".trainer.{alias}",
            )
        )
    for name, field in TrainingJobSpec.model_fields.items():
        alias = field.alias or name
        if alias in MUTABLE_SPEC_FIELDS or alias == "trainer":
            continue
        rules.append(
            cel(
                f"has(self.{alias}) == has(oldSelf.{alias}) && "
                f"(!has(self.{alias}) || self.{alias} == oldSelf.{alias})",
                f"spec.{alias} is immutable (only {', '.join(MUTABLE_SPEC_FIELDS)} "
                "and trainer.numNodes may change)",
                f".{alias}",
            )
        )
    return rules


TrainingJobSpec.model_config["json_schema_extra"] = {
    "x-kubernetes-validations": _spec_schema_rules()
}
TrainingJobSpec.model_rebuild(force=True)


# --------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------

Phase = Literal["Pending", "Queued", "Running", "Restarting", "Suspended", "Succeeded", "Failed"]
TERMINAL_PHASES = ("Succeeded", "Failed")


class Condition(_Model):
    """A Kubernetes-style condition (metav1.Condition)."""

    type: str = Field(max_length=64)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=128)
    message: str = Field("", max_length=4096)
    last_transition_time: str = Field(max_length=64)
    observed_generation: Optional[int] = None


class NodeCounts(_Model):
    desired: int = 0
    ready: int = 0
    active: int = 0
    succeeded: int = 0
    failed: int = 0


class FailureInfo(_Model):
    """The failure that caused the last gang restart or the job's failure."""

    pod: str
    rank: int
    exit_code: Optional[int] = None
    reason: str = ""
    message: str = Field("", max_length=4096)
    attempt: int = 0
    time: Optional[str] = None


class TrainingProgress(_Model):
    """Mirrored from rank 0's progress endpoint."""

    epoch: Optional[int] = None
    step: Optional[int] = None
    loss: Optional[float] = None
    progress: Optional[float] = None
    last_update: Optional[str] = Field(
        None,
        description="Time of the last optimizer step when the engine reports it "
        "(lastStepTime), else of the last progress read.",
    )
    last_step_time: Optional[str] = Field(
        None, description="Time of rank 0's last optimizer step, as the engine reports it."
    )
    steps_per_second: Optional[float] = Field(
        None, description="Optimizer steps per second between the last two progress reads that saw new steps."
    )
    samples_per_second: Optional[float] = Field(
        None, description="Training samples per second over the whole gang, as the engine measures it."
    )
    remaining_seconds: Optional[int] = Field(
        None,
        description="Estimated seconds to the end of training: the steps left (from maxSteps, else from "
        "progress and maxEpochs) at stepsPerSecond.",
    )
    eta: Optional[str] = Field(None, description="remainingSeconds as a duration (e.g. 1h05m), for kubectl get.")
    percent: Optional[str] = Field(None, description="progress as a percentage (e.g. 42%), for kubectl get.")


class CheckpointStatus(_Model):
    path: Optional[str] = None
    step: Optional[int] = None
    time: Optional[str] = None


class GrowBackStatus(_Model):
    """A shrunk elastic job probing for the room of its missing nodes; once every probe is
    bound it grows back at its next checkpoint (docs/operator.md, Elastic jobs)."""

    since: Optional[str] = Field(None, description="When the job started probing.")
    probes_bound_time: Optional[str] = Field(
        None, description="When every capacity probe was first seen bound to a node; unset "
        "while some wait for room.")
    checkpoint_step: Optional[int] = Field(
        None, description="status.checkpoint.step at probesBoundTime; a later step is the "
        "checkpoint the job grows back at.")


class TrainingJobStatus(_Model):
    """Observed state; written only by the operator."""

    model_config = ConfigDict(extra="ignore")

    phase: Optional[Phase] = None
    conditions: List[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: Optional[int] = None
    nodes: NodeCounts = Field(default_factory=NodeCounts)
    ready_nodes: str = Field("0/0", description="ready/desired, for kubectl get.")
    attempt: int = Field(0, description="Gang attempt; each gang restart adds one.")
    restarts: int = Field(0, description="Gang restarts so far (all causes).")
    restarts_counted: int = Field(0, description="Restarts that spent failurePolicy budget.")
    num_nodes: Optional[int] = Field(
        None,
        description="Nodes of the current gang: spec.trainer.numNodes, or fewer after an "
        "elastic shrink.",
    )
    requested_num_nodes: Optional[int] = Field(
        None,
        description="The spec.trainer.numNodes that numNodes answers to; a different one in the "
        "spec is a resize to do.",
    )
    resizes: int = Field(
        0, description="Gang restarts at another size (numNodes changed, elastic shrink or "
        "grow-back); not counted in restarts.",
    )
    grow_back: Optional[GrowBackStatus] = Field(
        None, description="Set while a shrunk elastic job keeps capacity probes for its "
        "missing nodes; once all are bound it grows back to spec.trainer.numNodes at its "
        "next checkpoint.",
    )
    create_refusals: int = Field(
        0,
        description="Pod creations the API server refused (invalid pod) since the gang last "
        "existed in full; the job fails after a few.",
    )
    backoff_until: Optional[str] = None
    pods_missing_since: Optional[str] = Field(
        None,
        description="When a pod of the running gang was first seen gone without its last "
        "state; its exit code is awaited a few seconds before it counts as deleted.",
    )
    last_failure: Optional[FailureInfo] = None
    start_time: Optional[str] = None
    completion_time: Optional[str] = None
    training: Optional[TrainingProgress] = None
    checkpoint: Optional[CheckpointStatus] = None


class TrainingJob(_Model):
    """The whole object, for tests and tools (the operator reads spec/status)."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["volt.dev/v1alpha1"] = API_VERSION
    kind: Literal["TrainingJob"] = KIND
    metadata: Dict[str, Any] = Field(default_factory=dict)
    spec: TrainingJobSpec
    status: TrainingJobStatus = Field(default_factory=TrainingJobStatus)


def describe_invalid_spec(exc: ValidationError) -> str:
    """A spec's validation errors for status and events: each names its field and
    says what is wrong, never echoing the value (an env value may be a secret).

    pydantic's own messages never contain the input; volt's validators (value
    errors) name fields and quote only settings such as devices or precision."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(p) for p in error["loc"] if p != "__root__")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "value_error" or not field:
            parts.append(message)
        else:
            parts.append(f"spec.{field}: {message}")
    return "; ".join(parts)


def parse_time(value: Optional[str]) -> Optional[datetime]:
    """RFC 3339 (as the API server writes it) to an aware datetime."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(value: datetime) -> str:
    """An aware datetime as RFC 3339 with a Z, to the second (metav1.Time)."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
