"""Security defaults on the real control plane: Pod Security admission, messages
that name fields and not values."""
from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest
import yaml


from operator_process import OperatorProcess, admin_configuration, get_json, job_status, wait_until
from volt_operator.kube import KubeClient
from volt_operator.reconciler import Reconciler

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

EXAMPLE = "examples/trainingjob.yaml"


def _example(repo_root: Any, **template: Any) -> str:
    docs: List[Dict[str, Any]] = list(yaml.safe_load_all((repo_root / EXAMPLE).read_text()))
    for doc in docs:
        if doc["kind"] == "TrainingJob" and template:
            doc["spec"]["template"] = template
    return yaml.safe_dump_all(docs)


def _enforce_restricted(kube: Any, namespace: str) -> None:
    kube.kubectl("label", "namespace", namespace,
                 "pod-security.kubernetes.io/enforce=restricted",
                 "pod-security.kubernetes.io/enforce-version=latest")


def _node_pods(kube: Any, namespace: str) -> List[Dict[str, Any]]:
    return get_json(kube, "-n", namespace, "pods", "-l", "volt.dev/job=synthetic")["items"]


def test_the_example_job_is_admitted_where_restricted_is_enforced(
        operator: OperatorProcess, namespace: str, repo_root: Any) -> None:
    kube = operator.kube
    _enforce_restricted(kube, namespace)
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=_example(repo_root))
    pods = wait_until("both node pods admitted",
                      lambda: (p := _node_pods(kube, namespace)) and len(p) == 2 and p, 90)
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
        # The memory-backed /dev/shm (an emptyDir; half the example's 2Gi memory limit) is admitted too.
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["spec"]["volumes"]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["spec"]["containers"][0]["volumeMounts"]
    conds = job_status(kube, namespace, "synthetic").get("conditions") or []
    assert not any(c["type"] == "Created" and c["status"] == "False" for c in conds), conds


def test_an_override_that_breaks_restricted_is_refused_by_pod_security(
        operator: OperatorProcess, namespace: str, repo_root: Any) -> None:
    """The control: the same namespace refuses a pod that loosens one default, and the
    job says which field."""
    kube = operator.kube
    _enforce_restricted(kube, namespace)
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=_example(
        repo_root, containerSecurityContext={"allowPrivilegeEscalation": True}))

    def create_failed() -> Any:
        conds = job_status(kube, namespace, "synthetic").get("conditions") or []
        return next((c for c in conds if c["type"] == "Created" and c["status"] == "False"),
                    None)

    cond = wait_until("Created=False", create_failed, 90)
    assert "allowPrivilegeEscalation" in cond["message"], cond
    assert not _node_pods(kube, namespace)


def test_a_pod_that_pod_security_forbids_fails_the_job_naming_the_rule(
        operator: OperatorProcess, namespace: str, repo_root: Any) -> None:
    """A 403 from Pod Security admission does not pass by waiting: after a bounded number
    of tries the job is Failed, reason PodSecurityViolation, with the rule the API server
    names. (The chart's ValidatingAdmissionPolicy refuses privileged at apply time where it
    is installed; this cluster has only the CRD, so the pod reaches Pod Security.
    allowPrivilegeEscalation is set too: privileged with the operator's default false is
    a pod the API server refuses as invalid, 422, before Pod Security looks.)"""
    kube = operator.kube
    _enforce_restricted(kube, namespace)
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=_example(
        repo_root, containerSecurityContext={"privileged": True, "allowPrivilegeEscalation": True}))

    status = wait_until("phase Failed",
                        lambda: (s := job_status(kube, namespace, "synthetic")).get("phase") == "Failed" and s,
                        120)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodSecurityViolation", failed
    assert 'violates PodSecurity "restricted:latest"' in failed["message"], failed
    assert 'privileged (container "trainer" must not set securityContext.privileged=true)' in failed["message"]
    assert status.get("createRefusals") == 3, status
    assert not _node_pods(kube, namespace)
    events = get_json(kube, "-n", namespace, "events")["items"]
    assert any(e["reason"] == "Failed" and "PodSecurity" in e["message"] for e in events), events


def test_a_refused_pod_leaves_no_env_value_in_status_or_events(
        operator: OperatorProcess, namespace: str, repo_root: Any) -> None:
    """The API server refuses every pod (runAsUser -1); the job fails with its message,
    which names the field. The job's env value appears in no status or event."""
    kube = operator.kube
    secret = "hunter2-AKIAIOSFODNN7EXAMPLE"
    docs = list(yaml.safe_load_all((repo_root / EXAMPLE).read_text()))
    for doc in docs:
        if doc["kind"] == "TrainingJob":
            doc["spec"]["env"] = [{"name": "API_TOKEN", "value": secret}]
            doc["spec"]["template"] = {"securityContext": {"runAsUser": -1}}
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))

    def failed() -> Any:
        return job_status(kube, namespace, "synthetic").get("phase") == "Failed"

    wait_until("phase Failed", failed, 120)
    status = job_status(kube, namespace, "synthetic")
    assert "runAsUser" in str(status["conditions"])
    events = get_json(kube, "-n", namespace, "events")["items"]
    assert any(e["reason"] == "CreateFailed" for e in events)
    assert secret not in str(status)
    assert not [e["message"] for e in events if secret in str(e)]


def test_the_operator_creates_the_jobs_network_policy(
        crd: Any, namespace: str, repo_root: Any, tmp_path: Any) -> None:
    """With --network-policy-peers the API server accepts the job's NetworkPolicy; it selects
    the job's pods and lists exactly their metrics ports. (The local CNI does not enforce it.)"""
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    operator = OperatorProcess(crd, [namespace], tmp_path,
                               extra_args=["--network-policy-peers", json.dumps(peers)]).start()
    try:
        kube = operator.kube
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=_example(repo_root))
        pods = wait_until("both node pods",
                          lambda: (p := _node_pods(kube, namespace)) and len(p) == 2 and p, 90)
        policy = get_json(kube, "-n", namespace, "networkpolicy", "synthetic")
        job_uid = get_json(kube, "-n", namespace, "tj", "synthetic")["metadata"]["uid"]
        assert policy["metadata"]["ownerReferences"][0]["uid"] == job_uid
        selector = policy["spec"]["podSelector"]["matchLabels"]
        for pod in pods:
            assert selector.items() <= pod["metadata"]["labels"].items()
        opened = {p["containerPort"] for p in pods[0]["spec"]["containers"][0]["ports"]
                  if p["name"].startswith("metrics-")}
        own, metrics = policy["spec"]["ingress"]
        assert own == {"from": [{"podSelector": {"matchLabels": selector}}]}
        assert {p["port"] for p in metrics["ports"]} == opened and metrics["from"] == peers

        # Deleted by hand while the operator runs: its watch sees it go and the job gets it back.
        kube.kubectl("delete", "-n", namespace, "networkpolicy", "synthetic", "--wait=true")
        path = f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies"
        again = kube.watch(path, lambda found: (p := found.get("synthetic")) and
                           p["metadata"]["uid"] != policy["metadata"]["uid"] and p, 60,
                           "the deleted NetworkPolicy created again")
        assert again["spec"] == policy["spec"]
        assert {p["metadata"]["uid"] for p in _node_pods(kube, namespace)} == {p["metadata"]["uid"] for p in pods}
    finally:
        operator.stop()



def _reconciler(kube: Any, peers: Any) -> Reconciler:
    """The operator's reconciler in this process, on the admin kubeconfig."""
    return Reconciler(KubeClient(admin_configuration(kube)), network_policy_peers=peers)


def test_a_job_that_predates_the_network_policy_setting_gets_its_policy(
        crd: Any, namespace: str) -> None:
    """A job reconciled without the setting has its Service and pods but no policy; an
    operator with the setting (a new process: the upgrade) creates the missing policy without
    touching the gang, and another one finds it (409) and changes nothing."""
    kube = crd
    job = {"apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "older"},
           "spec": {"image": "volt-trainer:test", "command": ["python", "-c", "import time; time.sleep(3600)"],
                    "trainer": {"numNodes": 2, "devices": 1, "accelerator": "cpu", "maxEpochs": 1},
                    "terminationGracePeriodSeconds": 5}}
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]

    def pods() -> List[Dict[str, Any]]:
        return get_json(kube, "-n", namespace, "pods", "-l", "volt.dev/job=older")["items"]

    def policies() -> List[Dict[str, Any]]:
        return get_json(kube, "-n", namespace, "networkpolicies")["items"]

    def created_failed() -> List[Dict[str, Any]]:
        conds = job_status(kube, namespace, "older").get("conditions") or []
        return [c for c in conds if c["type"] == "Created" and c["status"] == "False"]

    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(job))
    _reconciler(kube, None).reconcile(namespace, "older")  # the setting off
    gang = pods()
    assert len(gang) == 2
    get_json(kube, "-n", namespace, "service", "older")
    assert policies() == []

    upgraded = _reconciler(kube, peers)
    upgraded.reconcile(namespace, "older")
    [policy] = policies()
    job_uid = get_json(kube, "-n", namespace, "tj", "older")["metadata"]["uid"]
    assert policy["metadata"]["name"] == "older"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == job_uid
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= gang[0]["metadata"]["labels"].items()
    assert policy["spec"]["ingress"][1]["from"] == peers
    assert {p["metadata"]["uid"] for p in pods()} == {p["metadata"]["uid"] for p in gang}
    assert not created_failed()

    # Idempotent: the same process does not ask again; a new one gets 409 and reports nothing.
    upgraded.reconcile(namespace, "older")
    _reconciler(kube, peers).reconcile(namespace, "older")
    assert [p["metadata"]["resourceVersion"] for p in policies()] == [policy["metadata"]["resourceVersion"]]
    assert not created_failed()
