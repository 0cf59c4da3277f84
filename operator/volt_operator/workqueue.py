"""A work queue of jobs to reconcile, for the triggers no kopf handler waits on.

Pod and Workload events, a finished progress read and the periodic sweep only
say "look at this job again". Run one reconcile per event on kopf's threads
and a gang's few dozen pod events queue ahead of the jobs that were just
created, on the same threads, in arrival order. Here a job waits at most once:
asking again while it waits only adds the deleted pods' last states to its
entry, and a job being reconciled is never taken by a second worker; asked
again meanwhile, it is queued once more and looked at when the first look ends.
Jobs are taken in the order they first asked. (Kubernetes' controllers keep
the same rules in client-go's workqueue.)
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

log = logging.getLogger("volt_operator.workqueue")

JobKey = Tuple[str, str]
# A deleted pod's last state (its DELETED event's body), kept for the job's next look.
GonePod = Dict[str, Any]
Work = Callable[[JobKey, List[GonePod]], None]


class WorkQueue:
    """``add(key)`` asks for one more look at a job; ``workers`` threads call ``work``."""

    def __init__(self, work: Work, workers: int, name: str = "volt-queue") -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        self._work = work
        self._waiting: "OrderedDict[JobKey, List[GonePod]]" = OrderedDict()
        self._active: Set[JobKey] = set()
        self._changed = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def add(self, key: JobKey, gone: Iterable[GonePod] = ()) -> None:
        with self._changed:
            if self._stopped:
                return
            entry = self._waiting.get(key)
            if entry is None:
                self._waiting[key] = list(gone)
                self._changed.notify()
            else:
                entry.extend(gone)

    def __len__(self) -> int:
        """Jobs waiting for a worker (not those being reconciled now)."""
        with self._changed:
            return len(self._waiting)

    def stop(self, timeout: float = 10.0) -> None:
        """Drop what waits and let the workers finish the look they are in."""
        with self._changed:
            self._stopped = True
            self._waiting.clear()
            self._changed.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _take(self) -> Optional[Tuple[JobKey, List[GonePod]]]:
        with self._changed:
            while not self._stopped:
                # At most len(workers) entries are skipped: only those are active.
                key = next((k for k in self._waiting if k not in self._active), None)
                if key is not None:
                    self._active.add(key)
                    return key, self._waiting.pop(key)
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
                    if key in self._waiting:  # asked again while it was being looked at
                        self._changed.notify()
