"""The reconciler reads from the watch cache: a warm cache sends no read to the API server.

Against the real local API server. The in-process tests count the reconciler's
requests with a client that records each one on its way to the server; the
operator test counts the running operator's requests in the API server's audit
log (the reconciler's user agent is ``volt-operator``; kopf's watches say ``kopf/...``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from kubernetes.client import Configuration

from job_helpers import idle_job_manifest
from operator_process import (OperatorProcess, admin_configuration, free_port, get_json, job_status,
                              queued_reconciles, wait_until)
from volt_operator.cache import ObservedCache
from volt_operator.kube import USER_AGENT, KubeClient
from volt_operator.kueue_gate import KueueGate
from volt_operator.reconciler import Reconciler, Resyncer
from volt_operator.testing.cluster import LocalCluster


class RecordingClient(KubeClient):
    """The operator's client, recording (method, path) of every request it sends."""

    def __init__(self, configuration: Configuration) -> None:
        super().__init__(configuration)
        self.calls: List[Tuple[str, str]] = []

    def request(self, method: str, path: str, body: Any = None,
                query: Optional[Dict[str, str]] = None,
                content_type: str = "application/json") -> Any:
        self.calls.append((method, path))
        return super().request(method, path, body, query, content_type)


def _client(kube: Any) -> RecordingClient:
    return RecordingClient(admin_configuration(kube))


def _reads(calls: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    return [c for c in calls if c[0] == "GET"]


@pytest.mark.timeout(240)
def test_a_reconcile_on_a_warm_cache_reads_nothing(crd: Any, namespace: str) -> None:
    kube = crd
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest("warm"))
    client, cache = _client(kube), ObservedCache()
    reconciler = Reconciler(client, cache=cache)
    key = (namespace, "warm")
    try:
        # Cold: the job is read once; a job never reconciled (no status) has no pods yet (they
        # are created after the first status write), so they are not listed; its Service is
        # created (no read either).
        reconciler.reconcile(*key)
        reads = _reads(client.calls)
        kinds = sorted(path.split("/namespaces/")[1].split("/")[1] for _, path in reads)
        assert kinds == ["trainingjobs"], reads
        created = [path for method, path in client.calls if method == "POST" and path.endswith("/pods")]
        assert len(created) == 2

        # Warm: the pods it created are known as the create returned them (the next look
        # reports them pending, a status write and no read); then nothing changes, nothing is sent.
        client.calls.clear()
        reconciler.reconcile(*key)
        assert _reads(client.calls) == []
        client.calls.clear()
        reconciler.reconcile(*key)
        assert client.calls == []

        # The pods run; the watch would deliver their new versions (here the test reads them).
        def running() -> Optional[List[Dict[str, Any]]]:
            pods = get_json(kube, "-n", namespace, "pods", "-l", "volt.dev/job=warm")["items"]
            ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in p["status"].get("conditions") or [])]
            return pods if len(ready) == 2 else None

        # Someone else writes the job meanwhile (the cached version is now stale), and the
        # pods run: the watch would deliver their new versions (here the test reads them).
        kube.kubectl("annotate", "-n", namespace, "tj", "warm", "example.com/touched=yes")
        for pod in wait_until("both pods Ready", running, 120):
            cache.put_pod(pod)
        client.calls.clear()
        reconciler.reconcile(*key)
        # The status write's resourceVersion guard refused the cached version; the reconciler
        # does not read the job: it looks again when the watch brings the newer one.
        status_path = f"/apis/volt.dev/v1alpha1/namespaces/{namespace}/trainingjobs/warm"
        assert _reads(client.calls) == [], client.calls
        assert [c for c in client.calls if c[0] == "PATCH"] == [("PATCH", status_path + "/status")]
        assert job_status(kube, namespace, "warm")["phase"] == "Pending"

        # The watch delivers the newer job: the next look writes on it, still without a read.
        woken: List[Any] = []
        reconciler.wake = woken.append
        cache.put_job(get_json(kube, "-n", namespace, "tj", "warm"))
        reconciler.job_changed(key)
        assert woken == [key]
        client.calls.clear()
        reconciler.reconcile(*key)
        assert _reads(client.calls) == [], client.calls
        assert job_status(kube, namespace, "warm")["phase"] == "Running"

        client.calls.clear()
        reconciler.reconcile(*key)
        assert _reads(client.calls) == []

        # A restarted operator (a cold cache, a job with a status): its pods are listed once;
        # the Service it does not know yet is created, and the 409 says it exists.
        restarted_client = _client(kube)
        restarted = Reconciler(restarted_client, cache=ObservedCache())
        try:
            restarted.reconcile(*key)
            kinds = sorted(path.split("/namespaces/")[1].split("/")[1] for _, path in _reads(restarted_client.calls))
            assert kinds == ["pods", "trainingjobs"], restarted_client.calls
            assert not [c for c in restarted_client.calls if c[0] == "POST" and c[1].endswith("/pods")]
            assert restarted.cache.service_exists(key) is True
        finally:
            restarted.poller.stop()
    finally:
        reconciler.poller.stop()


@pytest.mark.timeout(240)
def test_a_cache_that_missed_the_pods_creates_no_duplicate(crd: Any, namespace: str) -> None:
    """A cache that believes the gang has no pods (it has) asks to create them: the API
    server refuses the names it already has (409), nothing is created twice."""
    kube = crd
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest("twice", suspend=False))
    first = Reconciler(_client(kube))
    first.reconcile(namespace, "twice")
    before = {p["metadata"]["uid"] for p in get_json(kube, "-n", namespace, "pods", "-l", "volt.dev/job=twice")["items"]}
    assert len(before) == 2

    client, stale = _client(kube), ObservedCache()
    stale.seed_pods((namespace, "twice"), [], list_rv=0)  # "listed" before the pods existed
    try:
        Reconciler(client, cache=stale).reconcile(namespace, "twice")
        after = {p["metadata"]["uid"] for p in get_json(kube, "-n", namespace, "pods", "-l", "volt.dev/job=twice")["items"]}
        assert after == before
        assert [m for m, p in client.calls if p.endswith("/pods")] == ["POST", "POST"]  # both refused: 409
    finally:
        first.poller.stop()


@pytest.mark.timeout(240)
def test_a_pod_deleted_during_a_watch_gap_restarts_the_gang_at_the_next_relist(
        crd: Any, namespace: str) -> None:
    """No DELETED event reaches the cache (no watch runs here, as during a gap): the cache
    keeps the pod and the Service, and nothing happens until the periodic LIST finds them gone."""
    kube = crd
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest("gap", suspend=False))
    cache = ObservedCache()
    reconciler = Reconciler(_client(kube), cache=cache)
    resyncer = Resyncer(reconciler, [namespace], interval=3600)
    key = (namespace, "gap")
    pods_path = f"/api/v1/namespaces/{namespace}/pods?labelSelector=volt.dev/job=gap"
    job_path = f"/apis/volt.dev/v1alpha1/namespaces/{namespace}/trainingjobs?fieldSelector=metadata.name=gap"

    def ready(pods: Dict[str, Dict[str, Any]]) -> Optional[List[Dict[str, Any]]]:
        up = [p for p in pods.values() if any(c["type"] == "Ready" and c["status"] == "True"
                                              for c in p["status"].get("conditions") or [])]
        return up if len(up) == 2 else None

    try:
        reconciler.reconcile(*key)
        for pod in kube.watch(pods_path, ready, 120, "both pods Ready"):
            cache.put_pod(pod)
        reconciler.reconcile(*key)
        assert job_status(kube, namespace, "gap")["phase"] == "Running"

        kube.kubectl("delete", "-n", namespace, "pod", "gap-node-1", "--wait=true")
        kube.kubectl("delete", "-n", namespace, "service", "gap", "--wait=true")
        reconciler.reconcile(*key)  # the cache still holds the pod and the Service: nothing to do
        assert job_status(kube, namespace, "gap").get("restarts", 0) == 0
        assert "gap-node-1" in {p["metadata"]["name"] for p in cache.pods(key) or []}
        assert cache.service_exists(key) is True

        resyncer.relist()
        assert "gap-node-1" not in {p["metadata"]["name"] for p in cache.pods(key) or []}
        kube.watch(job_path, lambda jobs: (jobs.get("gap", {}).get("status") or {}).get("restarts", 0) >= 1,
                   120, "the gang restart the lost pod causes")
        kube.watch(f"/api/v1/namespaces/{namespace}/services?fieldSelector=metadata.name=gap",
                   lambda services: "gap" in services, 60, "the lost Service created again")

        kube.kubectl("delete", "-n", namespace, "tj", "gap", "--wait=true")
        resyncer.relist()
        assert cache.job(key) == (True, None)
    finally:
        resyncer.stop()
        reconciler.poller.stop()


@pytest.mark.timeout(120)
def test_a_deletion_from_a_stale_view_spares_the_newer_pod_of_that_name(kube: Any, namespace: str) -> None:
    """Every attempt reuses the pod names: a deletion decided on an old pod's view names its
    uid, so the API server refuses it (409) for the newer pod that took the name."""
    client = _client(kube)
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "same-name"},
            "spec": {"containers": [{"name": "c", "image": "volt-trainer:test"}]}}
    old = client.create(namespace, "pods", body)
    assert old is not None
    client.delete_pod(namespace, "same-name", grace_seconds=0)
    kube.kubectl("wait", "-n", namespace, "--for=delete", "pod/same-name", "--timeout=60s")
    new = client.create(namespace, "pods", body)
    assert new is not None and new["metadata"]["uid"] != old["metadata"]["uid"]

    assert client.delete_pod(namespace, "same-name", grace_seconds=0, uid=old["metadata"]["uid"]) is None
    assert get_json(kube, "-n", namespace, "pod", "same-name")["metadata"]["uid"] == new["metadata"]["uid"]
    assert client.delete_pod(namespace, "same-name", grace_seconds=0, uid=new["metadata"]["uid"]) is not None
    kube.kubectl("wait", "-n", namespace, "--for=delete", "pod/same-name", "--timeout=60s")


def _operator_requests(kube: LocalCluster, namespace: str, since: str) -> List[Dict[str, Any]]:
    """The reconciler's requests about ``namespace`` after ``since`` (an audit timestamp)."""
    return [event for event in kube.audit_events()
            if event.get("stage") == "ResponseComplete" and event.get("userAgent") == USER_AGENT
            and (event.get("objectRef") or {}).get("namespace") == namespace
            and event["requestReceivedTimestamp"] > since]


@pytest.mark.timeout(300)
def test_the_resync_of_unchanged_jobs_sends_nothing(crd: Any, namespace: str, tmp_path: Path) -> None:
    """The running operator with suspended jobs and a running one: once they are settled,
    several resync sweeps over them send the API server no request (audit log)."""
    kube = crd
    for name in ("idle-a", "idle-b"):
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest(name, suspend=True))
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest(
        "busy", trainer={"numNodes": 2, "devices": 1, "accelerator": "cpu", "maxEpochs": 1}))
    port = free_port()
    operator = OperatorProcess(kube, [namespace], tmp_path, metrics_port=port).start()
    try:
        def phases() -> Dict[str, str]:
            return {j["metadata"]["name"]: (j.get("status") or {}).get("phase", "")
                    for j in get_json(kube, "-n", namespace, "tj")["items"]}

        wait_until("jobs settled", lambda: phases() == {
            "idle-a": "Suspended", "idle-b": "Suspended", "busy": "Running"}, 120)

        # Settled: a whole sweep over the three jobs went by with no request about them
        # (busy's rank 0 serves no /progress: that is written once, then changes nothing).
        def settled() -> Optional[str]:
            last = max((e["requestReceivedTimestamp"]
                        for e in _operator_requests(kube, namespace, "")), default="")
            count = queued_reconciles(port)
            wait_until("a resync sweep", lambda: queued_reconciles(port) >= count + 3, 30)
            return last if not _operator_requests(kube, namespace, last) else None

        since = wait_until("a sweep that sent nothing", settled, 90)
        # Three more sweeps (2 s apart in the tests), each answered from the cache.
        count = queued_reconciles(port)
        wait_until("three resync sweeps", lambda: queued_reconciles(port) >= count + 9, 60)
        sent = _operator_requests(kube, namespace, since)
        reads = [e for e in sent if e["verb"] in ("get", "list")]
        assert not reads, [(e["verb"], e["requestURI"]) for e in reads]
        print(f"requests by the reconciler over three sweeps of 3 jobs: {len(sent)}: "
              f"{[(e['verb'], e['requestURI']) for e in sent]}")
    finally:
        operator.stop()
        print(operator.logs()[-4000:])


@pytest.mark.timeout(180)
def test_the_workload_relist_without_kueue_installed_finds_nothing_and_does_not_raise(
        crd: Any, namespace: str) -> None:
    """An operator run with --kueue on a cluster without Kueue: its jobs say KueueNotInstalled,
    and the periodic re-list must not stop at the Workloads (it would skip later namespaces).
    A Kueue test earlier in the run leaves Kueue's CRDs installed: the Workload CRD is taken
    away for this test and put back after it."""
    kube = crd
    if any(c.name == "kueue" and c.alive() for c in kube.components):
        pytest.skip("Kueue's manager runs on this cluster; its Workload CRD cannot be taken away")
    name = "workloads.kueue.x-k8s.io"
    saved = next((c for c in get_json(kube, "crd")["items"] if c["metadata"]["name"] == name), None)
    if saved is not None:
        kube.kubectl("delete", "crd", name, "--wait=true", timeout=120)
    try:
        client = _client(kube)
        assert KueueGate(client, ObservedCache()).relist(namespace) == []
        assert client.calls == [("GET", f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{namespace}/workloads")]
    finally:
        if saved is not None:
            meta = {k: saved["metadata"][k] for k in ("name", "labels", "annotations") if k in saved["metadata"]}
            kube.kubectl("create", "-f", "-", input=json.dumps(
                {"apiVersion": saved["apiVersion"], "kind": saved["kind"], "metadata": meta, "spec": saved["spec"]}))
            kube.watch(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions?fieldSelector=metadata.name={name}",
                       lambda crds: name in crds and any(
                           c["type"] == "Established" and c["status"] == "True"
                           for c in (crds[name].get("status") or {}).get("conditions") or []),
                       60, "the Workload CRD served again")
