"""Training progress from rank 0's engine, polled at a bounded rate.

The engine's Prometheus callback serves ``GET /progress`` (JSON) on
``VOLT_METRICS_PORT`` of every node pod; the operator reads node 0 (local
rank 0) and mirrors epoch, step, loss and the latest checkpoint into status.
Pods need no API credentials for this, and a slow or dead endpoint costs one
short timeout on the ``Poller``'s own threads, never a reconcile's time.
"""
from __future__ import annotations

import heapq
import json
import math
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .api import CheckpointStatus, TrainingProgress, format_time, parse_time
from .cache import JobKey

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


@dataclass(frozen=True)
class PollResult:
    """One read of a rank 0's /progress: its payload, or why there is none."""

    pod: str
    ip: str
    payload: Optional[Dict[str, Any]]
    error: str = ""


@dataclass(frozen=True)
class _Target:
    """Where a job wants its next read, since when it has waited for one, and when its
    interval lets that read start (fixed while it waits: only a started read moves it)."""

    pod: str
    ip: str
    port: int
    since: float
    due: float


class Poller:
    """Reads rank 0's /progress off the reconcile path, within its own budget.

    The reconcile asks (``request``) and later reads the answer (``latest``),
    dropping it (``applied``) once the status that carries it is written; the
    reads run on the poller's own threads, and ``on_result`` is told when one
    is there so that the job is looked at again (which asks for the next read).

    The poller, not the callers, decides when a read starts, so that the budget
    is shared fairly however often or in whatever order jobs ask:

    * per job: one read per ``interval`` and never two at once;
    * globally: reads start at least ``1 / rate`` seconds apart, on at most
      ``workers`` threads, so a slow endpoint ties up one thread for at most
      the fetch timeout and the backlog never grows past one entry per job;
    * the job that has waited longest goes first: past ``rate x interval``
      jobs each one's progress is older, never absent.
    """

    def __init__(
        self, interval: float, rate: float = 20.0, workers: int = 8,
        fetch_fn: Callable[[str, int], Dict[str, Any]] = fetch,
        on_result: Optional[Callable[[JobKey], None]] = None,
    ) -> None:
        if rate <= 0 or workers < 1:
            raise ValueError(f"Poller needs rate > 0 and workers >= 1, got rate={rate}, workers={workers}")
        self.interval = interval
        self.spacing = 1.0 / rate
        self.on_result = on_result
        self._fetch = fetch_fn
        self._ready = threading.Condition()
        self._wanted: Dict[JobKey, _Target] = {}
        # (due, key) of the wanted reads, earliest first; an entry whose key no longer
        # wants a read at that time is stale and dropped when it comes up (lazy deletion),
        # so asking, cancelling and choosing cost O(log jobs), not a scan of every job.
        self._queue: List[Tuple[float, JobKey]] = []
        self._last_start: Dict[JobKey, float] = {}
        self._in_flight: Set[JobKey] = set()
        self._results: Dict[JobKey, PollResult] = {}
        self._next_start = -math.inf
        self._stopped = False
        self._workers = workers
        self._started = False  # the threads start with the first request

    def request(self, key: JobKey, pod: str, ip: str, port: int) -> bool:
        """Ask for a read of ``pod``'s /progress, started when the budgets allow; returns
        whether this asked anew (False: a read was wanted already, now aimed at ``pod``)."""
        with self._ready:
            previous = self._wanted.get(key)
            if previous is not None:  # same wait, same turn: nothing for the threads to redo
                self._wanted[key] = _Target(pod, ip, port, previous.since, previous.due)
                return False
            since = time.monotonic()
            due = max(since, self._last_start.get(key, -math.inf) + self.interval)
            self._wanted[key] = _Target(pod, ip, port, since, due)
            heapq.heappush(self._queue, (due, key))
            if not self._started:
                self._started = True
                for index in range(self._workers):
                    threading.Thread(target=self._work, name=f"volt-progress-{index}", daemon=True).start()
            self._ready.notify()
        return True

    def cancel(self, key: JobKey) -> None:
        """The job wants no more reads (it is not running); one in flight still answers."""
        with self._ready:
            self._wanted.pop(key, None)

    def latest(self, key: JobKey, pod: str, ip: str) -> Optional[PollResult]:
        """The newest answer read from ``pod`` at ``ip`` and not yet applied, if any."""
        with self._ready:
            result = self._results.get(key)
            if result is None or (result.pod, result.ip) != (pod, ip):
                return None
            return result

    def applied(self, key: JobKey, result: PollResult) -> None:
        """``result`` is in the job's status: drop it (unless a newer one replaced it). Until
        then a reconcile whose status write failed (a conflict) finds it again."""
        with self._ready:
            if self._results.get(key) is result:
                del self._results[key]

    def forget(self, key: JobKey) -> None:
        with self._ready:
            self._wanted.pop(key, None)
            self._results.pop(key, None)
            self._last_start.pop(key, None)

    def stop(self) -> None:
        """Start no more reads; one in flight ends within the fetch timeout."""
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    def _first(self) -> Optional[Tuple[float, JobKey]]:
        """The earliest due read that may start (none in flight for its job), dropping stale
        entries. A job whose read is in flight leaves the queue; it comes back when that ends."""
        while self._queue:
            due, key = self._queue[0]
            target = self._wanted.get(key)
            if target is not None and target.due == due and key not in self._in_flight:
                return due, key
            heapq.heappop(self._queue)
        return None

    def _next(self) -> Optional[Tuple[JobKey, _Target]]:
        """The next read to start, waiting until its time comes; None once stopped."""
        with self._ready:
            while not self._stopped:
                first = self._first()
                if first is None:
                    self._ready.wait()
                    continue
                due, key = first  # whoever has waited longest
                now = time.monotonic()
                start = max(due, self._next_start)
                if start > now:
                    self._ready.wait(start - now)  # a new request may come due sooner
                    continue
                heapq.heappop(self._queue)
                target = self._wanted.pop(key)
                self._in_flight.add(key)
                self._last_start[key] = now
                self._next_start = now + self.spacing
                return key, target
            return None

    def _work(self) -> None:
        while True:
            chosen = self._next()
            if chosen is None:
                return
            key, target = chosen
            try:
                result = PollResult(target.pod, target.ip, self._fetch(target.ip, target.port))
            except ProgressError as exc:
                result = PollResult(target.pod, target.ip, None, str(exc))
            except Exception as exc:  # noqa: BLE001 - a poller thread must survive any answer
                result = PollResult(target.pod, target.ip, None, f"{type(exc).__name__}: {exc}")
            with self._ready:
                self._in_flight.discard(key)
                stopped = self._stopped
                if key in self._last_start:  # not forgotten meanwhile
                    self._results[key] = result
                again = self._wanted.get(key)
                if again is not None:  # asked again meanwhile: back in the queue
                    heapq.heappush(self._queue, (again.due, key))
                    self._ready.notify()
            if self.on_result is not None and not stopped:
                self.on_result(key)
