"""A work queue of jobs to reconcile, for the triggers no kopf handler waits on.

Pod and Workload events, a finished progress read and the periodic sweep only
say "look at this job again". Run one reconcile per event on kopf's threads
and a gang's few dozen pod events queue ahead of the jobs that were just
created, on the same threads, in arrival order. Here a job waits at most once:
asking again while it waits only adds the deleted pods' last states to its
entry, and a job being reconciled is never taken by a second worker; asked
again meanwhile, it is queued once more and looked at when the first look ends.
Jobs are taken in the order they first asked, with one exception: the
sweep's routine looks (every live job, every few seconds) wait behind every
look an event asked for, so at 500 jobs a pod's failure is not looked at
after 500 jobs in which nothing happened. (client-go's workqueue keeps the
first rules; its controllers have no sweep.)
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from .cache import JobKey

log = logging.getLogger("volt_operator.workqueue")

# A deleted pod's last state (its DELETED event's body), kept for the job's next look.
GonePod = Dict[str, Any]
Work = Callable[[JobKey, List[GonePod]], None]


class WorkQueue:
    """``add(key)`` asks for one more look at a job; ``workers`` threads call ``work``."""

    def __init__(self, work: Work, workers: int, name: str = "volt-queue") -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        self._work = work
        # Looks an event asked for, then the sweep's routine ones; a key is in one at most.
        self._urgent: "OrderedDict[JobKey, List[GonePod]]" = OrderedDict()
        self._routine: "OrderedDict[JobKey, List[GonePod]]" = OrderedDict()
        self._active: Set[JobKey] = set()
        self._changed = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def add(self, key: JobKey, gone: Iterable[GonePod] = (), routine: bool = False) -> None:
        """Ask for a look at ``key``; ``routine``: the sweep's, behind every other."""
        with self._changed:
            if self._stopped:
                return
            entry = self._urgent.get(key)
            if entry is None and not routine and key in self._routine:
                entry = self._urgent[key] = self._routine.pop(key)  # an event: it moves up
            if entry is None:
                entry = self._routine.get(key)
            if entry is None:
                (self._routine if routine else self._urgent)[key] = list(gone)
                self._changed.notify()
            else:
                entry.extend(gone)

    def __len__(self) -> int:
        """Jobs waiting for a worker (not those being reconciled now)."""
        with self._changed:
            return len(self._urgent) + len(self._routine)

    def stop(self, timeout: float = 10.0) -> None:
        """Drop what waits and let the workers finish the look they are in."""
        with self._changed:
            self._stopped = True
            self._urgent.clear()
            self._routine.clear()
            self._changed.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _take(self) -> Optional[Tuple[JobKey, List[GonePod]]]:
        with self._changed:
            while not self._stopped:
                for waiting in (self._urgent, self._routine):
                    # At most len(workers) entries are skipped: only those are active.
                    key = next((k for k in waiting if k not in self._active), None)
                    if key is not None:
                        self._active.add(key)
                        return key, waiting.pop(key)
                self._changed.wait()
            return None

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            key, gone = taken
            try:
                self._work(key, gone)
            except Exception:  # one broken job must not stop the others' looks
                log.exception("reconcile of %s/%s failed", *key)
            finally:
                with self._changed:
                    self._active.discard(key)
                    if key in self._urgent or key in self._routine:  # asked again meanwhile
                        self._changed.notify()


class Backoff:
    """When to look again at jobs whose last look failed: ``first`` seconds after the
    first failure, twice that after the next, up to ``cap``; a look that succeeds forgets
    the job. The sweep passes over a job until its time comes (client-go's per-item
    exponential rate limiter does the same for its work queues), so a permission the
    operator lacks costs the API server one refused request per job per ``cap`` seconds,
    not one per sweep. Looks an event asks for are not held back: the event may be the fix.
    """

    def __init__(self, first: float = 1.0, cap: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"need 0 < first <= cap, got first={first!r}, cap={cap!r}")
        self.first = first
        self.cap = cap
        self._clock = clock
        self._lock = threading.Lock()
        # Failing jobs -> (failures in a row, when the sweep may look again).
        self._failing: Dict[JobKey, Tuple[int, float]] = {}

    def failed(self, key: JobKey) -> float:
        """One more failure in a row; returns the delay before the sweep looks again."""
        with self._lock:
            count = self._failing.get(key, (0, 0.0))[0] + 1
            delay = min(self.cap, self.first * 2 ** min(count - 1, 32))
            self._failing[key] = (count, self._clock() + delay)
            return delay

    def succeeded(self, key: JobKey) -> bool:
        """A look at ``key`` succeeded; whether it had been failing."""
        with self._lock:
            return self._failing.pop(key, None) is not None

    def waiting(self, key: JobKey) -> bool:
        """Whether the sweep should pass over ``key`` now."""
        with self._lock:
            entry = self._failing.get(key)
            return entry is not None and self._clock() < entry[1]

    def failing(self, key: JobKey) -> bool:
        with self._lock:
            return key in self._failing

    def forget(self, key: JobKey) -> None:
        """The job is gone."""
        with self._lock:
            self._failing.pop(key, None)

    def __len__(self) -> int:
        """Jobs whose last look failed."""
        with self._lock:
            return len(self._failing)
