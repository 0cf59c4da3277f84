"""The reconcile work queue: one entry per job, first asked first taken, never one job twice at once."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from helpers import ManualClock
from volt_operator.cache import JobKey
from volt_operator.workqueue import Backoff, WorkQueue

WAIT_S = 10.0


class Recorder:
    """A work function that records each look and can hold a job's look until released."""

    def __init__(self) -> None:
        self.looks: List[Tuple[JobKey, List[str]]] = []
        self.started: Dict[JobKey, threading.Event] = {}
        self.release: Dict[JobKey, threading.Event] = {}
        self.done = threading.Condition()
        self.running: List[JobKey] = []
        self.overlap = False

    def hold(self, key: JobKey) -> None:
        self.started[key] = threading.Event()
        self.release[key] = threading.Event()

    def __call__(self, key: JobKey, gone: List[Dict[str, Any]]) -> None:
        with self.done:
            self.overlap |= key in self.running
            self.running.append(key)
        if key in self.started:
            self.started[key].set()
            assert self.release[key].wait(WAIT_S)
        with self.done:
            self.running.remove(key)
            self.looks.append((key, [p["metadata"]["name"] for p in gone]))
            self.done.notify_all()

    def wait_for(self, count: int) -> List[Tuple[JobKey, List[str]]]:
        with self.done:
            assert self.done.wait_for(lambda: len(self.looks) >= count, WAIT_S), self.looks
            return list(self.looks)


def pod(name: str) -> Dict[str, Any]:
    return {"metadata": {"name": name}}


BLOCKER = ("ns", "blocker")


@contextmanager
def busy_with(work: Recorder, key: JobKey = BLOCKER, workers: int = 1) -> Iterator[WorkQueue]:
    """A queue whose worker is inside a held look at ``key`` (``work.release[key]`` ends it)."""
    work.hold(key)
    queue = WorkQueue(work, workers=workers)
    try:
        queue.add(key)
        assert work.started[key].wait(WAIT_S)
        yield queue
    finally:
        queue.stop()


@pytest.mark.timeout(30)
def test_a_job_asked_many_times_while_waiting_is_looked_at_once_with_every_deleted_pod() -> None:
    work = Recorder()
    with busy_with(work) as queue:
        queue.add(("ns", "a"))
        queue.add(("ns", "b"), [pod("b-node-0")])
        queue.add(("ns", "a"), [pod("a-node-1")])
        queue.add(("ns", "a"))
        queue.add(("ns", "a"), [pod("a-node-0")])
        assert len(queue) == 2
        work.release[BLOCKER].set()
        looks = work.wait_for(3)
        # First asked, first taken: a before b, however often a asked after b.
        assert looks == [(BLOCKER, []), (("ns", "a"), ["a-node-1", "a-node-0"]),
                         (("ns", "b"), ["b-node-0"])]


@pytest.mark.timeout(30)
def test_the_sweeps_routine_looks_wait_behind_every_look_an_event_asked_for() -> None:
    work = Recorder()
    with busy_with(work) as queue:
        for name in ("a", "b", "c"):
            queue.add(("ns", name), routine=True)  # a sweep
        queue.add(("ns", "d"))  # an event: ahead of the sweep
        queue.add(("ns", "b"), [pod("b-node-0")])  # an event for a job the sweep queued: it moves up
        queue.add(("ns", "d"), routine=True)  # the next sweep does not move an event's look down
        assert len(queue) == 4
        work.release[BLOCKER].set()
        looks = work.wait_for(5)
        assert looks[1:] == [(("ns", "d"), []), (("ns", "b"), ["b-node-0"]), (("ns", "a"), []), (("ns", "c"), [])]


@pytest.mark.timeout(30)
def test_a_job_asked_again_while_being_looked_at_is_looked_at_again_after_never_beside() -> None:
    work = Recorder()
    key = ("ns", "busy")
    with busy_with(work, key, workers=4) as queue:
        queue.add(key, [pod("busy-node-1")])
        queue.add(("ns", "other"))
        # Three idle workers: the other job is taken, the busy one waits for its first look.
        assert work.wait_for(1) == [(("ns", "other"), [])]
        assert len(queue) == 1
        work.started[key].clear()
        work.release[key].set()
        looks = work.wait_for(3)
        assert looks[1:] == [(key, []), (key, ["busy-node-1"])]
        assert not work.overlap


@pytest.mark.timeout(30)
def test_a_failing_look_does_not_stop_the_worker() -> None:
    looked: List[JobKey] = []
    second = threading.Event()

    def work(key: JobKey, gone: List[Dict[str, Any]]) -> None:
        looked.append(key)
        if key == ("ns", "broken"):
            raise RuntimeError("a broken job")
        second.set()

    queue = WorkQueue(work, workers=1)
    try:
        queue.add(("ns", "broken"))
        queue.add(("ns", "fine"))
        assert second.wait(WAIT_S)
        assert looked == [("ns", "broken"), ("ns", "fine")]
    finally:
        queue.stop()


@pytest.mark.timeout(30)
def test_stop_drops_what_waits_and_refuses_more() -> None:
    looked: List[JobKey] = []
    queued = threading.Event()
    queue: WorkQueue

    def work(key: JobKey, gone: List[Dict[str, Any]]) -> None:
        looked.append(key)
        assert queued.wait(WAIT_S)
        queue.stop()  # while "second" waits behind this look

    queue = WorkQueue(work, workers=1)
    queue.add(("ns", "first"))
    queue.add(("ns", "second"))
    queued.set()
    for thread in threading.enumerate():
        if thread.name.startswith("volt-queue"):
            thread.join(WAIT_S)
            assert not thread.is_alive()
    queue.add(("ns", "third"))
    assert looked == [("ns", "first")]
    assert len(queue) == 0


def test_workers_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="workers"):
        WorkQueue(lambda key, gone: None, workers=0)



def test_a_failing_job_waits_twice_as_long_after_each_failure_up_to_the_cap() -> None:
    clock = ManualClock()
    backoff = Backoff(first=1.0, cap=10.0, clock=clock)
    key = ("ns", "job")
    assert not backoff.waiting(key) and not backoff.failing(key)
    assert [backoff.failed(key) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.failing(key) and len(backoff) == 1
    clock.now += 9.9
    assert backoff.waiting(key)
    clock.now += 0.2
    assert not backoff.waiting(key) and backoff.failing(key)  # due, still failing until a look succeeds
    assert backoff.waiting(("ns", "other")) is False
    assert backoff.succeeded(key) is True
    assert backoff.succeeded(key) is False and len(backoff) == 0
    assert backoff.failed(key) == 1.0  # a new run of failures starts again at first


def test_a_thousand_failures_in_a_row_stay_at_the_cap() -> None:
    backoff = Backoff(first=0.5, cap=60.0, clock=ManualClock())
    delays = [backoff.failed(("ns", "job")) for _ in range(1000)]
    assert delays[-1] == 60.0


def test_a_deleted_job_is_forgotten() -> None:
    backoff = Backoff(clock=ManualClock())
    backoff.failed(("ns", "gone"))
    backoff.forget(("ns", "gone"))
    assert len(backoff) == 0 and not backoff.waiting(("ns", "gone"))


@pytest.mark.parametrize("first, cap", [(0.0, 1.0), (2.0, 1.0), (-1.0, 5.0)])
def test_backoff_needs_a_positive_first_delay_below_the_cap(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="first"):
        Backoff(first=first, cap=cap)
