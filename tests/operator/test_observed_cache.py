"""The watch cache keeps the newest version of each object, the progress poller its budget,
and a job's reconciles do not queue up."""
from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional

import pytest
from kubernetes.client import Configuration

from volt_operator.cache import ObservedCache, slim_pod
from volt_operator.observed import pod_view
from volt_operator.kube import KubeClient
from volt_operator.progress import Poller, ProgressError
from volt_operator.reconciler import Reconciler

KEY = ("ns", "job")


def pod(name: str, rv: int, phase: str = "Running") -> Dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv),
                         "labels": {"volt.dev/job": "job"}}, "status": {"phase": phase}}


def phases(cache: ObservedCache) -> Dict[str, str]:
    return {p["metadata"]["name"]: p["status"]["phase"] for p in cache.pods(KEY) or []}


def test_pods_are_unknown_until_listed_then_kept_at_their_newest_version() -> None:
    cache = ObservedCache()
    cache.put_pod(pod("job-node-0", 10))
    assert cache.pods(KEY) is None  # the watch alone may not have delivered every pod yet
    cache.seed_pods(KEY, [pod("job-node-0", 9, "Pending"), pod("job-node-1", 11)], list_rv=11)
    assert phases(cache) == {"job-node-0": "Running", "job-node-1": "Running"}
    cache.put_pod(pod("job-node-1", 12, "Failed"))
    cache.put_pod(pod("job-node-1", 11))  # a late event of an older version
    assert phases(cache)["job-node-1"] == "Failed"


def test_a_deletion_is_not_undone_by_an_older_listing() -> None:
    cache = ObservedCache()
    cache.seed_pods(KEY, [pod("job-node-0", 5)], list_rv=5)
    cache.delete_pod(pod("job-node-0", 8, "Failed"))
    cache.seed_pods(KEY, [pod("job-node-0", 5)], list_rv=6)  # taken before the deletion
    assert phases(cache) == {}
    cache.put_pod(pod("job-node-0", 9, "Pending"))  # the next attempt's pod of that name
    assert phases(cache) == {"job-node-0": "Pending"}
    cache.delete_pod(pod("job-node-0", 7))  # the deletion of an older pod of that name
    assert phases(cache) == {"job-node-0": "Pending"}


def test_a_listing_drops_pods_deleted_before_it_and_keeps_newer_ones() -> None:
    cache = ObservedCache()
    cache.seed_pods(KEY, [pod("a", 3), pod("b", 4)], list_rv=4)
    cache.put_pod(pod("c", 9))
    cache.seed_pods(KEY, [pod("a", 3)], list_rv=6)
    assert set(phases(cache)) == {"a", "c"}


def test_jobs_and_services_keep_the_newest_news() -> None:
    cache = ObservedCache()
    job = {"metadata": {"namespace": "ns", "name": "job", "resourceVersion": "7"}}
    assert cache.job(KEY) == (False, None)
    cache.put_job(job)
    cache.put_job({"metadata": {**job["metadata"], "resourceVersion": "6"}, "spec": {}})
    assert cache.job(KEY) == (True, job)
    cache.delete_job(KEY, 8)
    assert cache.job(KEY) == (True, None)  # known gone: no read needed
    cache.put_job({"metadata": {**job["metadata"], "resourceVersion": "7"}})  # late
    assert cache.job(KEY) == (True, None)
    cache.put_job({"metadata": {**job["metadata"], "resourceVersion": "20"}})  # created again
    assert cache.job(KEY)[1] is not None

    service = {"metadata": {"namespace": "ns", "name": "job", "resourceVersion": "3"}}
    assert cache.service_exists(KEY) is None
    cache.put_service(service)
    cache.put_service({"metadata": {**service["metadata"], "resourceVersion": "4"}}, exists=False)
    cache.put_service(service)  # late
    assert cache.service_exists(KEY) is False


def test_the_cache_keeps_what_the_operator_reads_of_a_pod_and_little_else() -> None:
    full = {
        "metadata": {"name": "job-node-1", "namespace": "ns", "uid": "u-1", "resourceVersion": "42",
                     "labels": {"volt.dev/job": "job", "volt.dev/rank": "1", "volt.dev/attempt": "2"},
                     "ownerReferences": [{"uid": "job-uid", "kind": "TrainingJob", "name": "job"}],
                     "creationTimestamp": "2026-12-06T10:00:00Z", "deletionTimestamp": "2026-12-06T10:05:00Z",
                     "deletionGracePeriodSeconds": 30, "annotations": {"big": "x" * 5000},
                     "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {"x": "y" * 5000}}}]},
        "spec": {"nodeName": "node-3", "containers": [{"name": "trainer", "env": [
            {"name": "VOLT_TRAINER", "value": "{" + "x" * 5000 + "}"}]}]},
        "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory", "podIP": "10.0.0.7",
                   "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"},
                                  {"type": "Ready", "status": "False"}],
                   "containerStatuses": [{"name": "trainer", "state": {"terminated": {
                       "exitCode": 137, "reason": "OOMKilled", "message": "{}", "finishedAt": "2026-12-06T10:04:00Z"}}}],
                   "hostIP": "192.168.0.3", "qosClass": "Burstable"},
    }
    slim = slim_pod(full)
    assert pod_view(slim) == pod_view(full) and pod_view(slim, gone=True) == pod_view(full, gone=True)
    assert len(repr(slim)) * 10 < len(repr(full))
    slim["metadata"]["labels"]["volt.dev/rank"] = "9"  # a copy: the watch's body is not shared
    assert full["metadata"]["labels"]["volt.dev/rank"] == "1"


def test_a_relist_drops_the_pods_and_jobs_a_watch_gap_hid() -> None:
    cache = ObservedCache()
    other = ("other", "job")
    cache.seed_pods(KEY, [pod("job-node-0", 5), pod("job-node-1", 6)], list_rv=6)
    cache.seed_pods(other, [{**pod("job-node-0", 7), "metadata": {
        **pod("job-node-0", 7)["metadata"], "namespace": "other"}}], list_rv=7)
    cache.put_pod(pod("job-node-2", 12))  # created after the LIST below was taken
    # job-node-1 was deleted while the watch was down: the LIST at 10 lacks it.
    gone = cache.relist_pods([pod("job-node-0", 5)], list_rv=10, namespace="ns")
    assert {k: [p["metadata"]["name"] for p in v] for k, v in gone.items()} == {KEY: ["job-node-1"]}
    assert sorted(phases(cache)) == ["job-node-0", "job-node-2"]
    assert cache.pods(other) is not None and len(cache.pods(other) or []) == 1  # not in that LIST's namespace
    cache.put_pod(pod("job-node-1", 9))  # a late event of the deleted pod cannot bring it back
    assert "job-node-1" not in phases(cache)

    job = {"metadata": {"namespace": "ns", "name": "job", "resourceVersion": "4"}}
    newer = {"metadata": {"namespace": "ns", "name": "new", "resourceVersion": "30"}}
    cache.put_job(job)
    cache.put_job(newer)  # created after the LIST
    assert cache.relist_jobs([], list_rv=20, namespace="ns") == [KEY]
    assert cache.job(KEY) == (True, None) and cache.pods(KEY) is None
    assert cache.job(("ns", "new"))[1] is not None


def test_a_relist_finds_the_services_and_workloads_a_watch_gap_hid() -> None:
    def obj(name: str, rv: int, namespace: str = "ns", job: str = "job") -> Dict[str, Any]:
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": str(rv),
                             "labels": {"volt.dev/job": job}}}

    cache = ObservedCache()
    cache.put_service(obj("job", 5))
    cache.put_service(obj("kept", 6, job="kept"))
    cache.put_service(obj("new", 30, job="new"))  # created after the LIST below
    cache.put_service(obj("gone", 7, job="gone"), exists=False)  # its DELETED event came
    cache.put_service(obj("job", 8, namespace="other"))  # not in that LIST's namespace
    assert cache.relist_services([obj("kept", 6, job="kept")], list_rv=20, namespace="ns") == [KEY]
    assert cache.service_exists(KEY) is False
    assert [cache.service_exists(k) for k in [("ns", "kept"), ("ns", "new"), ("other", "job")]] == [True] * 3
    cache.put_service(obj("job", 4))  # a late event of the deleted Service cannot bring it back
    assert cache.service_exists(KEY) is False
    assert cache.relist_services([], list_rv=21, namespace="ns") == [("ns", "kept")]  # once each

    cache.put_workload(obj("trainingjob-job", 5))
    cache.put_workload(obj("trainingjob-new", 30, job="new"))
    assert cache.relist_workloads([], list_rv=20, namespace="ns") == [KEY]  # by its label
    assert cache.workload(("ns", "trainingjob-job")) == (True, None)
    assert cache.workload(("ns", "trainingjob-new"))[1] is not None


@pytest.mark.timeout(30)
def test_a_slow_progress_endpoint_holds_up_neither_the_caller_nor_other_jobs() -> None:
    release = threading.Event()
    arrived: List[Any] = []
    done = threading.Event()

    def fetch(ip: str, port: int) -> Dict[str, Any]:
        if ip == "10.0.0.1":  # the slow one
            release.wait(20)
            raise ProgressError("timed out")
        return {"step": 3}

    def on_result(key: Any) -> None:
        arrived.append(key)
        if ("ns", "fast") in arrived:
            done.set()

    poller = Poller(interval=60, rate=100, workers=2, fetch_fn=fetch, on_result=on_result)
    try:
        assert poller.request(("ns", "slow"), "slow-node-0", "10.0.0.1", 8000)  # returns at once
        assert poller.request(("ns", "fast"), "fast-node-0", "10.0.0.2", 8000)
        assert done.wait(10)
        result = poller.latest(("ns", "fast"), "fast-node-0", "10.0.0.2")
        assert result is not None and result.payload == {"step": 3}
        assert poller.latest(("ns", "fast"), "fast-node-1", "10.0.0.2") is None  # another pod's
        assert poller.latest(("ns", "fast"), "fast-node-0", "10.0.0.2") is result  # until applied
        poller.applied(("ns", "fast"), result)
        assert poller.latest(("ns", "fast"), "fast-node-0", "10.0.0.2") is None
        assert ("ns", "slow") not in arrived
    finally:
        release.set()
        poller.stop()


@pytest.mark.timeout(60)
def test_reads_keep_the_per_job_interval_and_the_global_spacing() -> None:
    """Each job asks again the moment its answer arrives (as a reconcile woken by it does);
    the poller still reads a job at most once per interval and starts reads 1/rate apart."""
    interval, rate = 0.3, 20.0
    starts: Dict[str, List[float]] = {"a": [], "b": []}
    enough = threading.Event()
    poller: Optional[Poller] = None

    def fetch(ip: str, port: int) -> Dict[str, Any]:
        starts[ip].append(time.monotonic())
        return {}

    def on_result(key: Any) -> None:
        if all(len(s) >= 4 for s in starts.values()):
            enough.set()
        elif poller is not None:
            poller.request(key, f"{key[1]}-node-0", key[1], 8000)

    poller = Poller(interval=interval, rate=rate, workers=4, fetch_fn=fetch, on_result=on_result)
    try:
        for job in ("a", "b"):
            poller.request(("ns", job), f"{job}-node-0", job, 8000)
        assert enough.wait(30), starts
    finally:
        poller.stop()
    for job_starts in starts.values():
        assert all(later - earlier >= interval * 0.99 for earlier, later in zip(job_starts, job_starts[1:])), starts
    every = sorted(t for job_starts in starts.values() for t in job_starts)
    assert all(later - earlier >= 0.99 / rate for earlier, later in zip(every, every[1:])), every


@pytest.mark.timeout(30)
def test_the_job_that_has_waited_longest_is_read_first() -> None:
    """Whatever order jobs ask in, and however often: a sweep asking in a fixed order
    cannot starve the jobs at its end."""
    started, gate = threading.Event(), threading.Event()
    order: List[str] = []
    finished = threading.Event()

    def fetch(ip: str, port: int) -> Dict[str, Any]:
        if ip == "first":
            started.set()
            gate.wait(20)
        order.append(ip)
        if len(order) == 4:
            finished.set()
        return {}

    poller = Poller(interval=60, rate=1000, workers=1, fetch_fn=fetch)
    try:
        poller.request(("ns", "first"), "first-node-0", "first", 8000)
        assert started.wait(10)  # the one worker holds "first"
        for job in ("b", "c", "d", "b", "c", "b"):  # asking again keeps a job's place
            poller.request(("ns", job), f"{job}-node-0", job, 8000)
        gate.set()
        assert finished.wait(10), order
    finally:
        poller.stop()
    assert order == ["first", "b", "c", "d"]


@pytest.mark.timeout(60)
def test_many_jobs_under_a_small_budget_are_all_read() -> None:
    """More jobs than the budget reads per interval, asked for by a sweep in a fixed order
    and by each job's own answer: every job is read, again and again."""
    jobs = [f"job-{i:02d}" for i in range(30)]
    reads: Dict[str, int] = {job: 0 for job in jobs}
    lock = threading.Lock()
    everyone_twice = threading.Event()
    stop_sweep = threading.Event()

    def fetch(ip: str, port: int) -> Dict[str, Any]:
        with lock:
            reads[ip] += 1
            if min(reads.values()) >= 2:
                everyone_twice.set()
        return {}

    poller = Poller(interval=0.2, rate=40, workers=2, fetch_fn=fetch,
                    on_result=lambda key: poller.request(key, f"{key[1]}-node-0", key[1], 8000))

    def sweep() -> None:
        while not stop_sweep.wait(0.05):
            for job in jobs:
                poller.request(("ns", job), f"{job}-node-0", job, 8000)

    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    try:
        assert everyone_twice.wait(40), reads
    finally:
        stop_sweep.set()
        poller.stop()
        sweeper.join(5)


@pytest.mark.timeout(30)
def test_a_reconcile_that_finds_its_job_busy_returns_at_once_and_the_running_one_looks_again() -> None:
    """No caller waits behind one job: the second call leaves a note (and the deleted pod
    it carried) for the reconcile that is running."""
    entered, release = threading.Event(), threading.Event()
    seen: List[List[str]] = []

    class Blocking(Reconciler):
        def _reconcile_retrying(self, namespace: str, name: str, gone: List[Dict[str, Any]]) -> Optional[float]:
            seen.append([p["metadata"]["name"] for p in gone])
            if len(seen) == 1:
                entered.set()
                release.wait(10)
            return 5.0

    reconciler = Blocking(KubeClient(Configuration()))
    try:
        first = threading.Thread(target=reconciler.reconcile, args=("ns", "job"))
        first.start()
        assert entered.wait(10)
        assert reconciler.reconcile("ns", "job", [pod("job-node-1", 7, "Failed")]) is None  # at once
        assert reconciler.reconcile("ns", "job") is None
        release.set()
        first.join(10)
        assert seen == [[], ["job-node-1"]]  # one more look, with the deleted pod's last state
        assert reconciler.reconcile("ns", "job") == 5.0 and len(seen) == 3  # not busy any more
    finally:
        release.set()
        reconciler.poller.stop()
