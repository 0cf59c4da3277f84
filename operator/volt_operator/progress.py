"""Training progress from rank 0's engine, polled at a bounded rate.

The engine's Prometheus callback serves ``GET /progress`` (JSON) on
``VOLT_METRICS_PORT`` of every node pod; the operator reads node 0 (local
rank 0) and mirrors epoch, step, loss and the latest checkpoint into status.
Pods need no API credentials for this, and a slow or dead endpoint costs one
short timeout on the ``Poller``'s own threads, never a reconcile's time.
"""
from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Optional, Set, Tuple

from .api import CheckpointStatus, TrainingProgress, format_time, parse_time

FETCH_TIMEOUT_SECONDS = 1.5
MAX_BODY_BYTES = 256 * 1024


class ProgressError(Exception):
    """The endpoint could not be read or did not return the expected JSON."""


def fetch(ip: str, port: int, timeout: float = FETCH_TIMEOUT_SECONDS) -> Dict[str, Any]:
    """GET http://<ip>:<port>/progress and return the decoded object."""
    host = f"[{ip}]" if ":" in ip else ip
    url = f"http://{host}:{port}/progress"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (pod IP)
            body = response.read(MAX_BODY_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ProgressError(f"{url}: {exc}") from exc
    if len(body) > MAX_BODY_BYTES:
        raise ProgressError(f"{url}: response larger than {MAX_BODY_BYTES} bytes")
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ProgressError(f"{url}: not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ProgressError(f"{url}: expected a JSON object")
    return payload


def from_termination_message(message: str) -> Optional[Dict[str, Any]]:
    """The final /progress payload rank 0 left as its termination message, if any."""
    text = (message or "").strip()
    if not text.startswith("{"):
        return None
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and "step" in payload else None


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _unix_time(value: Any) -> Optional[str]:
    """Unix seconds (the engine's ``last_step_time``) as RFC 3339, if plausible."""
    seconds = _float(value)
    if seconds is None or seconds <= 0:
        return None
    try:
        return format_time(datetime.fromtimestamp(seconds, tz=timezone.utc))
    except (OverflowError, OSError, ValueError):
        return None


def format_duration(seconds: float) -> str:
    """``95`` -> ``1m35s``, ``3900`` -> ``1h05m``, ``200000`` -> ``2d07h``: short, for a column."""
    total = max(0, int(round(seconds)))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def steps_per_second(previous: Optional[TrainingProgress], step: Optional[int],
                     last_step_time: Optional[str]) -> Optional[float]:
    """The step rate between the previous read and this one, from the engine's step times.

    No new step since the previous read keeps the previous rate; a step count that went
    down (a gang restart resumed from an earlier checkpoint) has none yet.
    """
    if previous is None or step is None or previous.step is None:
        return None
    if step == previous.step:
        return previous.steps_per_second
    before, after = parse_time(previous.last_step_time), parse_time(last_step_time)
    if step < previous.step or before is None or after is None:
        return None
    elapsed = (after - before).total_seconds()
    return (step - previous.step) / elapsed if elapsed > 0 else None


def remaining_seconds(step: Optional[int], progress: Optional[float], max_steps: Optional[int],
                      rate: Optional[float]) -> Optional[float]:
    """Seconds left at ``rate`` steps/s: the steps to ``max_steps``, else those the progress
    fraction implies (``step`` steps made ``progress`` of the run)."""
    if progress is not None and progress >= 1.0:
        return 0.0
    if not rate or rate <= 0 or step is None:
        return None
    if max_steps is not None and max_steps > 0:
        left = max(0, max_steps - step)
    elif progress is not None and progress > 0 and step > 0:
        left = step * (1.0 - progress) / progress
    else:
        return None
    return left / rate


def to_status(
    payload: Dict[str, Any], now: datetime, previous: Optional[TrainingProgress] = None,
) -> Tuple[TrainingProgress, Optional[CheckpointStatus]]:
    """The status pieces one /progress payload fills (unknown keys ignored).

    ``lastUpdate`` is the time of the last optimizer step when the engine
    reports it (``last_step_time``, unix seconds), else the time of this read.
    ``previous`` (the status's last training block) gives the step rate and the ETA.
    """
    progress = _float(payload.get("progress"))
    last_step = _unix_time(payload.get("last_step_time"))
    step = _int(payload.get("step"))
    fraction = None if progress is None else round(min(max(progress, 0.0), 1.0), 4)
    rate = steps_per_second(previous, step, last_step)
    samples = _float(payload.get("samples_per_second"))
    left = remaining_seconds(step, fraction, _int(payload.get("max_steps")), rate)
    training = TrainingProgress(
        epoch=_int(payload.get("epoch")),
        step=step,
        loss=_float(payload.get("loss")),
        progress=fraction,
        last_update=last_step or format_time(now),
        last_step_time=last_step,
        steps_per_second=None if rate is None else float(f"{rate:.4g}"),
        samples_per_second=None if samples is None or samples <= 0 else float(f"{samples:.4g}"),
        remaining_seconds=None if left is None else int(round(left)),
        eta=None if left is None else format_duration(left),
        percent=None if fraction is None else f"{math.floor(fraction * 100)}%",  # 100% only at the end
    )
    if training.loss is not None:
        training.loss = float(f"{training.loss:.6g}")
    ckpt = payload.get("checkpoint")
    checkpoint = None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("path"), str) and ckpt["path"]:
        checkpoint = CheckpointStatus(
            path=ckpt["path"],
            step=_int(ckpt.get("step")),
            time=ckpt.get("time") if isinstance(ckpt.get("time"), str) else None,
        )
    return training, checkpoint


class RateLimiter:
    """At most one poll per job per ``interval`` seconds (in memory: it only
    throttles, it holds no state the operator needs after a restart)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: Dict[Tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def allow(self, key: Tuple[str, str]) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -math.inf) < self.interval:
                return False
            self._last[key] = now
            return True

    def forget(self, key: Tuple[str, str]) -> None:
        with self._lock:
            self._last.pop(key, None)


class TokenBucket:
    """At most ``rate`` takes per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._at = burst, clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


@dataclass(frozen=True)
class PollResult:
    """One read of a rank 0's /progress: its payload, or why there is none."""

    pod: str
    ip: str
    payload: Optional[Dict[str, Any]]
    error: str = ""


JobKey = Tuple[str, str]


class Poller:
    """Reads rank 0's /progress off the reconcile path, within its own budget.

    The reconcile asks (``request``) and later reads the answer (``latest``),
    dropping it (``applied``) once the status that carries it is written; the
    read runs on the poller's threads, and ``on_result`` is told when one is
    there so that the job is looked at again. Per job: at most one read per
    ``interval`` and one in flight, so a slow endpoint ties up one thread for at
    most the fetch timeout. Globally: at most ``rate`` reads per second and
    ``workers`` at once; a read the budget refuses is asked for again at the
    job's next reconcile, so with many jobs each job's progress is simply older.
    """

    def __init__(
        self, interval: float, rate: float = 20.0, workers: int = 8,
        fetch_fn: Callable[[str, int], Dict[str, Any]] = fetch,
        on_result: Optional[Callable[[JobKey], None]] = None,
    ) -> None:
        self.per_job = RateLimiter(interval)
        self.budget = TokenBucket(rate, burst=max(1.0, rate))
        self.on_result = on_result
        self._fetch = fetch_fn
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="volt-progress")
        self._lock = threading.Lock()
        self._in_flight: Set[JobKey] = set()
        self._results: Dict[JobKey, PollResult] = {}

    def request(self, key: JobKey, pod: str, ip: str, port: int) -> bool:
        """Start a read of ``pod``'s /progress unless the job's or the global budget says not yet."""
        with self._lock:
            if key in self._in_flight:
                return False
            if not self.per_job.allow(key):
                return False
            if not self.budget.take():
                self.per_job.forget(key)  # not read: the job may ask again at once
                return False
            self._in_flight.add(key)
        self._pool.submit(self._read, key, pod, ip, port)
        return True

    def latest(self, key: JobKey, pod: str, ip: str) -> Optional[PollResult]:
        """The newest answer read from ``pod`` at ``ip`` and not yet applied, if any."""
        with self._lock:
            result = self._results.get(key)
            if result is None or (result.pod, result.ip) != (pod, ip):
                return None
            return result

    def applied(self, key: JobKey, result: PollResult) -> None:
        """``result`` is in the job's status: drop it (unless a newer one replaced it). Until
        then a reconcile whose status write failed (a conflict) finds it again."""
        with self._lock:
            if self._results.get(key) is result:
                del self._results[key]

    def forget(self, key: JobKey) -> None:
        with self._lock:
            self._results.pop(key, None)
        self.per_job.forget(key)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _read(self, key: JobKey, pod: str, ip: str, port: int) -> None:
        try:
            result = PollResult(pod, ip, self._fetch(ip, port))
        except ProgressError as exc:
            result = PollResult(pod, ip, None, str(exc))
        except Exception as exc:  # noqa: BLE001 - a poller thread must survive any answer
            result = PollResult(pod, ip, None, f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._in_flight.discard(key)
            self._results[key] = result
        if self.on_result is not None:
            self.on_result(key)
