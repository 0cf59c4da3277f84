"""The watch cache keeps the newest version of each object, the progress poller its budget,
and a job's reconciles do not queue up."""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

import pytest
from kubernetes.client import Configuration

from volt_operator.cache import ObservedCache
from volt_operator.kube import KubeClient
from volt_operator.progress import Poller, ProgressError, TokenBucket
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


def test_token_bucket_spends_its_burst_then_refills_at_its_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=2.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    now[0] = 0.5
    assert bucket.take() and not bucket.take()


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
        assert not poller.request(("ns", "slow"), "slow-node-0", "10.0.0.1", 8000)  # one in flight
        assert poller.request(("ns", "fast"), "fast-node-0", "10.0.0.2", 8000)
        assert done.wait(10)
        result = poller.latest(("ns", "fast"), "fast-node-0", "10.0.0.2")
        assert result is not None and result.payload == {"step": 3}
        assert poller.latest(("ns", "fast"), "fast-node-1", "10.0.0.2") is None  # another pod's
        assert poller.latest(("ns", "fast"), "fast-node-0", "10.0.0.2") is result  # until applied
        poller.applied(("ns", "fast"), result)
        assert poller.latest(("ns", "fast"), "fast-node-0", "10.0.0.2") is None
        assert not poller.request(("ns", "fast"), "fast-node-0", "10.0.0.2", 8000)  # per-job interval
    finally:
        release.set()
        poller.stop()


def test_the_global_budget_refuses_reads_past_its_rate_and_lets_the_job_ask_again() -> None:
    poller = Poller(interval=0.0, rate=1, workers=1, fetch_fn=lambda ip, port: {})
    try:
        assert poller.request(("ns", "a"), "a-node-0", "10.0.0.1", 8000)
        assert not poller.request(("ns", "b"), "b-node-0", "10.0.0.2", 8000)  # budget spent
        assert ("ns", "b") not in poller.per_job._last  # refused reads keep no per-job clock
    finally:
        poller.stop()


@pytest.mark.timeout(30)
def test_a_reconcile_that_finds_its_job_busy_returns_at_once_and_the_running_one_looks_again() -> None:
    """kopf's workers never queue behind one job: the second call leaves a note (and the
    deleted pod it carried) for the reconcile that is running."""
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
        assert reconciler.reconcile("ns", "job", pod("job-node-1", 7, "Failed")) is None  # at once
        assert reconciler.reconcile("ns", "job") is None
        release.set()
        first.join(10)
        assert seen == [[], ["job-node-1"]]  # one more look, with the deleted pod's last state
        assert reconciler.reconcile("ns", "job") == 5.0 and len(seen) == 3  # not busy any more
    finally:
        release.set()
        reconciler.poller.stop()
