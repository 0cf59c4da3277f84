"""On real nodes the operator runs in the cluster, from its chart and its image.

`helm install` with `operator.replicas=1` into a namespace that enforces the
restricted Pod Security Standard: the operator image (built with docker, tag
`e2e`, imported into both nodes) runs as a pod of the chart's Deployment and
reaches the API server through in-cluster config (the `kubernetes` Service's
address, where the local API server listens for pods, and the service account's
token and CA). It then runs the example TrainingJob to Succeeded; no operator
runs on the host. Needs root, `make cluster node-runtime docker helm`.
"""
from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, Dict, Iterator

import pytest
import yaml

from helm_util import CHART, helm_binary, run_helm
from operator_process import job_status
from job_helpers import diagnosis
from real_nodes import example, namespace, wait_pods_gone  # noqa: F401  (namespace: a fixture)
from test_docker import build
from volt_operator.testing.cluster import KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT, ClusterError, LocalCluster

pytestmark = [
    pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow,
    # The session's cluster (if this module uses it first), both images (built and imported
    # unless current) and the job.
    pytest.mark.timeout(1800),
]

RELEASE = "volt"
OPERATOR_IMAGE = "volt-operator:e2e"


@pytest.fixture(scope="module")
def operator_image(real_kube: LocalCluster, docker_env: Dict[str, str]) -> str:
    build(docker_env, "operator", timeout=1100)
    started = time.monotonic()
    imported = real_kube.load_image(OPERATOR_IMAGE, docker=docker_env["DOCKER"], env=docker_env)
    print(f"{OPERATOR_IMAGE} imported into {imported or 'no node (current)'} in {time.monotonic() - started:.1f}s")
    return OPERATOR_IMAGE


def operator_pods(kube: LocalCluster, release_namespace: str) -> Dict[str, Dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in kube.request(
        "GET", f"/api/v1/namespaces/{release_namespace}/pods?labelSelector=app.kubernetes.io/instance={RELEASE}")[
        "items"]}


@pytest.fixture
def release(real_kube: LocalCluster, operator_image: str, tmp_path: Path) -> Iterator[str]:
    """The chart with operator.replicas=1 in a namespace enforcing restricted; that namespace."""
    release_namespace = f"volt-system-{secrets.token_hex(3)}"
    real_kube.kubectl("create", "namespace", release_namespace)
    real_kube.kubectl("label", "namespace", release_namespace, "pod-security.kubernetes.io/enforce=restricted",
                      "pod-security.kubernetes.io/enforce-version=latest")
    helm = helm_binary()
    env = {**real_kube.env(), "HELM_CONFIG_HOME": str(tmp_path / "helm" / "config"),
           "HELM_CACHE_HOME": str(tmp_path / "helm" / "cache"), "HELM_DATA_HOME": str(tmp_path / "helm" / "data")}
    started = time.monotonic()
    try:
        run_helm(helm, "install", RELEASE, str(CHART), "--namespace", release_namespace,
                 "--set", "operator.replicas=1", "--set", f"image.tag={operator_image.split(':')[1]}",
                 "--wait", "--timeout", "300s", env=env, timeout=360)
        print(f"helm install -> operator pod Ready: {time.monotonic() - started:.1f}s")
        yield release_namespace
    finally:
        for name in operator_pods(real_kube, release_namespace):
            print(f"--- operator pod {name} ---")
            print(real_kube.kubectl("describe", "pod", "-n", release_namespace, name, check=False).stdout[-3000:])
            print(real_kube.kubectl("logs", "-n", release_namespace, name, "--tail", "80", check=False).stdout)
        run_helm(helm, "uninstall", RELEASE, "-n", release_namespace, "--wait", check=False, env=env, timeout=180)
        real_kube.kubectl("delete", "namespace", release_namespace, "--wait=false", check=False)
        wait_pods_gone(real_kube, release_namespace)  # the next module starts on idle nodes


def pod_creators(kube: LocalCluster, namespace: str) -> set[str]:
    """Who created pods in `namespace`, according to the API server's audit log."""
    users = set()
    for event in kube.audit_events():
        ref = event.get("objectRef") or {}
        if (event["verb"] == "create" and ref.get("resource") == "pods" and not ref.get("subresource")
                and ref.get("namespace") == namespace and event.get("stage") == "ResponseComplete"
                and event.get("responseStatus", {}).get("code") == 201):
            users.add(event["user"]["username"])
    return users


def test_chart_operator_runs_the_example_to_succeeded_in_cluster(real_kube: LocalCluster, release: str,
                                                                  namespace: str) -> None:
    # The operator is a container of its image on a real node, configured from inside the cluster.
    (name, pod), = operator_pods(real_kube, release).items()
    assert pod["status"]["phase"] == "Running" and pod["spec"]["nodeName"] in real_kube.node_names, pod["status"]
    assert pod["spec"]["containers"][0]["image"] == OPERATOR_IMAGE
    endpoints = real_kube.request("GET", "/api/v1/namespaces/default/endpoints/kubernetes")
    assert [(a["ip"], p["port"]) for s in endpoints["subsets"] for a in s["addresses"] for p in s["ports"]] == [
        (KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT)], endpoints
    seen = real_kube.kubectl("exec", "-n", release, name, "--", "python", "-c",
                             "import os; print(os.environ['KUBERNETES_SERVICE_HOST'], "
                             "os.environ['KUBERNETES_SERVICE_PORT'], os.getuid())").stdout.split()
    assert seen == [KUBERNETES_SERVICE_IP, str(KUBERNETES_SERVICE_PORT), "65532"], seen

    pvc, job = example()
    started = time.monotonic()
    real_kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([pvc, job]))
    pods_path = f"/api/v1/namespaces/{namespace}/pods?labelSelector=volt.dev/job=synthetic"
    job_path = f"/apis/volt.dev/v1alpha1/namespaces/{namespace}/trainingjobs?fieldSelector=metadata.name=synthetic"
    try:
        real_kube.watch(pods_path, lambda pods: len(pods) == 2 and all(
            p["status"].get("phase") == "Running" for p in pods.values()), 300, "both node pods Running")
        running_s = time.monotonic() - started
        phase = real_kube.watch(job_path, lambda jobs: (jobs.get("synthetic", {}).get("status") or {}).get(
            "phase") in ("Succeeded", "Failed") and jobs["synthetic"]["status"]["phase"], 900, "a final phase")
    except ClusterError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(real_kube, namespace, 'synthetic')}") from None
    print(f"in-cluster operator: apply -> 2 pods Running {running_s:.1f}s, "
          f"apply -> {phase} {time.monotonic() - started:.1f}s")
    assert phase == "Succeeded", diagnosis(real_kube, namespace, "synthetic")
    status = job_status(real_kube, namespace, "synthetic")
    assert status["restarts"] == 0 and status["training"]["step"] > 0, status
    # Driven from inside the cluster: the chart's ServiceAccount created the job's pods, nobody else.
    assert pod_creators(real_kube, namespace) == {f"system:serviceaccount:{release}:{RELEASE}"}
