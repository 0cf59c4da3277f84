"""On real nodes: one node's kubelet stops mid-training, the node turns NotReady, the job recovers.

The fault is what a node failure looks like to the cluster: the kubelet stops
(`LocalCluster.stop_kubelet`; its containers keep running, unseen). The
controller-manager marks the node NotReady after --node-monitor-grace-period
(20 s on the local cluster) and taints it `node.kubernetes.io/unreachable`;
the job's pods there are deleted by the taint manager once their toleration
runs out (10 s here: the job's template says so, the cluster default is 300 s)
and stay Terminating, since no kubelet confirms it. The operator force-deletes
them (grace period + --stuck-pod-margin), restarts the gang, which the
scheduler places on the node that is left, and the job resumes from its
checkpoint to Succeeded. Needs root, `make cluster node-runtime docker`.
"""
from __future__ import annotations

import time
from typing import Any, Dict

import pytest
import yaml

from operator_process import OperatorProcess, get_json, job_status
from job_helpers import diagnosis
from real_nodes import (  # noqa: F401  (namespace, operator: fixtures)
    example, namespace, operator, wait_nodes_schedulable,
)
from volt_operator.testing.cluster import ClusterError, LocalCluster

pytestmark = [
    pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow,
    # About 100 s from the fault to the new gang, plus training on a loaded machine.
    pytest.mark.timeout(900),
]

TOLERATION_SECONDS = 10
# How long the taint manager lets the job's pods stay on an unreachable or not-ready node.
TOLERATIONS = [{"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
                "tolerationSeconds": TOLERATION_SECONDS} for taint in ("unreachable", "not-ready")]


def ready(node: Dict[str, Any]) -> str:
    return next((c["status"] for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"), "")


def test_stopped_kubelet_makes_the_node_not_ready_and_the_job_recovers(
        real_kube: LocalCluster, operator: OperatorProcess, namespace: str) -> None:
    # 1024 steps of at least 0.2 s: the first gang outlives the ~100 s from the fault to the
    # new gang even on an idle machine (the stopped node's container keeps training, unseen).
    # The new gang runs at full speed: what is tested is that it starts and resumes.
    pvc, job = example(args=["--samples", "32768", "--batch-size", "32", "--step-delay", "0.2",
                             "--restart-step-delay", "0"],
                       template={"tolerations": TOLERATIONS}, failurePolicy={"maxRestarts": 2, "backoffSeconds": 1})
    real_kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([pvc, job]))
    job_path = f"/apis/volt.dev/v1alpha1/namespaces/{namespace}/trainingjobs?fieldSelector=metadata.name=synthetic"

    def status(jobs: Dict[str, Any]) -> Dict[str, Any]:
        return jobs.get("synthetic", {}).get("status") or {}

    try:
        real_kube.watch(job_path, lambda jobs: status(jobs).get("phase") == "Running" and (
            (status(jobs).get("checkpoint") or {}).get("step") or 0) >= 20, 300, "a checkpoint while Running")
    except ClusterError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(real_kube, namespace, 'synthetic')}") from None
    placed = {p["metadata"]["name"]: p["spec"]["nodeName"]
              for p in get_json(real_kube, "-n", namespace, "pods", "-l", "volt.dev/job=synthetic")["items"]}
    victim = placed["synthetic-node-1"]
    stopped = time.monotonic()
    real_kube.stop_kubelet(victim)
    try:
        real_kube.watch(f"/api/v1/nodes?fieldSelector=metadata.name={victim}",
                        lambda nodes: ready(nodes.get(victim, {})) not in ("True", ""), 120, f"{victim} NotReady")
        not_ready_s = time.monotonic() - stopped
        real_kube.watch(job_path, lambda jobs: status(jobs).get("attempt", 0) >= 1 and status(jobs).get(
            "phase") in ("Running", "Succeeded", "Failed"), 600, "a new gang")
        regang_s = time.monotonic() - stopped
        phase = real_kube.watch(job_path, lambda jobs: status(jobs).get("phase") in ("Succeeded", "Failed") and (
            status(jobs)["phase"]), 900, "a final phase")
        print(f"pods on {placed}; kubelet of {victim} stopped -> NotReady {not_ready_s:.1f}s, "
              f"-> new gang {regang_s:.1f}s, -> {phase} {time.monotonic() - stopped:.1f}s")
    except ClusterError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(real_kube, namespace, 'synthetic')}") from None
    finally:
        real_kube.start_kubelet(victim)
        # The cluster is the session's: the modules after this one need both nodes schedulable.
        wait_nodes_schedulable(real_kube)
    assert phase == "Succeeded", diagnosis(real_kube, namespace, "synthetic")

    final = job_status(real_kube, namespace, "synthetic")
    assert final["attempt"] >= 1 and final["restarts"] >= 1, final
    # The pod the lost node could not confirm gone was force-deleted, naming that node.
    events = get_json(real_kube, "-n", namespace, "events", "--field-selector",
                      "involvedObject.name=synthetic,reason=ForceDeleted")["items"]
    assert any("synthetic-node-1" in e["message"] and victim in e["message"] for e in events), \
        [e["message"] for e in events]
    # The new gang ran where a kubelet was: the lost node was tainted unreachable meanwhile.
    nodes = {p["metadata"]["name"]: p["spec"]["nodeName"]
             for p in get_json(real_kube, "-n", namespace, "pods", "-l", "volt.dev/job=synthetic")["items"]}
    assert victim not in nodes.values(), nodes
