"""What the modules that run on real nodes share, besides the cluster itself.

The session's real-node cluster, `real_kube`, is in tests/e2e/conftest.py. The `namespace` and
`operator` fixtures are here, and each module that runs on real nodes imports them: they replace
tests/conftest.py's fixtures of the same names, which run on the agent cluster (`kube`) that
tests/operator and a few e2e modules use (docs/local-cluster.md says which), so a
tests/e2e/conftest.py override would move those too.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import job_helpers
from job_helpers import diagnosis, fresh_namespace
from operator_process import OperatorProcess, job_status, wait_until
from volt_operator.testing.cluster import ClusterError, LocalCluster

IMAGE = "volt-trainer:e2e"


def unschedulable_reasons(node: Dict[str, Any]) -> List[str]:
    """Why the scheduler would not place a pod on `node` (not Ready, a node-lifecycle taint); [] if it would."""
    ready = next((c["status"] for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"), "")
    reasons = [] if ready == "True" else [f"Ready={ready or 'unknown'}"]
    reasons += [f"taint {t['key']}:{t['effect']}" for t in node.get("spec", {}).get("taints") or []
                if t["key"].startswith("node.kubernetes.io/")]
    return reasons


def wait_nodes_schedulable(kube: LocalCluster, timeout: float = 120.0) -> None:
    """Wait until every real node is Ready and carries no node-lifecycle taint (a restarted kubelet's
    node keeps `unreachable` for a node-monitor period after it is Ready again)."""
    names = set(kube.node_names)

    def schedulable(nodes: Dict[str, Dict[str, Any]]) -> bool:
        return names <= set(nodes) and not any(unschedulable_reasons(nodes[n]) for n in names)

    try:
        kube.watch("/api/v1/nodes", schedulable, timeout, f"nodes {sorted(names)} Ready and untainted")
    except ClusterError as exc:
        nodes = {n["metadata"]["name"]: n for n in kube.request("GET", "/api/v1/nodes")["items"]}
        raise AssertionError(f"{exc}: {({n: unschedulable_reasons(o) for n, o in nodes.items()})}") from None


def wait_pods_gone(kube: LocalCluster, namespace: str, timeout: float = 300.0) -> None:
    """Wait until `namespace`, whose deletion was requested, has no pod left: the kubelets have
    stopped their containers. (The namespace object itself goes a few seconds later.)"""
    started = time.monotonic()
    kube.watch(f"/api/v1/namespaces/{namespace}/pods", lambda found: not found, timeout,
               f"the pods of deleted namespace {namespace} to be gone")
    print(f"pods of namespace {namespace} gone {time.monotonic() - started:.1f}s after its deletion")


@pytest.fixture
def namespace(real_kube: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the real nodes, both schedulable; deleted, and its pods gone, when the test
    is over, so the next test, in this module or a later one, starts on idle nodes."""
    wait_nodes_schedulable(real_kube)
    with fresh_namespace(real_kube, request.node.name) as name:
        yield name
    wait_pods_gone(real_kube, name)


@pytest.fixture
def operator(real_kube: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator as a host process, watching `namespace` on the real nodes."""
    with OperatorProcess(real_kube, [namespace], tmp_path).running() as proc:
        yield proc


def example(**spec: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The example's PVC and TrainingJob on the trainer image the session's cluster holds."""
    return job_helpers.example(image=IMAGE, **spec)


def pods(kube: LocalCluster, namespace: str, job: str) -> List[Dict[str, Any]]:
    return kube.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=volt.dev/job={job}")["items"]


def wait_phase(kube: LocalCluster, namespace: str, job: str, phases: Tuple[str, ...], timeout: float) -> str:
    def phase() -> str:
        current = job_status(kube, namespace, job).get("phase", "")
        return current if current in phases else ""
    try:
        return wait_until(f"{job} to reach {phases}", phase, timeout, every=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(kube, namespace, job)}") from None
