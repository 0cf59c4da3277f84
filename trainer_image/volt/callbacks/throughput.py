"""ThroughputMonitor: batches, samples, items and FLOPs per second over a rolling window.

Metric names are Lightning's, prefixed with the stage (``train``, ``validate``,
``test``, ``predict``) and the separator (default ``/``):

* always: ``time`` (seconds since the stage started, validation excluded from
  training time), ``batches``, ``samples`` and, with ``length_fn``, ``lengths``;
* once the window holds ``window_size`` updates: ``device/batches_per_sec``,
  ``device/samples_per_sec``, ``device/items_per_sec`` (with ``length_fn``) and,
  with more than one process, ``batches_per_sec``, ``samples_per_sec``, ``items_per_sec``;
* when the LightningModule has ``flops_per_batch``: ``device/flops_per_sec``
  (``flops_per_sec`` across processes) and, on a GPU whose peak is known,
  ``device/mfu``.

One update is recorded per training batch and per evaluation batch (on global rank
0); training metrics are computed after an optimizer step on the trainer's logging
steps (``log_every_n_steps``), evaluation metrics on the evaluation loop's logging steps.

No host sync per step. Lightning calls ``torch.cuda.synchronize()`` after every
batch to time it; here each batch's timestamp on CUDA is an event recorded on the
current stream, and events become seconds only at logging points, after one
``synchronize`` (plus one at the end of each validation run inside ``fit``, to
take the validation time out of the training clock). The times are the GPU's own
completion times, so the rates match what a per-step sync would measure. Values
returned by ``batch_size_fn``/``length_fn`` may be tensors: they are summed on
their device and read at logging points, which is also where the window's
consistency (counts that grow, samples >= batches) is checked.
"""
from __future__ import annotations

import re
import time
import warnings
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Tuple

import torch

from volt.callbacks.base import Callback, ignores_outputs

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

# Peak dense FLOP/s per GPU from the vendors' data sheets (float32 "tf32" is TensorFloat-32).
_GPU_PEAK_FLOPS: Dict[str, Dict[str, float]] = {
    "h200 sxm": {"float64": 3.4e13, "float32": 6.7e13, "tf32": 9.9e14, "bfloat16": 2.0e15, "float16": 2.0e15},
    "h200 nvl": {"float64": 3.0e13, "float32": 6.0e13, "tf32": 8.4e14, "bfloat16": 1.7e15, "float16": 1.7e15},
    "h100 sxm": {"float64": 3.35e13, "float32": 6.69e13, "tf32": 4.947e14, "bfloat16": 9.894e14, "float16": 9.894e14},
    "h100 nvl": {"float64": 6.7e13, "float32": 1.338e14, "tf32": 9.894e14, "bfloat16": 1.9788e15, "float16": 1.9788e15},
    "h100 pcie": {"float64": 2.56e13, "float32": 5.12e13, "tf32": 3.78e14, "bfloat16": 7.56e14, "float16": 7.56e14},
    "a100": {"float64": 9.7e12, "float32": 1.95e13, "tf32": 1.56e14, "bfloat16": 3.12e14, "float16": 3.12e14},
    "a10g": {"float32": 3.12e13, "tf32": 6.25e13, "bfloat16": 1.25e14, "float16": 1.25e14},
    "a40": {"float32": 3.74e13, "tf32": 7.48e13, "bfloat16": 3.74e13, "float16": 3.74e13},
    "a6000": {"float32": 3.87e13, "tf32": 7.74e13, "bfloat16": 3.87e13, "float16": 3.87e13},
    "l40": {"float32": 9.05e13, "tf32": 9.05e13, "bfloat16": 1.81e14, "float16": 1.81e14},
    "l4": {"float32": 3.03e13, "tf32": 6.0e13, "bfloat16": 1.21e14, "float16": 1.21e14},
    "t4": {"float32": 8.1e12, "float16": 6.5e13},
    "v100 sxm": {"float64": 7.8e12, "float32": 1.57e13, "float16": 1.25e14},
    "v100 pcie": {"float64": 7.0e12, "float32": 1.4e13, "float16": 1.12e14},
    "v100s pcie": {"float64": 8.2e12, "float32": 1.64e13, "float16": 1.3e14},
    "rtx 4090": {"float32": 8.26e13, "tf32": 8.26e13, "bfloat16": 8.26e13, "float16": 8.26e13},
    "rtx 3090": {"float32": 3.56e13, "tf32": 3.56e13, "bfloat16": 3.56e13, "float16": 3.56e13},
}


def _chip(device_name: str) -> Optional[str]:
    """The key of ``_GPU_PEAK_FLOPS`` for a CUDA device name, or None when unknown."""
    name = device_name.lower()
    if "h200" in name:
        return "h200 nvl" if "nvl" in name else "h200 sxm"
    if "h100" in name:
        if "nvl" in name:
            return "h100 nvl"
        if "pcie" in name or "hbm2e" in name:
            return "h100 pcie"
        return "h100 sxm" if ("hbm3" in name or "sxm" in name) else None
    for key, marker in (("v100s pcie", "v100s-pcie"), ("v100 sxm", "v100-sxm"), ("v100 pcie", "v100-pcie")):
        if marker in name:
            return key
    for key in ("a100", "a10g", "a6000", "a40", "l40", "l4", "t4", "rtx 4090", "rtx 3090"):
        if re.search(rf"\b{key}\b", name):  # whole words: "a40" is not "rtx a4000", "l4" is not "l40"
            return key
    return None


def available_flops(device: torch.device, dtype: torch.dtype) -> Optional[float]:
    """Peak FLOP/s of ``device`` computing in ``dtype``; None off CUDA or for an unlisted GPU."""
    if device.type != "cuda":
        return None
    chip = _chip(torch.cuda.get_device_name(device))
    if chip is None:
        warnings.warn(f"ThroughputMonitor: peak FLOP/s of {torch.cuda.get_device_name(device)!r} unknown, "
                      "so no device/mfu")
        return None
    key = str(dtype).replace("torch.", "")
    if dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 8:  # Ampere and later run float32 matmuls as TF32 at this setting
            key = "tf32"
    return _GPU_PEAK_FLOPS[chip].get(key)


def throughput_metrics(
    times: List[float],
    batches: List[float],
    samples: List[float],
    lengths: List[float],
    flops: List[float],
    window_size: int,
    world_size: int = 1,
    peak_flops: Optional[float] = None,
    separator: str = "/",
) -> Dict[str, float]:
    """Lightning's Throughput.compute over one window of cumulative counts.

    ``times``/``batches``/``samples``/``lengths`` are running totals per update;
    ``flops`` holds each update's own FLOPs summed over processes. Rates need a full window.
    """
    dev = f"device{separator}"
    out: Dict[str, float] = {"time": times[-1], "batches": batches[-1], "samples": samples[-1]}
    if lengths:
        out["lengths"] = lengths[-1]
    span = times[-1] - times[0]
    if len(times) == window_size:
        out[f"{dev}batches_per_sec"] = (batches[-1] - batches[0]) / span
        out[f"{dev}samples_per_sec"] = (samples[-1] - samples[0]) / span
        if world_size > 1:
            out["batches_per_sec"] = out[f"{dev}batches_per_sec"] * world_size
            out["samples_per_sec"] = out[f"{dev}samples_per_sec"] * world_size
        if len(lengths) == window_size:
            out[f"{dev}items_per_sec"] = (lengths[-1] - lengths[0]) / span
            if world_size > 1:
                out["items_per_sec"] = out[f"{dev}items_per_sec"] * world_size
    if len(flops) == window_size:
        # the first update's FLOPs were spent before the window's first timestamp
        per_sec = (sum(flops) - flops[0]) / span
        if world_size > 1:
            out["flops_per_sec"] = per_sec
        out[f"{dev}flops_per_sec"] = per_sec / world_size
        if peak_flops:
            out[f"{dev}mfu"] = out[f"{dev}flops_per_sec"] / peak_flops
    return out


def _number(value: Any) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class _Clock:
    """Per-update timestamps without a host sync per update.

    On CUDA a timestamp is an event recorded on the current stream; ``settle``
    (at logging points only) synchronizes once and turns events into host
    ``perf_counter`` seconds, anchored at an event recorded just before the sync.
    Elsewhere a timestamp is ``perf_counter()`` at once.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._spare: List[Any] = []  # events already read, reused for later marks

    def mark(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        event = self._spare.pop() if self._spare else torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def settle(self, events: List[Any]) -> List[float]:
        """Host seconds of ``events`` (a synchronize on CUDA); the events are recycled."""
        if not events:
            return []
        anchor = torch.cuda.Event(enable_timing=True)
        anchor.record(torch.cuda.current_stream(self.device))
        torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        seconds = [now - event.elapsed_time(anchor) / 1000.0 for event in events]
        self._spare.extend(events)
        return seconds


class _Window:
    """The last ``size`` updates of one stage: times since t0 and running totals."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.times: Deque[Any] = deque(maxlen=size)  # seconds since t0, or a CUDA event not read yet
        self.batches: Deque[Any] = deque(maxlen=size)
        self.samples: Deque[Any] = deque(maxlen=size)
        self.lengths: Deque[Any] = deque(maxlen=size)
        self.flops: Deque[Any] = deque(maxlen=size)

    def settle(self, clock: _Clock, t0: float) -> None:
        """Read every pending event and tensor of the window into floats (once each)."""
        pending = [i for i, t in enumerate(self.times) if not isinstance(t, float)]
        for i, host in zip(pending, clock.settle([self.times[i] for i in pending])):
            self.times[i] = host - t0
        for values in (self.batches, self.samples, self.lengths, self.flops):
            for i, value in enumerate(values):
                if isinstance(value, torch.Tensor):
                    values[i] = _number(value)

    def check(self) -> None:
        """Lightning's consistency rules for the window (raised at logging points here)."""
        hints = {"samples": "; batch_size_fn must return the batch's sample count (>= 1)",
                 "lengths": "; length_fn must return the batch's item count (>= 1)"}
        for name, values in (("time", self.times), ("batches", self.batches), ("samples", self.samples),
                             ("lengths", self.lengths)):
            for before, after in zip(values, list(values)[1:]):
                if not after > before:
                    raise ValueError(f"ThroughputMonitor: {name} must increase at every update, "
                                     f"got {before} then {after}{hints.get(name, '')}")
        if self.samples and self.samples[-1] < self.batches[-1]:
            raise ValueError(f"ThroughputMonitor: {self.samples[-1]} samples in {self.batches[-1]} batches; "
                             "batch_size_fn must return at least 1 per batch")
        if self.lengths and self.lengths[-1] < self.samples[-1]:
            raise ValueError(f"ThroughputMonitor: {self.lengths[-1]} items in {self.samples[-1]} samples; "
                             "length_fn must return at least one item per sample")


class _Totals:
    """Running totals of one stage (kept across windows when Lightning keeps them)."""

    def __init__(self) -> None:
        self.batches = 0
        self.samples: Any = 0
        self.lengths: Any = 0


class ThroughputMonitor(Callback):
    """Log throughput over a rolling window (Lightning's ``ThroughputMonitor``).

    Args:
        batch_size_fn: number of samples in a batch (``lambda batch: batch[0].size(0)``).
        length_fn: number of items (e.g. tokens) in a batch; enables ``lengths`` and ``items_per_sec``.
        window_size: updates in the rolling window (> 1); rates appear once it is full.
        separator: (keyword) joins the stage, ``device`` and the metric name; default ``/``.

    The LightningModule may define ``flops_per_batch`` (read at each batch) for the FLOPs metrics.
    It assumes every process sees the same batch size.
    """

    def __init__(
        self,
        batch_size_fn: Callable[[Any], int],
        length_fn: Optional[Callable[[Any], int]] = None,
        window_size: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if not callable(batch_size_fn):
            raise TypeError(f"ThroughputMonitor(batch_size_fn={batch_size_fn!r}) must be callable: batch -> samples")
        if length_fn is not None and not callable(length_fn):
            raise TypeError(f"ThroughputMonitor(length_fn={length_fn!r}) must be None or callable: batch -> items")
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 2:
            raise ValueError(f"ThroughputMonitor(window_size={window_size!r}) must be an int >= 2 "
                             "(rates need two points)")
        unknown = set(kwargs) - {"separator"}
        if unknown:
            raise TypeError(f"ThroughputMonitor got unexpected keyword argument(s) {sorted(unknown)}; "
                            "accepted: batch_size_fn, length_fn, window_size, separator")
        separator = kwargs.get("separator", "/")
        if not isinstance(separator, str):
            raise TypeError(f"ThroughputMonitor(separator={separator!r}) must be a str")
        self.batch_size_fn = batch_size_fn
        self.length_fn = length_fn
        self.window_size = window_size
        self.separator = separator
        self.kwargs = dict(kwargs, window_size=window_size)
        self.available_flops: Optional[float] = None
        self._world_size = 1
        self._clock: Optional[_Clock] = None
        self._windows: Dict[str, _Window] = {}
        self._totals: Dict[str, _Totals] = {}
        self._t0: Dict[str, float] = {}
        self._run_batches: Dict[str, int] = {}  # this run's batches (the evaluation loops' logging cadence)
        self._logged_steps: Dict[Tuple[Optional[str], str], int] = {}  # eval batches so far: their log step
        self._seen_stepped = 0
        self._module_has_flops: Optional[bool] = None

    # --- per run / per stage -----------------------------------------------------------
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        plugin = trainer.precision_plugin
        dtype = plugin.autocast_dtype or plugin.param_dtype
        device = trainer.strategy.root_device
        self.available_flops = available_flops(device, dtype) if trainer.is_global_zero else None
        self._world_size = trainer.world_size
        self._clock = _Clock(device)
        self._windows = {}  # fresh windows each run, as Lightning builds new Throughput objects

    def _start(self, trainer: "Trainer", stage: str) -> None:
        if trainer.state.fn == "fit" or stage not in self._totals:
            self._totals[stage] = _Totals()
            self._windows[stage] = _Window(self.window_size)
        self._windows.setdefault(stage, _Window(self.window_size))
        self._run_batches[stage] = 0
        if trainer.state.fn == "fit":  # inside fit each validation run counts its log steps from 1
            self._logged_steps[("fit", stage)] = 0
        self._t0[stage] = time.perf_counter()

    @torch.no_grad()
    def _update(self, pl_module: "LightningModule", stage: str, batch: Any) -> None:
        assert self._clock is not None
        stamp = self._clock.mark()
        window, totals = self._windows[stage], self._totals[stage]
        if self.length_fn is not None:
            totals.lengths = totals.lengths + self.length_fn(batch)
        if self._module_has_flops is None:
            self._module_has_flops = hasattr(pl_module, "flops_per_batch")
            if not self._module_has_flops:
                warnings.warn(f"ThroughputMonitor: {type(pl_module).__name__} has no `flops_per_batch` attribute "
                              "or property, so no FLOPs metrics are logged", UserWarning)
        totals.samples = totals.samples + self.batch_size_fn(batch)
        totals.batches += 1
        self._run_batches[stage] += 1
        window.times.append(stamp - self._t0[stage] if isinstance(stamp, float) else stamp)
        window.batches.append(totals.batches)
        window.samples.append(totals.samples)
        if self.length_fn is not None:
            window.lengths.append(totals.lengths)
        if self._module_has_flops:
            flops = pl_module.flops_per_batch  # type: ignore[attr-defined]
            if flops is not None:
                window.flops.append(flops * self._world_size)

    def _settle(self, stage: str) -> _Window:
        window = self._windows[stage]
        assert self._clock is not None
        window.settle(self._clock, self._t0[stage])
        return window

    def _compute(self, trainer: "Trainer", stage: str, step: int, add_epoch: bool) -> None:
        if not trainer.loggers:  # nothing would be written: skip the sync
            return
        window = self._settle(stage)
        window.check()
        metrics = throughput_metrics(
            list(window.times), list(window.batches), list(window.samples), list(window.lengths), list(window.flops),
            self.window_size, self._world_size, self.available_flops, self.separator,
        )
        named = {f"{stage}{self.separator}{name}": float(value) for name, value in metrics.items()}
        trainer.logged_metrics.update({name: torch.tensor(value) for name, value in named.items()})
        if add_epoch:  # what Lightning's logger connector adds when no step is given
            named["epoch"] = float(trainer.current_epoch)
        for logger in trainer.loggers:
            logger.log_metrics(named, step=step)

    @staticmethod
    def _due(trainer: "Trainer", count: int) -> bool:
        every = trainer.log_every_n_steps
        return every > 0 and (count % every == 0 or trainer.should_stop)

    def _eval_batch(self, trainer: "Trainer", pl_module: "LightningModule", stage: str, batch: Any) -> None:
        if stage not in self._windows:  # a loop whose start hook this callback did not see
            self._start(trainer, stage)
        self._update(pl_module, stage, batch)
        key = (trainer.state.fn, stage)
        self._logged_steps[key] = step = self._logged_steps.get(key, 0) + 1
        if self._due(trainer, self._run_batches[stage]):
            self._compute(trainer, stage, step, add_epoch=False)

    # --- training -------------------------------------------------------------------------
    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not trainer.is_global_zero:
            return
        self._start(trainer, "train")
        self._seen_stepped = trainer.progress.batches_that_stepped

    @ignores_outputs
    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero:
            return
        self._update(pl_module, "train", batch)
        stepped = trainer.progress.batches_that_stepped
        closed_window, self._seen_stepped = stepped != self._seen_stepped, stepped
        # Only once the accumulation window closes, so the optimizer step is inside the timing.
        if closed_window and self._due(trainer, stepped):
            self._compute(trainer, "train", stepped - 1, add_epoch=True)

    # --- evaluation -----------------------------------------------------------------------
    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._start(trainer, "validate")

    def on_validation_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._eval_batch(trainer, pl_module, "validate", batch)

    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        if "train" not in self._windows or "validate" not in self._windows:
            return
        # Take the validation run out of the training clock: training time resumes where it left off.
        train, val = self._settle("train"), self._settle("validate")
        train_elapsed = train.times[-1] if train.times else 0.0
        val_elapsed = val.times[-1] if val.times else 0.0
        gap = self._t0["validate"] - (self._t0["train"] + train_elapsed)
        self._t0["train"] += gap + val_elapsed

    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if trainer.is_global_zero:
            self._start(trainer, "test")

    def on_test_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.is_global_zero:
            self._eval_batch(trainer, pl_module, "test", batch)

    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if trainer.is_global_zero:
            self._start(trainer, "predict")

    def on_predict_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.is_global_zero:
            self._eval_batch(trainer, pl_module, "predict", batch)
