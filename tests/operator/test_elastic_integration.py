"""Elastic TrainingJobs on the real control plane, scheduler and node agent: `kubectl patch`
of spec.trainer.numNodes resizes a running gang, and spec.elastic shrinks a gang whose
second pod no node can take. The pods stand in for the engine's SIGTERM contract
(exit 75); tests/e2e/test_elastic_e2e.py runs the real engine."""
from __future__ import annotations

import re
from typing import Any, Dict, List

import pytest

from job_helpers import idle_job_manifest
from operator_process import OperatorProcess, get_json, job_status, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

# Idles until SIGTERM, then exits 75 as the engine does after its checkpoint.
CHECKPOINT_ON_SIGTERM = ["python", "-c", (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))\n"
    "time.sleep(3600)\n")]


def apply(kube: Any, namespace: str, name: str, **spec: Any) -> None:
    spec = {"command": CHECKPOINT_ON_SIGTERM, "terminationGracePeriodSeconds": 10, **spec}
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest(name, **spec))


def pods(kube: Any, namespace: str, name: str) -> List[Dict[str, Any]]:
    return get_json(kube, "-n", namespace, "pods", "-l", f"volt.dev/job={name}")["items"]


def env_of(pod: Dict[str, Any]) -> Dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0]["env"]}


def resized_events(kube: Any, namespace: str, name: str) -> List[Dict[str, Any]]:
    return [e for e in get_json(kube, "-n", namespace, "events", "--field-selector",
                                f"involvedObject.name={name}")["items"] if e["reason"] == "Resized"]


def running_at(kube: Any, namespace: str, name: str, nodes: int, attempt: int) -> Any:
    status = job_status(kube, namespace, name)
    ok = (status.get("phase") == "Running" and status.get("numNodes") == nodes
          and status.get("attempt") == attempt and status.get("readyNodes") == f"{nodes}/{nodes}")
    return status if ok else None


def wait_running_at(kube: Any, namespace: str, name: str, nodes: int, attempt: int,
                    timeout: float) -> Dict[str, Any]:
    """``running_at`` within ``timeout``, or a failure that shows the status, events and pods."""
    try:
        return wait_until(f"{name} Running at {nodes} node(s), attempt {attempt}",
                          lambda: running_at(kube, namespace, name, nodes, attempt), timeout)
    except AssertionError as exc:
        seen = [(p["metadata"]["name"], p["metadata"]["labels"].get("volt.dev/attempt"),
                 p["status"].get("phase"), p["spec"].get("nodeName"), p["status"].get("conditions"))
                for p in pods(kube, namespace, name)]
        events = [(e["reason"], e.get("message")) for e in get_json(
            kube, "-n", namespace, "events", "--field-selector", f"involvedObject.name={name}")["items"]]
        raise AssertionError(f"{exc}\nstatus: {job_status(kube, namespace, name)}\n"
                             f"events: {events}\npods: {seen}") from None


def condition(status: Dict[str, Any], type_: str) -> Dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_patching_num_nodes_resizes_the_running_gang(operator: OperatorProcess, namespace: str) -> None:
    kube = operator.kube
    apply(kube, namespace, "grow")
    wait_running_at(kube, namespace, "grow", 2, 0, 120)

    kube.kubectl("patch", "-n", namespace, "tj", "grow", "--type", "merge",
                 "-p", '{"spec":{"trainer":{"numNodes":1}}}')
    status = wait_running_at(kube, namespace, "grow", 1, 1, 120)
    assert status["restarts"] == 0 and status["restartsCounted"] == 0 and status["resizes"] == 1
    assert status["requestedNumNodes"] == 1 and "lastFailure" not in status
    resized = condition(status, "Resized")
    assert resized["reason"] == "NumNodesChanged" and "from 2 to 1 node(s)" in resized["message"]
    # The old gang's pod beyond the new size is gone; the one left is attempt 1's, sized for 1 node.
    left = wait_until("only grow-node-0", lambda: (
        (items := pods(kube, namespace, "grow")) and [p["metadata"]["name"] for p in items] == ["grow-node-0"]
        and items), 60)
    assert left[0]["metadata"]["labels"]["volt.dev/attempt"] == "1"
    env = env_of(left[0])
    assert env["NUM_NODES"] == "1" and env["WORLD_SIZE"] == "1" and env["VOLT_RESUME"] == "auto"
    events = wait_until("the Resized event", lambda: resized_events(kube, namespace, "grow"), 30)
    assert "from 2 to 1" in events[0]["message"]

    # Back up: a new gang of 3 (the node agent has room for it).
    kube.kubectl("patch", "-n", namespace, "tj", "grow", "--type", "merge",
                 "-p", '{"spec":{"trainer":{"numNodes":3}}}')
    status = wait_running_at(kube, namespace, "grow", 3, 2, 120)
    assert status["resizes"] == 2 and status["restarts"] == 0
    assert sorted(p["metadata"]["name"] for p in pods(kube, namespace, "grow")) == [
        "grow-node-0", "grow-node-1", "grow-node-2"]


def test_elastic_job_shrinks_when_its_second_pod_cannot_be_scheduled(operator: OperatorProcess,
                                                                     namespace: str) -> None:
    kube = operator.kube
    # Only node-0 is allowed, and no two pods of the job may share a node: rank 1 cannot be placed.
    one_per_node = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"volt.dev/job": "shrink"}},
        "topologyKey": "kubernetes.io/hostname"}]}}
    apply(kube, namespace, "shrink", elastic={"minNodes": 1, "shrinkAfterSeconds": 5},
          template={"nodeSelector": {"kubernetes.io/hostname": "node-0"}, "affinity": one_per_node})
    status = wait_running_at(kube, namespace, "shrink", 1, 1, 200)
    assert status["restarts"] == 0 and status["resizes"] == 1 and status["requestedNumNodes"] == 2
    resized = condition(status, "Resized")
    assert resized["reason"] == "Unschedulable", resized
    # Either rank may win node-0 (both are queued at once); the other one is named.
    assert "from 2 to 1 node(s)" in resized["message"]
    assert re.search(r"shrink-node-[01] \(Unschedulable", resized["message"]), resized
    events = wait_until("the Resized event", lambda: resized_events(kube, namespace, "shrink"), 30)
    assert "spec.elastic.shrinkAfterSeconds" in events[0]["message"]
    [left] = pods(kube, namespace, "shrink")
    assert left["spec"]["nodeName"] == "node-0" and env_of(left)["NUM_NODES"] == "1"
