"""Per-rank Prometheus metrics and a JSON progress endpoint for a training run.

Every rank serves ``GET /metrics`` (Prometheus text format) and ``GET /progress``
(JSON, polled by the operator to fill ``TrainingJob.status.training``) on port
``VOLT_METRICS_PORT + local_rank``. Names and labels are documented in
``docs/metrics.md``.

Per training batch the training thread takes two ``perf_counter`` readings,
reads the batch's leading dimension and appends one tuple to a deque; it keeps
a reference to the step output. The timings are turned into histograms when
scraped (or every ``DRAIN_AT`` batches when nobody scrapes), and tensors --
logged values, the loss -- are converted to floats in the HTTP thread, so
exporting adds no per-step host-device synchronisation; a scrape costs at most
one sync per logged CUDA value, every scrape interval.
"""
from __future__ import annotations

import bisect
import collections
import datetime
import json
import math
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from volt import __version__
from volt.callbacks.base import Callback
from volt.contract import ENV_METRICS_PORT, job_contract
from volt.termination import write_termination_message

_now = time.perf_counter

DEFAULT_PORT = 9090
# Queued batch timings are accounted at each scrape, or by the training thread every DRAIN_AT batches.
DRAIN_AT = 4096
_RESET = "reset"  # event: the next batch's data wait starts at this time (None: not measured)
_SKIP = "skip"  # event: time until here was not data wait (e.g. a checkpoint save)

# Seconds; from a tiny CPU step to a large-model step or a slow data loader.
STEP_BUCKETS: Tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
CHECKPOINT_BUCKETS: Tuple[float, ...] = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# Which logged key is "the loss" in /progress, most specific first.
LOSS_KEYS: Tuple[str, ...] = ("train_loss", "train_loss_step", "loss", "loss_step", "train_loss_epoch", "loss_epoch")


class _Histogram:
    """Cumulative-bucket histogram cheap enough for every training batch.

    One writer at a time (``_drain``, under its lock) and readers that only
    copy: the counts stay exact without a lock of their own. prometheus_client's Histogram takes
    a lock per bucket on every observe, which costs more than this whole hook.
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> Tuple[List[Tuple[str, int]], float, int]:
        """(cumulative buckets as (le, count) pairs, sum, count).

        The copy of the counts is atomic; the sum may lag or lead it by the one
        observation being written, which a scrape every few seconds cannot see.
        """
        counts = list(self._counts)
        total = self._sum
        buckets, running = [], 0
        for bound, count in zip(self._bounds + (math.inf,), counts):
            running += count
            buckets.append((floatToGoString(bound), running))
        return buckets, total, running



def _rfc3339(unix_seconds: Optional[float]) -> Optional[str]:
    if unix_seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(unix_seconds, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_float(value: Any) -> Optional[float]:
    """A logged value as a Python float, or None when it is not a scalar."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        return float(value.detach().reshape(()).item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _json_float(value: Optional[float]) -> Optional[float]:
    # JSON has no NaN/Inf; report them as null rather than emit invalid JSON.
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value


def infer_batch_size(batch: Any) -> int:
    """Leading dimension of the first tensor in ``batch`` (depth-first), or 1 when it holds none."""
    if type(batch) is tuple or type(batch) is list:  # the common (x, y) case, without the ABC checks below
        if batch and isinstance(batch[0], torch.Tensor):
            shape = batch[0].shape
            return int(shape[0]) if shape else 1
    found = _first_leading_dim(batch)
    return 1 if found is None else found


def _first_leading_dim(obj: Any) -> Optional[int]:
    if isinstance(obj, torch.Tensor):
        return int(obj.shape[0]) if obj.dim() else 1
    if isinstance(obj, Mapping):
        items: Any = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    else:
        return None
    for item in items:
        found = _first_leading_dim(item)
        if found is not None:
            return found
    return None


def _loss_from_output(output: Any) -> Any:
    if isinstance(output, Mapping):
        return output.get("loss")
    return output


class PrometheusCallback(Callback):
    """Serve this rank's training metrics on ``/metrics`` and its progress on ``/progress``.

    Args:
        port: base port; this rank binds ``port + local_rank``. Defaults to
            ``$VOLT_METRICS_PORT`` and then to 9090. ``0`` binds an ephemeral
            port on every rank. The bound port is ``self.port``.
        host: address to bind (``0.0.0.0``: reachable from Prometheus and the operator).
        job_name: value of the ``trainingjob`` label; defaults to ``$VOLT_JOB_NAME``.
        attempt: restart count exported as ``volt_job_restarts``; defaults to ``$VOLT_ATTEMPT`` or 0.
        throughput_window_seconds: span over which ``samples_per_second`` is averaged.
    """

    def __init__(
        self,
        port: Optional[int] = None,
        host: str = "0.0.0.0",
        job_name: Optional[str] = None,
        attempt: Optional[int] = None,
        throughput_window_seconds: float = 30.0,
    ) -> None:
        job = job_contract()  # the TrainingJob's values fill in what the script left unset
        port_source = "the port argument"
        if port is None:
            port = job.metrics_port
            port_source = ENV_METRICS_PORT
            if port is None:
                port, port_source = DEFAULT_PORT, "the default"
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"PrometheusCallback: port must be an integer in [0, 65535], got {port!r}")
        if attempt is None:
            attempt = job.attempt or 0
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise ValueError(f"PrometheusCallback: attempt must be a non-negative integer, got {attempt!r}")
        if not throughput_window_seconds > 0:
            raise ValueError(
                f"PrometheusCallback: throughput_window_seconds must be > 0, got {throughput_window_seconds!r}"
            )
        self.base_port = port
        self._port_source = port_source
        self.host = host
        self.job_name = job_name if job_name is not None else job.job_name
        self.attempt = attempt
        self.throughput_window_seconds = float(throughput_window_seconds)

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_TrainingCollector(self))
        ProcessCollector(registry=self.registry)

        self._trainer: Any = None
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        # perf_counter -> wall clock, so the hot path never calls time.time().
        self._wall_offset = time.time() - _now()

        self._step_time = _Histogram(STEP_BUCKETS)
        self._data_wait = _Histogram(STEP_BUCKETS)
        self._checkpoint_time = _Histogram(CHECKPOINT_BUCKETS)
        self._checkpoint_failures = 0
        self._checkpoint: Optional[Tuple[Optional[str], int, float]] = None  # (path, step, unix time)
        # Training thread: appends timings to _events (thread-safe deque) and nothing else.
        # _drain (scrape thread, or the training thread every DRAIN_AT batches) turns them
        # into histograms and counters under _drain_lock.
        self._events: Deque[Tuple[Any, Optional[float], int, int]] = collections.deque()
        self._drain_lock = threading.Lock()
        self._batch_start: Optional[float] = None
        self._batch_idx = -1
        self._last_output: Any = None
        self._samples = 0
        self._last_batch_end: Optional[float] = None  # drain side: end of the previous batch, None = no wait to count
        self._last_step_end: Optional[float] = None
        # Stall signal: end of the latest batch that took an optimizer step (global_step moved).
        self._step_seen: Optional[int] = None
        self._last_optimizer_step_end: Optional[float] = None
        self._throughput_points: Deque[Tuple[float, int]] = collections.deque(maxlen=512)

    # --- lifecycle ---------------------------------------------------------
    @property
    def port(self) -> Optional[int]:
        """The port this rank's server is bound to, or None when not serving."""
        return self._server.server_address[1] if self._server is not None else None

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._trainer = trainer
        self._wrap_save_checkpoint(trainer)
        if self._server is None:
            self._start_server(int(getattr(trainer, "local_rank", 0) or 0))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._unwrap_save_checkpoint(trainer)
        if stage == "fit" and getattr(trainer, "is_global_zero", False):
            write_termination_message(self.progress())
        self.stop()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # teardown does not run after an exception; the SIGTERM checkpoint's exit is one
        self._unwrap_save_checkpoint(trainer)
        self.stop()

    def stop(self) -> None:
        """Stop serving (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def _start_server(self, local_rank: int) -> None:
        port = self.base_port + local_rank if self.base_port else 0
        try:
            server = _Server((self.host, port), _Handler)
        except OSError as err:
            raise OSError(
                err.errno,
                f"PrometheusCallback: cannot serve metrics on {self.host}:{port} "
                f"(base port {self.base_port} from {self._port_source} + local_rank {local_rank}): {err.strerror}",
            ) from err
        server.daemon_threads = True
        server.callback = self  # type: ignore[attr-defined]
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.25}, name=f"volt-metrics-{port}", daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread

    # --- hot path ----------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        with self._drain_lock:  # the step a (resumed) run starts from is not a step taken
            self._step_seen = int(trainer.global_step)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        # The first batch's wait includes creating the loader iterator (worker start-up): real data wait.
        self._events.append((_RESET, _now(), 0, 0))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._batch_start = _now()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        events = self._events
        events.append((self._batch_start, _now(), infer_batch_size(batch), trainer.global_step))
        self._batch_idx = batch_idx
        self._last_output = outputs  # a reference only; converted when scraped
        if len(events) >= DRAIN_AT:  # nobody scrapes: keep memory bounded
            self._drain()

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        # Validation between two training batches is not data wait.
        self._events.append((_RESET, None, 0, 0))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._events.append((_RESET, _now(), 0, 0))

    def _drain(self) -> None:
        """Account the queued batch timings (any thread)."""
        with self._drain_lock:
            events = self._events
            while events:
                start, end, size, step = events.popleft()
                if start is _RESET:
                    self._last_batch_end = end
                elif start is _SKIP:
                    if self._last_batch_end is not None:
                        self._last_batch_end = end
                else:
                    if start is not None:
                        if self._last_batch_end is not None:
                            self._data_wait.observe(start - self._last_batch_end)
                        self._step_time.observe(end - start)
                    self._samples += size
                    self._last_batch_end = self._last_step_end = end
                    if step != self._step_seen:  # an optimizer step ended this batch
                        self._step_seen = step
                        self._last_optimizer_step_end = end
                    self._throughput_points.append((end, self._samples))

    # --- checkpoints -------------------------------------------------------
    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Dict[str, Any]) -> None:
        # A resumed run starts with the checkpoint it resumed from as "latest", so its age is continuous.
        path = getattr(trainer, "ckpt_path", None)
        path = str(path) if path else None
        saved_at = os.path.getmtime(path) if path and os.path.isfile(path) else time.time()
        self._checkpoint = (path, int(checkpoint.get("global_step", 0) or 0), saved_at)

    def _wrap_save_checkpoint(self, trainer: Any) -> None:
        # Lightning has no hook after a checkpoint is written; every save goes through
        # trainer.save_checkpoint, so timing that one entry point covers all of them.
        if getattr(trainer.__dict__.get("save_checkpoint"), "_volt_prometheus", None) is self:
            return
        original: Callable[..., Any] = trainer.save_checkpoint

        def save_checkpoint(filepath: Any, *args: Any, **kwargs: Any) -> Any:
            started = _now()
            try:
                result = original(filepath, *args, **kwargs)
            except BaseException:
                self._checkpoint_failures += 1
                raise
            finished = _now()
            self._checkpoint_time.observe(finished - started)
            self._checkpoint = (str(filepath), int(trainer.global_step), finished + self._wall_offset)
            self._events.append((_SKIP, finished, 0, 0))  # saving between batches is not data wait
            return result

        save_checkpoint._volt_prometheus = self  # type: ignore[attr-defined]
        save_checkpoint._volt_original = original  # type: ignore[attr-defined]
        trainer.save_checkpoint = save_checkpoint

    def _unwrap_save_checkpoint(self, trainer: Any) -> None:
        wrapper = trainer.__dict__.get("save_checkpoint")
        if getattr(wrapper, "_volt_prometheus", None) is self:
            original = wrapper._volt_original
            if getattr(original, "__self__", None) is trainer and type(trainer).save_checkpoint is original.__func__:
                del trainer.save_checkpoint  # back to the class method
            else:
                trainer.save_checkpoint = original

    # --- read side (HTTP thread) ---------------------------------------------
    def labels(self) -> Dict[str, str]:
        """Labels on every volt_* series of this rank."""
        trainer = self._trainer
        labels = {"rank": str(int(getattr(trainer, "global_rank", 0) or 0))}
        if self.job_name:
            labels["trainingjob"] = self.job_name
        return labels

    def logged_metrics(self) -> Dict[str, float]:
        """Latest value of every scalar logged with ``self.log``."""
        trainer = self._trainer
        if trainer is None:
            return {}
        merged: Dict[str, Any] = {}
        # dict() of a plain dict is one C call: atomic with respect to the training thread.
        merged.update(dict(getattr(trainer, "logged_metrics", None) or {}))
        merged.update(dict(getattr(trainer, "callback_metrics", None) or {}))
        values = {}
        for name, value in merged.items():
            number = _to_float(value)
            if number is not None:
                values[str(name)] = number
        return values

    def step_loss(self) -> Optional[float]:
        """The loss returned by the latest training_step, if any."""
        return _to_float(_loss_from_output(self._last_output))

    def samples_per_second(self) -> Optional[float]:
        """Samples per second over the last ``throughput_window_seconds`` (at least two batches)."""
        points = list(self._throughput_points)
        if len(points) < 2:
            return None
        now = _now()
        window_start = now - self.throughput_window_seconds
        first = next((point for point in points[:-1] if point[0] >= window_start), points[-2])
        # Divide by the time until now, not until the last batch, so a stalled run shows falling throughput.
        elapsed = now - first[0]
        return (points[-1][1] - first[1]) / elapsed if elapsed > 0 else None

    def last_step_unix_time(self) -> Optional[float]:
        """Unix time at which the latest optimizer step of this attempt ended (None before the first)."""
        end = self._last_optimizer_step_end
        return None if end is None else end + self._wall_offset

    def progress_ratio(self) -> Optional[float]:
        trainer = self._trainer
        if trainer is None:
            return None
        fractions = []
        max_steps = getattr(trainer, "max_steps", None)
        if isinstance(max_steps, int) and max_steps > 0:
            fractions.append(int(trainer.global_step) / max_steps)
        max_epochs = getattr(trainer, "max_epochs", None)
        batches = getattr(trainer, "num_training_batches", None)
        if isinstance(max_epochs, int) and max_epochs > 0:
            within = 0.0
            if isinstance(batches, (int, float)) and 0 < batches < math.inf and self._batch_idx >= 0:
                within = min((self._batch_idx + 1) / batches, 1.0)
            fractions.append((int(trainer.current_epoch) + within) / max_epochs)
        if not fractions:
            return None
        return max(0.0, min(1.0, max(fractions)))

    def progress(self) -> Dict[str, Any]:
        """The ``/progress`` document (see docs/metrics.md)."""
        self._drain()
        trainer = self._trainer
        metrics = self.logged_metrics()
        loss = next((metrics[key] for key in LOSS_KEYS if key in metrics), None)
        if loss is None:
            loss = self.step_loss()
        checkpoint = None
        if self._checkpoint is not None:
            path, step, saved_at = self._checkpoint
            checkpoint = {"path": path, "step": step, "time": _rfc3339(saved_at)}
        max_steps = getattr(trainer, "max_steps", None)
        max_epochs = getattr(trainer, "max_epochs", None)
        last_step = self.last_step_unix_time()
        return {
            "epoch": int(getattr(trainer, "current_epoch", 0) or 0),
            "step": int(getattr(trainer, "global_step", 0) or 0),
            "loss": _json_float(loss),
            "max_epochs": max_epochs if isinstance(max_epochs, int) and max_epochs >= 0 else None,
            "max_steps": max_steps if isinstance(max_steps, int) and max_steps >= 0 else None,
            "progress": self.progress_ratio(),
            "metrics": {name: _json_float(value) for name, value in metrics.items()},
            "samples_per_second": self.samples_per_second(),
            "checkpoint": checkpoint,
            "attempt": self.attempt,
            "rank": int(getattr(trainer, "global_rank", 0) or 0),
            "trainingjob": self.job_name,
            "stage": _stage(trainer),
            "last_step_time": last_step,  # unix seconds: the operator's stall detection compares it with its clock
            "time": _rfc3339(time.time()),
        }


def _stage(trainer: Any) -> Optional[str]:
    fn = getattr(getattr(trainer, "state", None), "fn", None)
    if fn is None:
        return None
    return str(getattr(fn, "value", fn))


class _TrainingCollector:
    """Builds every volt_* family from the callback's state at scrape time."""

    def __init__(self, callback: PrometheusCallback) -> None:
        self._cb = callback

    def collect(self) -> Iterator[Any]:
        cb, trainer = self._cb, self._cb._trainer
        cb._drain()
        base = cb.labels()
        names, values = list(base), list(base.values())

        def gauge(name: str, doc: str, value: Optional[float]) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            if value is not None:
                family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=names)
            family.add_metric(values, value)
            return family

        def histogram(name: str, doc: str, hist: _Histogram) -> HistogramMetricFamily:
            family = HistogramMetricFamily(name, doc, labels=names)
            buckets, total, _ = hist.snapshot()
            family.add_metric(values, buckets, total)
            return family

        build_info = GaugeMetricFamily(
            "volt_build_info", "Always 1; the engine's version is a label.", labels=names + ["version"]
        )
        build_info.add_metric(values + [__version__], 1)
        yield build_info
        yield gauge("volt_job_restarts", "Restarts of the job before this attempt (VOLT_ATTEMPT).", cb.attempt)
        if trainer is not None:
            yield gauge("volt_world_size", "Processes in the training job.", int(getattr(trainer, "world_size", 1) or 1))
            yield gauge("volt_train_global_step", "Optimizer steps taken (trainer.global_step).", int(trainer.global_step))
            yield gauge("volt_train_epoch", "Current epoch (trainer.current_epoch).", int(trainer.current_epoch))
            yield gauge("volt_train_progress_ratio", "Fraction of max_steps or max_epochs done.", cb.progress_ratio())
        yield gauge(
            "volt_train_last_step_timestamp_seconds",
            "Unix time the latest optimizer step ended (stall detection: it stops moving when training hangs).",
            cb.last_step_unix_time(),
        )
        yield histogram(
            "volt_train_step_duration_seconds",
            "Time of one training batch: forward, backward and, on accumulation boundaries, the optimizer step.",
            cb._step_time,
        )
        yield histogram(
            "volt_train_data_wait_seconds",
            "Time from the end of one training batch to the start of the next (waiting for data).",
            cb._data_wait,
        )
        yield counter("volt_train_samples", "Training samples processed by this rank.", cb._samples)
        yield gauge(
            "volt_train_samples_per_second",
            f"Training samples per second on this rank over the last {cb.throughput_window_seconds:g} s.",
            cb.samples_per_second(),
        )
        yield gauge("volt_train_loss", "Loss returned by the latest training_step.", cb.step_loss())
        # Trainer(compile=...): read from the state the compiled step keeps (nothing per step here)
        stats = getattr(trainer, "compile_stats", None)
        yield counter("volt_compile_recompiles",
                      "Compiles of the training step after its first (an input's shape, dtype or a guarded value "
                      "changed).", stats.recompiles if stats is not None else 0)
        yield counter("volt_compile_fallbacks",
                      "Times Trainer(compile=...) fell back to the eager step (reason in the log).",
                      stats.fallbacks if stats is not None else 0)

        logged = GaugeMetricFamily("volt_logged_metric", "Latest value of each self.log metric.", labels=names + ["metric"])
        for metric, value in sorted(cb.logged_metrics().items()):
            logged.add_metric(values + [metric], value)
        yield logged

        lr = GaugeMetricFamily(
            "volt_learning_rate", "Learning rate per optimizer and param group.", labels=names + ["optimizer", "param_group"]
        )
        for opt_index, optimizer in enumerate(list(getattr(trainer, "optimizers", None) or [])):
            for group_index, group in enumerate(list(getattr(optimizer, "param_groups", []))):
                rate = _to_float(group.get("lr"))
                if rate is not None:
                    lr.add_metric(values + [str(opt_index), str(group_index)], rate)
        yield lr

        yield histogram("volt_checkpoint_save_duration_seconds", "Time to save one checkpoint.", cb._checkpoint_time)
        yield counter("volt_checkpoint_save_failures", "Checkpoint saves that raised an error.", cb._checkpoint_failures)
        last = cb._checkpoint
        yield gauge("volt_checkpoint_last_step", "Global step of the latest checkpoint.", last[1] if last else None)
        yield gauge(
            "volt_checkpoint_last_timestamp_seconds", "Unix time the latest checkpoint was written.", last[2] if last else None
        )
        yield from _gpu_memory(trainer, names, values)


def _gpu_memory(trainer: Any, names: List[str], values: List[str]) -> Iterator[GaugeMetricFamily]:
    device = getattr(getattr(trainer, "strategy", None), "root_device", None)
    if not isinstance(device, torch.device) or device.type != "cuda" or not torch.cuda.is_initialized():
        return
    # Allocator statistics are host-side counters: reading them does not synchronise.
    stats = (
        ("volt_gpu_memory_allocated_bytes", "Bytes held by tensors on this rank's GPU.", torch.cuda.memory_allocated),
        ("volt_gpu_memory_reserved_bytes", "Bytes reserved by the caching allocator.", torch.cuda.memory_reserved),
        ("volt_gpu_memory_max_allocated_bytes", "Peak bytes held by tensors.", torch.cuda.max_memory_allocated),
    )
    for name, doc, read in stats:
        family = GaugeMetricFamily(name, doc, labels=names + ["device"])
        family.add_metric(values + [str(device)], float(read(device)))
        yield family


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that disconnects (a poll that timed out, a scraper restarting) is normal:
        # no traceback in the pod's log for it. Anything else is still printed.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_version = "volt-metrics"

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        callback: PrometheusCallback = self.server.callback  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._reply(200, content_type, encoder(callback.registry))
            elif path == "/progress":
                body = json.dumps(callback.progress(), allow_nan=False).encode()
                self._reply(200, "application/json", body)
            elif path == "/healthz":
                self._reply(200, "text/plain; charset=utf-8", b"ok\n")
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found: try /metrics or /progress\n")
        except ConnectionError:
            raise  # the client went away: nobody to answer (_Server.handle_error drops it)
        except Exception as err:  # a scrape must never take the training process down
            self._reply(500, "text/plain; charset=utf-8", f"error: {err!r}\n".encode())

    def _reply(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not worth a log line
        pass
