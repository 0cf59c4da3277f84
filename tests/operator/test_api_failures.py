"""Requests of the operator's that the API server refuses: the job says why (condition
Reconciled / Created and a Warning event), the sweep retries with backoff, and the job
recovers once the operator may act. Against the real local API server, with an operator
holding a service account token whose Role lacks one verb at a time."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest
from kubernetes import config as kube_config
from kubernetes.client import Configuration

from helpers import ManualClock, free_port
from job_helpers import idle_job_manifest
from operator_process import get_json, job_status, wait_until
from volt_operator.cache import ObservedCache
from volt_operator.kube import ApiError, ApiUnreachable, KubeClient, describe_request
from volt_operator.reconciler import Reconciler, Resyncer
from volt_operator.workqueue import Backoff


@pytest.mark.parametrize("method, path, described", [
    ("DELETE", "/api/v1/namespaces/ns/pods/job-node-0", "delete pods/job-node-0 in namespace ns"),
    ("POST", "/api/v1/namespaces/ns/pods", "create pods in namespace ns"),
    ("PATCH", "/apis/volt.dev/v1alpha1/namespaces/ns/trainingjobs/job/status",
     "patch trainingjobs.volt.dev/job/status in namespace ns"),
    ("DELETE", "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads/trainingjob-job-1a2b3",
     "delete workloads.kueue.x-k8s.io/trainingjob-job-1a2b3 in namespace ns"),
    ("GET", "/apis/kueue.x-k8s.io/v1beta2/resourceflavors/h100?x=1", "get resourceflavors.kueue.x-k8s.io/h100"),
    ("GET", "/api/v1/pods", "get pods"),
    ("GET", "/version", "GET /version"),
])
def test_a_request_is_described_in_rbacs_words(method: str, path: str, described: str) -> None:
    assert describe_request(method, path) == described



# What the operator needs for a job without Kueue or NetworkPolicies, less what a test leaves out.
RULES: List[Dict[str, Any]] = [
    {"apiGroups": ["volt.dev"], "resources": ["trainingjobs"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["volt.dev"], "resources": ["trainingjobs/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


def _grant(kube: Any, namespace: str, account: str, pod_verbs: List[str]) -> None:
    """The account's Role, with these verbs on pods; returns once the authorizer applies it."""
    rules = [dict(r, verbs=pod_verbs) if r["resources"] == ["pods"] else r for r in RULES]
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": account}, "rules": rules}))
    user = f"system:serviceaccount:{namespace}:{account}"
    for verb in ("create", "delete"):
        allowed = verb in pod_verbs
        wait_until(f"{user} {'may' if allowed else 'may not'} {verb} pods", lambda: (kube.kubectl(
            "auth", "can-i", verb, "pods", "-n", namespace, "--as", user, check=False
        ).returncode == 0) == allowed, 30)


def _account_client(kube: Any, namespace: str, account: str) -> KubeClient:
    kube.kubectl("create", "serviceaccount", account, "-n", namespace)
    kube.kubectl("create", "rolebinding", account, f"--role={account}",
                 f"--serviceaccount={namespace}:{account}", "-n", namespace)
    configuration = Configuration()
    kube_config.load_kube_config(config_file=str(kube.service_account_kubeconfig(namespace, account)),
                                 client_configuration=configuration)
    return KubeClient(configuration)


def _reconciled(kube: Any, namespace: str, name: str) -> Optional[Dict[str, Any]]:
    conds = job_status(kube, namespace, name).get("conditions") or []
    return next((c for c in conds if c["type"] == "Reconciled"), None)


def _warnings(kube: Any, namespace: str, reason: str) -> List[Dict[str, Any]]:
    return get_json(kube, "-n", namespace, "events", "--field-selector",
                    f"involvedObject.kind=TrainingJob,reason={reason}")["items"]


@pytest.mark.timeout(240)
def test_a_forbidden_request_is_explained_on_the_job_retried_with_backoff_and_recovered(
        crd: Any, namespace: str) -> None:
    kube = crd
    _grant(kube, namespace, "narrow", ["get", "list", "watch"])
    client = _account_client(kube, namespace, "narrow")
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest("locked"))
    key = (namespace, "locked")
    clock = ManualClock()
    reconciler = Reconciler(client, cache=ObservedCache())
    reconciler.backoff = Backoff(first=1.0, cap=60.0, clock=clock)
    sweep = Resyncer(reconciler, [namespace], interval=3600)  # never started: due() alone
    woken: List[Any] = []
    reconciler.wake = woken.append
    try:
        # No pods create: the refusal is the Created condition's (it is about the gang), and
        # the sweep passes over the job until its backoff is over.
        reconciler.reconcile(*key)
        created = next(c for c in job_status(kube, namespace, "locked")["conditions"]
                       if c["type"] == "Created")
        assert created["status"] == "False" and 'cannot create resource "pods"' in created["message"]
        assert reconciler.backoff.failing(key) and _reconciled(kube, namespace, "locked") is None
        job = get_json(kube, "-n", namespace, "tj", "locked")
        assert sweep.due([job]) == []
        clock.now += 1.5
        assert sweep.due([job]) == [key]

        _grant(kube, namespace, "narrow", ["get", "list", "watch", "create"])
        reconciler.reconcile(*key)
        assert len(get_json(kube, "-n", namespace, "pods", "-l", "volt.dev/job=locked")["items"]) == 2
        assert not reconciler.backoff.failing(key) and woken == [key]

        # No pods delete: suspending the job needs it. The reconcile raises (its caller counts
        # the error); the job says what the operator may not do, once.
        kube.kubectl("patch", "tj", "locked", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        reconciler.cache.put_job(get_json(kube, "-n", namespace, "tj", "locked"))
        with pytest.raises(ApiError) as refused:
            reconciler.reconcile(*key)
        assert refused.value.forbidden
        said = _reconciled(kube, namespace, "locked")
        assert said is not None and (said["status"], said["reason"]) == ("False", "Forbidden"), said
        assert said["message"].startswith("the operator may not delete pods/locked-node-")
        assert f"in namespace {namespace}" in said["message"] and 'cannot delete resource "pods"' in said["message"]
        [event] = _warnings(kube, namespace, "ReconcileFailed")
        assert event["type"] == "Warning" and event["message"] == said["message"][:1024]

        version = get_json(kube, "-n", namespace, "tj", "locked")["metadata"]["resourceVersion"]
        clock.now += 1.0
        with pytest.raises(ApiError):
            reconciler.reconcile(*key)  # the same refusal: nothing new to say, nothing written
        assert get_json(kube, "-n", namespace, "tj", "locked")["metadata"]["resourceVersion"] == version
        assert len(_warnings(kube, namespace, "ReconcileFailed")) == 1
        job = get_json(kube, "-n", namespace, "tj", "locked")
        clock.now += 1.9  # the second failure in a row waits 2 s
        assert sweep.due([job]) == []
        clock.now += 0.2
        assert sweep.due([job]) == [key]

        # Granted: the next look deletes the gang and forgets the failures; the one after it
        # (the wake) says the operator's requests succeed again.
        _grant(kube, namespace, "narrow", ["get", "list", "watch", "create", "delete"])
        woken.clear()
        reconciler.reconcile(*key)
        assert not reconciler.backoff.failing(key) and woken == [key]
        pods = get_json(kube, "-n", namespace, "pods", "-l", "volt.dev/job=locked")["items"]
        assert all(p["metadata"].get("deletionTimestamp") for p in pods), pods
        reconciler.reconcile(*key)
        said = _reconciled(kube, namespace, "locked")
        assert said is not None and (said["status"], said["reason"]) == ("True", "Recovered"), said
    finally:
        reconciler.poller.stop()
        sweep.queue.stop()


@pytest.mark.timeout(60)
def test_an_api_server_that_does_not_answer_backs_the_job_off() -> None:
    """Connection refused is no HTTP answer: ApiUnreachable (what the sweep logs in one line),
    and the job waits out its backoff like after a refusal."""
    configuration = Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens
    reconciler = Reconciler(KubeClient(configuration), cache=ObservedCache())
    reconciler.backoff = Backoff(clock=ManualClock())
    try:
        with pytest.raises(ApiUnreachable, match="no answer from the API server"):
            reconciler.reconcile("ns", "job")
        assert reconciler.backoff.failing(("ns", "job")) and reconciler.backoff.waiting(("ns", "job"))
    finally:
        reconciler.poller.stop()
