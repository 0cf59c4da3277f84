"""Trainer arguments: validate types and values, and map the 1.x names onto 2.x ones.

Everything here runs at ``Trainer(...)`` time, so a bad argument fails before
any data is touched, with an error that names the argument.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional, Sequence, Union

log = logging.getLogger(__name__)

Number = Union[int, float]

# 1.x ``accelerator=``/``distributed_backend=`` values that are really strategies.
LEGACY_STRATEGY_ACCELERATORS = ("ddp", "ddp_spawn", "ddp_cpu", "ddp2", "dp", "ddp_fork", "ddp_notebook")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


class ArgumentError(ValueError):
    """A Trainer argument has a bad value."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Trainer({name}=...) must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_int(name: str, value: Any, minimum: Optional[int] = 0, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if not _is_int(value):
        raise TypeError(f"Trainer({name}=...) must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"Trainer({name}={value}) must be >= {minimum}")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if value not in choices:
        raise ValueError(f"Trainer({name}={value!r}) must be one of {list(choices)}")
    return value


def parse_limit(name: str, value: Any, default: Number = 1.0) -> Number:
    """An int (a number of batches) or a float in [0, 1] (a fraction of the loader)."""
    if value is None:
        return default
    if _is_int(value):
        if value < 0:
            raise ValueError(f"Trainer({name}={value}) must be >= 0")
        return value
    if isinstance(value, float):
        if not 0.0 <= value <= 1.0:
            raise ValueError(
                f"Trainer({name}={value}) must be a fraction in [0.0, 1.0] or an int number of batches"
            )
        return value
    raise TypeError(f"Trainer({name}=...) must be an int or a float, got {type(value).__name__} {value!r}")


def parse_max_time(value: Any) -> Optional[timedelta]:
    """``"DD:HH:MM:SS"``, a timedelta, or a dict of timedelta keyword arguments."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        out = value
    elif isinstance(value, dict):
        try:
            out = timedelta(**value)
        except TypeError as err:
            raise ValueError(f"Trainer(max_time={value!r}): {err}") from None
    elif isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"Trainer(max_time={value!r}) must look like 'DD:HH:MM:SS', e.g. '00:12:00:00'")
        d, h, m, s = (int(p) for p in parts)
        out = timedelta(days=d, hours=h, minutes=m, seconds=s)
    else:
        raise TypeError(f"Trainer(max_time=...) must be 'DD:HH:MM:SS', a timedelta or a dict, got {type(value).__name__}")
    if out.total_seconds() <= 0:
        raise ValueError(f"Trainer(max_time={value!r}) must be a positive duration")
    return out


def parse_gpus(gpus: Any) -> Optional[Union[int, List[int]]]:
    """1.x ``gpus``: 0/None = CPU, n = n GPUs, -1 = all, "n" = GPU id n, "a,b"/[a, b] = those ids."""
    if gpus is None:
        return None
    if isinstance(gpus, bool):
        raise TypeError(f"Trainer(gpus=...) must be an int, str or list of ints, got bool {gpus!r}")
    if _is_int(gpus):
        if gpus < -1:
            raise ValueError(f"Trainer(gpus={gpus}) must be -1 (all), 0 (CPU) or a positive count")
        return gpus
    if isinstance(gpus, str):
        text = gpus.strip()
        if text == "-1":
            return -1
        ids = [p.strip() for p in text.split(",") if p.strip()]
        if not ids or not all(p.isdigit() for p in ids):
            raise ValueError(f"Trainer(gpus={gpus!r}): a string must list GPU ids like '0' or '0,1', or be '-1'")
        return [int(p) for p in ids]
    if isinstance(gpus, (list, tuple)):
        if not gpus or not all(_is_int(g) and g >= 0 for g in gpus):
            raise ValueError(f"Trainer(gpus={gpus!r}): a list must hold GPU ids (ints >= 0)")
        return list(gpus)
    raise TypeError(f"Trainer(gpus=...) must be an int, str or list of ints, got {type(gpus).__name__}")


def parse_devices(devices: Any) -> Union[str, int, List[int]]:
    """2.x ``devices``: "auto", a count, -1 (all), a list of ids, or a string of either."""
    if devices is None or devices == "auto":
        return "auto"
    if isinstance(devices, bool):
        raise TypeError(f"Trainer(devices=...) must be an int, str or list of ints, got bool {devices!r}")
    if _is_int(devices):
        if devices == 0 or devices < -1:
            raise ValueError(f"Trainer(devices={devices}) must be a positive count, -1 (all) or 'auto'")
        return devices
    if isinstance(devices, str):
        text = devices.strip()
        if text.lstrip("-").isdigit():
            return parse_devices(int(text))
        ids = [p.strip() for p in text.split(",") if p.strip()]
        if not ids or not all(p.isdigit() for p in ids):
            raise ValueError(f"Trainer(devices={devices!r}) must be 'auto', a count like '2' or ids like '0,1'")
        return [int(p) for p in ids]
    if isinstance(devices, (list, tuple)):
        if not devices or not all(_is_int(d) and d >= 0 for d in devices):
            raise ValueError(f"Trainer(devices={devices!r}): a list must hold device ids (ints >= 0)")
        return list(devices)
    raise TypeError(f"Trainer(devices=...) must be an int, str or list of ints, got {type(devices).__name__}")


@dataclass
class DeviceChoice:
    """Where to train: accelerator type, device ids on this node, nodes, strategy."""

    accelerator: str  # cpu | cuda | mps
    device_ids: List[int]
    num_nodes: int
    strategy: Any  # a name ("auto", "ddp", ...) or a Strategy instance
    legacy_note: Optional[str] = None

    @property
    def num_devices(self) -> int:
        return len(self.device_ids)


def choose_devices(
    accelerator: Any,
    strategy: Any,
    devices: Any,
    num_nodes: Any,
    gpus: Any,
    num_processes: Any,
    tpu_cores: Any,
    ipus: Any,
    distributed_backend: Any,
    auto_select_gpus: Any,
    cluster: Optional[Any] = None,
) -> DeviceChoice:
    """Resolve the 1.x and 2.x device arguments into one DeviceChoice.

    ``cluster`` (a ClusterEnvironment plugin) stands in for the launcher's environment variables.
    """
    import torch

    if tpu_cores is not None:
        raise ValueError(
            f"Trainer(tpu_cores={tpu_cores!r}): volt does not support TPUs; "
            "use accelerator='gpu' or 'cpu' with devices=N"
        )
    if ipus is not None:
        raise ValueError(f"Trainer(ipus={ipus!r}): volt does not support Graphcore IPUs; use accelerator='gpu' or 'cpu'")
    num_nodes = check_int("num_nodes", num_nodes, minimum=1)
    if auto_select_gpus is not None:
        check_bool("auto_select_gpus", auto_select_gpus)
    note = None
    if accelerator is None:
        accelerator = "auto"
    if not isinstance(accelerator, str):
        raise TypeError(f"Trainer(accelerator=...) must be a str, got {type(accelerator).__name__}")
    accelerator = accelerator.lower()
    for legacy_name, legacy in (("accelerator", accelerator), ("distributed_backend", distributed_backend)):
        if legacy in LEGACY_STRATEGY_ACCELERATORS:
            if strategy not in (None, "auto", legacy):
                raise ValueError(
                    f"Trainer({legacy_name}={legacy!r}) names a strategy (1.x) but strategy={strategy!r} "
                    "was also given; pass only strategy="
                )
            strategy = legacy
            note = f"Trainer({legacy_name}={legacy!r}) is the 1.x spelling of strategy={legacy!r}"
            if legacy_name == "accelerator":
                accelerator = "cpu" if legacy == "ddp_cpu" else "auto"
        elif legacy_name == "distributed_backend" and legacy is not None:
            raise ValueError(f"Trainer(distributed_backend={legacy!r}) must be one of {list(LEGACY_STRATEGY_ACCELERATORS)}")
    if accelerator in ("tpu", "ipu", "hpu"):
        raise ValueError(f"Trainer(accelerator={accelerator!r}): volt supports only 'cpu', 'gpu'/'cuda', 'mps' and 'auto'")
    check_choice("accelerator", accelerator, ACCELERATORS)
    if accelerator == "gpu":
        accelerator = "cuda"
    if strategy == "ddp_cpu":
        accelerator = "cpu"
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0

    parsed_gpus = parse_gpus(gpus)
    parsed_devices = parse_devices(devices)
    if parsed_gpus is not None and parsed_gpus != 0:
        if parsed_devices != "auto":
            raise ValueError(f"Trainer(gpus={gpus!r}) and Trainer(devices={devices!r}) both given; pass only devices=")
        if accelerator not in ("auto", "cuda"):
            raise ValueError(f"Trainer(gpus={gpus!r}) asks for GPUs but accelerator={accelerator!r}")
        accelerator, parsed_devices = "cuda", parsed_gpus
    elif parsed_gpus == 0 and accelerator == "auto":
        accelerator = "cpu"
    if num_processes is not None:
        num_processes = check_int("num_processes", num_processes, minimum=1)
        if num_processes > 1:
            if accelerator in ("cuda",):
                raise ValueError("Trainer(num_processes=...) is for CPU processes; use devices= with accelerator='gpu'")
            if parsed_devices != "auto":
                raise ValueError("Trainer(num_processes=...) and Trainer(devices=...) both given; pass only devices=")
            accelerator, parsed_devices = "cpu", num_processes

    if accelerator == "auto":
        if cuda_count:
            accelerator = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            accelerator = "mps"
        else:
            accelerator = "cpu"

    if auto_select_gpus and accelerator != "cuda":
        log.warning("Trainer(auto_select_gpus=True): training runs on %s (torch sees %d CUDA GPU(s)), so there are "
                    "no GPUs to select", accelerator, cuda_count)
    if accelerator == "cuda":
        if not cuda_count:
            raise ValueError(
                f"Trainer asks for CUDA GPUs (accelerator/gpus/devices) but torch sees none; "
                "use accelerator='cpu' or run on a machine with a GPU"
            )
        if parsed_devices in ("auto", -1):
            ids = list(range(cuda_count))
            if auto_select_gpus:
                log.info("Trainer(auto_select_gpus=True): every visible GPU is used (%s)", ids)
        elif isinstance(parsed_devices, int):
            if parsed_devices > cuda_count:
                raise ValueError(f"Trainer asks for {parsed_devices} GPUs but only {cuda_count} are visible")
            ids = list(range(parsed_devices))
            if auto_select_gpus:
                ids = _auto_select(parsed_devices, cluster)
        else:
            bad = [i for i in parsed_devices if i >= cuda_count]
            if bad:
                raise ValueError(f"Trainer asks for GPU ids {bad} but only {cuda_count} GPUs are visible")
            ids = list(parsed_devices)
            if auto_select_gpus:
                log.info("Trainer(auto_select_gpus=True): the GPU ids %s are given, nothing to select", ids)
    elif accelerator == "mps":
        if parsed_devices not in ("auto", 1, -1, [0]):
            raise ValueError("accelerator='mps' supports one device")
        ids = [0]
    else:
        if isinstance(parsed_devices, list):
            raise ValueError(f"Trainer(devices={devices!r}): CPU devices are a count, not ids")
        # Under volt-run/torchrun, "auto" means the processes the launcher started on this node.
        if parsed_devices not in ("auto", -1):
            count = parsed_devices
        elif cluster is not None:
            count = cluster.local_world_size if cluster.launched else 1
        else:
            count = launched_local_world_size()
        ids = list(range(count))  # CPU "devices" are processes
    if strategy is None:
        strategy = "auto"
    if isinstance(strategy, str):
        strategy = strategy.lower()
    return DeviceChoice(accelerator, ids, num_nodes, strategy, note)


def free_gpus(count: int) -> List[int]:
    """The ``count`` GPUs with the most free memory (``torch.cuda.mem_get_info``), in index order.

    A GPU whose memory cannot be queried (taken by another process in exclusive mode) is not free.
    Querying opens a CUDA context on every visible GPU, which is why this runs only when asked.
    """
    import torch

    free: List[tuple] = []
    for index in range(torch.cuda.device_count()):
        try:
            free_bytes, _total = torch.cuda.mem_get_info(index)
        except RuntimeError as err:
            log.info("auto_select_gpus: GPU %d is not available (%s)", index, err)
            continue
        free.append((-free_bytes, index))
    if len(free) < count:
        raise ValueError(f"Trainer(auto_select_gpus=True) needs {count} free GPU(s) but only {len(free)} of "
                         f"{torch.cuda.device_count()} can be used")
    return sorted(index for _, index in sorted(free)[:count])


def _auto_select(count: int, cluster: Optional[Any]) -> List[int]:
    launched = (cluster.world_size if cluster is not None and cluster.launched else launched_world_size()) > 1
    if launched:
        # Each rank would pick on its own, from memory figures that change between the picks:
        # two ranks could choose the same GPU. A launcher's ranks take the GPUs in order.
        log.warning("Trainer(auto_select_gpus=True) is not applied under a launcher (volt-run, torchrun): every "
                    "rank must use the same GPU list, so GPUs 0..%d are used", count - 1)
        return list(range(count))
    ids = free_gpus(count)
    log.info("Trainer(auto_select_gpus=True) selected GPU(s) %s (most free memory)", ids)
    return ids


@dataclass
class PluginChoice:
    """``Trainer(plugins=...)`` sorted by kind; None where not given."""

    precision: Optional[Any] = None  # volt.plugins.Precision
    checkpoint_io: Optional[Any] = None  # volt.plugins.CheckpointIO
    cluster_environment: Optional[Any] = None  # volt.plugins.ClusterEnvironment
    strategy: Optional[str] = None  # a 1.x DDP strategy name


PLUGINS_ACCEPTED = (
    "a volt.plugins.Precision, CheckpointIO or ClusterEnvironment instance, or a DDP strategy name "
    "(1.x, e.g. 'ddp_find_unused_parameters_true'); or a list with at most one of each"
)


def parse_plugins(plugins: Any) -> PluginChoice:
    """Sort ``plugins`` (one or a list) by kind; anything else, or two of a kind, raises naming ``plugins``."""
    from volt.plugins import CheckpointIO, ClusterEnvironment, Precision

    choice = PluginChoice()
    if plugins is None:
        return choice
    items = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    for plugin in items:
        if isinstance(plugin, Precision):
            slot = "precision"
        elif isinstance(plugin, CheckpointIO):
            slot = "checkpoint_io"
        elif isinstance(plugin, ClusterEnvironment):
            if not plugin.launched and plugin.world_size > 1:
                # volt-run would start the other processes from environment variables, not from this record
                raise ValueError(
                    f"Trainer(plugins=[ClusterEnvironment(launched=False, world_size={plugin.world_size})]): the plugin "
                    "describes a process of a world whose processes are already started; set launched=True, or let "
                    "volt-run start the processes from the environment (no plugin)"
                )
            slot = "cluster_environment"
        elif isinstance(plugin, str):
            from volt.strategies.ddp import normalize_strategy_name

            try:
                normalize_strategy_name(plugin)
            except ValueError:
                raise ValueError(f"Trainer(plugins={plugin!r}): not a plugin volt knows. Accepted: {PLUGINS_ACCEPTED}. "
                                 "Precision is also set with precision=, e.g. '16-mixed'") from None
            slot = "strategy"
        else:
            raise TypeError(f"Trainer(plugins=...) got {type(plugin).__name__} {plugin!r}. Accepted: {PLUGINS_ACCEPTED}")
        if getattr(choice, slot) is not None:
            raise ValueError(f"Trainer(plugins=...) holds two {slot} plugins ({getattr(choice, slot)!r} and "
                             f"{plugin!r}); pass at most one of each kind")
        setattr(choice, slot, plugin)
    return choice


def launched_world_size() -> int:
    """WORLD_SIZE set by volt-run/torchrun for this process (1 when not launched)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) if "RANK" in os.environ or "LOCAL_RANK" in os.environ else 1
    except ValueError:
        raise ValueError(f"environment WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


def launched_local_world_size() -> int:
    """Processes a launcher started on this node (1 when not launched)."""
    if launched_world_size() == 1:
        return 1
    from volt.cluster import cluster_environment

    return cluster_environment(os.environ).local_world_size
