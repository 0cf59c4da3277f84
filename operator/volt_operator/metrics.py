"""The operator's own Prometheus metrics.

Handlers call the module-level functions (``observe_phase``, ``record_restart``,
...), which update one ``OperatorMetrics`` on a private registry;
``start_metrics_server`` serves it on the operator's metrics port. Names are
documented in ``docs/metrics.md``.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Callable, Dict, Iterator, Optional, Set, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from . import __version__
from .cache import JobKey
from .failures import REASONS as RESTART_REASONS

PHASES: Tuple[str, ...] = ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed")
# From a fast local cluster to a big gang waiting on image pulls and GPU nodes.
TIME_TO_RUNNING_BUCKETS: Tuple[float, ...] = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
RECONCILE_BUCKETS: Tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _require_text(value: Any, argument: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{argument} must be a non-empty string, got {value!r}")
    return value


def _require_seconds(value: Any, argument: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{argument} must be a non-negative number of seconds, got {value!r}")
    return float(value)


class OperatorMetrics:
    """Operator metrics on their own registry (one per operator process, or per test)."""

    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._phases: Dict[JobKey, str] = {}
        self._restart_reasons: Dict[JobKey, Set[str]] = {}
        self.restarts = Counter(
            "volt_operator_trainingjob_restarts",
            "Gang restarts of a TrainingJob, by reason.",
            ["namespace", "trainingjob", "reason"],
            registry=self.registry,
        )
        self.time_to_running = Histogram(
            "volt_operator_time_to_running_seconds",
            "Time from a TrainingJob's creation to its first Running phase.",
            buckets=TIME_TO_RUNNING_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "volt_operator_reconcile_duration_seconds",
            "Time spent in one handler invocation.",
            ["handler"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "volt_operator_reconcile_errors",
            "Handler invocations that raised (kopf retries them).",
            ["handler"],
            registry=self.registry,
        )
        self.work_queue_depth = Gauge(
            "volt_operator_work_queue_depth",
            "TrainingJobs waiting for a worker of the reconcile queue.",
            registry=self.registry,
        )
        self.failing_jobs = Gauge(
            "volt_operator_failing_jobs",
            "TrainingJobs whose last reconcile failed (an API error, a refused creation); "
            "retried with backoff.",
            registry=self.registry,
        )
        self.registry.register(_PhaseCollector(self))
        build_info = Gauge(
            "volt_build_info", "Always 1; the operator's version is a label.", ["version"], registry=self.registry
        )
        build_info.labels(version=__version__).set(1)

    def observe_phase(self, namespace: str, name: str, phase: str) -> None:
        key = (_require_text(namespace, "namespace"), _require_text(name, "name"))
        phase = _require_text(phase, "phase")
        with self._lock:
            new = key not in self._phases
            self._phases[key] = phase
            if new:
                self._restart_reasons.setdefault(key, set()).update(RESTART_REASONS)
        if new:
            # Every restart reason exists at 0 from the start: increase()/alerts see 0, not "no data".
            for reason in RESTART_REASONS:
                self.restarts.labels(namespace, name, reason)

    def job_deleted(self, namespace: str, name: str) -> None:
        key = (_require_text(namespace, "namespace"), _require_text(name, "name"))
        with self._lock:
            self._phases.pop(key, None)
            reasons = self._restart_reasons.pop(key, set())
        for reason in reasons:
            with contextlib.suppress(KeyError):
                self.restarts.remove(namespace, name, reason)

    def record_restart(self, namespace: str, name: str, reason: str) -> None:
        key = (_require_text(namespace, "namespace"), _require_text(name, "name"))
        reason = _require_text(reason, "reason")
        with self._lock:
            self._restart_reasons.setdefault(key, set()).add(reason)
        self.restarts.labels(namespace, name, reason).inc()

    def observe_time_to_running(self, seconds: float) -> None:
        self.time_to_running.observe(_require_seconds(seconds, "seconds"))

    def observe_reconcile(self, seconds: float, error: bool, handler: str = "reconcile") -> None:
        handler = _require_text(handler, "handler")
        self.reconcile_duration.labels(handler).observe(_require_seconds(seconds, "seconds"))
        errors = self.reconcile_errors.labels(handler)  # exists at 0 from the first call: rate() has data
        if error:
            errors.inc()

    @contextlib.contextmanager
    def reconcile_timer(self, handler: str) -> Iterator[None]:
        """Time the block as one ``handler`` invocation; an exception counts as an error and propagates."""
        started = time.perf_counter()
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            self.observe_reconcile(time.perf_counter() - started, failed, handler)

    def phases(self) -> Dict[JobKey, str]:
        with self._lock:
            return dict(self._phases)


class _PhaseCollector:
    """Jobs by phase, computed from the last phase each job was seen in."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        phases = self._metrics.phases()
        per_job = GaugeMetricFamily(
            "volt_operator_trainingjob_phase",
            "1 for the current phase of each TrainingJob.",
            labels=["namespace", "trainingjob", "phase"],
        )
        counts: Dict[Tuple[str, str], int] = {}
        for (namespace, name), phase in sorted(phases.items()):
            per_job.add_metric([namespace, name, phase], 1)
            counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
        by_phase = GaugeMetricFamily(
            "volt_operator_trainingjobs", "TrainingJobs by namespace and phase.", labels=["namespace", "phase"]
        )
        # Every known phase of every namespace in use, so a phase that empties reads 0 instead of vanishing.
        namespaces = sorted({namespace for namespace, _ in phases})
        seen_phases = sorted({phase for _, phase in counts} | set(PHASES))
        for namespace in namespaces:
            for phase in seen_phases:
                by_phase.add_metric([namespace, phase], counts.get((namespace, phase), 0))
        yield by_phase
        yield per_job


class MetricsServer:
    """A running HTTP server for a registry; ``port`` is the bound port."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in [0, 65535], got {port!r}")
        self._server, self._thread = start_http_server(port, addr=addr, registry=registry)
        self.port: int = self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# The operator process's metrics: what handlers update and the server exposes.
METRICS = OperatorMetrics()


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> MetricsServer:
    """Serve the operator's metrics on ``addr:port`` (0 = an ephemeral port) in a daemon thread."""
    return MetricsServer(METRICS.registry, port, addr)


def observe_phase(namespace: str, name: str, phase: str) -> None:
    """Record the phase ``namespace/name`` is in now (call on every status computation)."""
    METRICS.observe_phase(namespace, name, phase)


def job_deleted(namespace: str, name: str) -> None:
    """Forget a deleted TrainingJob's series."""
    METRICS.job_deleted(namespace, name)


def record_restart(namespace: str, name: str, reason: str) -> None:
    """Count one gang restart of ``namespace/name`` for ``reason`` (e.g. OOMKilled, Preempted)."""
    METRICS.record_restart(namespace, name, reason)


def observe_time_to_running(seconds: float) -> None:
    """Record a job's creation-to-first-Running time, once per job."""
    METRICS.observe_time_to_running(seconds)


def track_work_queue(depth: Callable[[], int]) -> None:
    """Serve ``depth()`` (the reconcile queue's waiting jobs) as the queue depth gauge."""
    METRICS.work_queue_depth.set_function(depth)


def track_failing_jobs(count: Callable[[], int]) -> None:
    """Serve ``count()`` (jobs whose last reconcile failed) as the failing-jobs gauge."""
    METRICS.failing_jobs.set_function(count)


def observe_reconcile(seconds: float, error: bool, handler: str = "reconcile") -> None:
    """Record one handler invocation's duration and whether it failed."""
    METRICS.observe_reconcile(seconds, error, handler)


def reconcile_timer(handler: str) -> "contextlib.AbstractContextManager[None]":
    """``with reconcile_timer("create"): ...`` times the block and counts it as an error when it raises."""
    return METRICS.reconcile_timer(handler)
