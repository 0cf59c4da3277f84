"""End to end, elastic TrainingJobs: the 2 x 2 example (real operator, real engine, gloo over
containers of the trainer image on real nodes) changes size while it trains and still succeeds.

* `kubectl patch tj --type merge -p '{"spec":{"trainer":{"numNodes":1}}}'` mid-training: the
  gang checkpoints on SIGTERM, one node of 2 processes resumes the 4-process checkpoint.
* `elastic.minNodes: 1`: one node is cordoned and the pod on it deleted; its replacement
  cannot be scheduled (one pod per node), so the job shrinks to one node and finishes there.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional

import pytest

from job_helpers import RESUMED, apply, events, explain, watch_table  # noqa: F401 (explain: a fixture)
from operator_process import OperatorProcess, get_json, job_status, wait_until
from real_nodes import example, namespace, operator  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow]
RESIZED_RUN = "resuming at 2 processes (checkpoint: 4)"


def long_example(**spec: Any) -> List[Dict[str, Any]]:
    """The example, slowed (>= 0.05 s a step, 384 steps at 4 processes) so that it is
    still training when the test acts, on any machine; the resized gang runs at full speed."""
    pvc, job = example(args=["--samples", "16384", "--batch-size", "32", "--step-delay", "0.05",
                             "--restart-step-delay", "0"],
                       cleanPodPolicy="None", **spec)  # keep the pods' logs for the diagnosis
    job["spec"]["trainer"]["maxEpochs"] = 3
    return [pvc, job]


def checkpointed(kube: Any, namespace: str) -> Optional[int]:
    st = job_status(kube, namespace, "synthetic")
    step = (st.get("checkpoint") or {}).get("step") or 0
    return step if st.get("phase") == "Running" and step >= 20 else None


def rank0_logs(kube: Any, namespace: str) -> str:
    out = kube.kubectl("logs", "-n", namespace, "synthetic-node-0", check=False)
    return out.stdout + out.stderr


def assert_resumed_at_two_processes(kube: Any, namespace: str, saved_step: int) -> None:
    logs = rank0_logs(kube, namespace)
    match = RESUMED.search(logs)
    assert match, f"the one-node gang did not resume from a checkpoint:\n{logs[-3000:]}"
    assert int(match.group(3)) >= saved_step and match.group(1).startswith("/checkpoints/synthetic/")
    assert RESIZED_RUN in logs, logs[-3000:]


@pytest.mark.timeout(900)
def test_patching_the_example_to_one_node_resizes_it_and_it_succeeds(
        operator: OperatorProcess, namespace: str, explain: List[str]) -> None:
    kube = operator.kube
    explain.append("synthetic")
    apply(kube, namespace, *long_example())
    saved_step = wait_until("a checkpoint while Running", lambda: checkpointed(kube, namespace), 300, every=1.0)

    kube.kubectl("patch", "-n", namespace, "tj", "synthetic", "--type", "merge",
                 "-p", '{"spec":{"trainer":{"numNodes":1}}}')
    rows = watch_table(kube, namespace, "synthetic", ("Succeeded", "Failed"), 420)
    status = job_status(kube, namespace, "synthetic")
    assert status["phase"] == "Succeeded", (status, rows[-3:])
    assert status["numNodes"] == 1 and status["resizes"] == 1 and status["attempt"] == 1
    assert status["restarts"] == 0 and status["restartsCounted"] == 0
    resized = next(c for c in status["conditions"] if c["type"] == "Resized")
    assert resized["reason"] == "NumNodesChanged" and "from 2 to 1 node(s)" in resized["message"]
    reasons = [e["reason"] for e in events(kube, namespace, "synthetic")]
    assert "Resized" in reasons and "CheckpointResumed" in reasons and "GangRestart" not in reasons
    pods = get_json(kube, "-n", namespace, "pods", "-l", "volt.dev/job=synthetic")["items"]
    assert [p["metadata"]["name"] for p in pods] == ["synthetic-node-0"]
    assert_resumed_at_two_processes(kube, namespace, saved_step)


@pytest.mark.timeout(900)
def test_elastic_example_finishes_on_one_node_when_the_other_is_cordoned(
        operator: OperatorProcess, namespace: str, explain: List[str]) -> None:
    kube = operator.kube
    explain.append("synthetic")
    one_per_node = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"volt.dev/job": "synthetic"}},
        "topologyKey": "kubernetes.io/hostname"}]}}
    apply(kube, namespace, *long_example(elastic={"minNodes": 1, "shrinkAfterSeconds": 10},
                                         template={"affinity": one_per_node}))
    saved_step = wait_until("a checkpoint while Running", lambda: checkpointed(kube, namespace), 300, every=1.0)

    pod = get_json(kube, "-n", namespace, "pod", "synthetic-node-1")
    node = pod["spec"]["nodeName"]
    kube.kubectl("cordon", node)
    try:
        # The node "goes away": its pod is deleted and nothing new may land there.
        kube.kubectl("delete", "-n", namespace, "pod", "synthetic-node-1", "--wait=false")
        rows = watch_table(kube, namespace, "synthetic", ("Succeeded", "Failed"), 480)
    finally:
        kube.kubectl("uncordon", node)
    status = job_status(kube, namespace, "synthetic")
    assert status["phase"] == "Succeeded", (status, rows[-3:])
    assert status["numNodes"] == 1 and status["requestedNumNodes"] == 2 and status["resizes"] == 1
    # One gang restart for the deleted pod (it checkpointed: free), then the shrink (not a restart).
    assert status["restarts"] == 1 and status["restartsCounted"] == 0, status.get("lastFailure")
    resized = next(c for c in status["conditions"] if c["type"] == "Resized")
    assert resized["reason"] == "Unschedulable" and "from 2 to 1 node(s)" in resized["message"]
    # The rank that did not get the one free node is named (the scheduler usually places rank 0).
    assert re.search(r"synthetic-node-[01] \(Unschedulable", resized["message"]), resized
    shrink = [e["message"] for e in events(kube, namespace, "synthetic") if e["reason"] == "Resized"]
    assert len(shrink) == 1 and "spec.elastic.shrinkAfterSeconds" in shrink[0], shrink
    # The node pods only: a capacity probe of the shrunk gang may still be terminating.
    [left] = get_json(kube, "-n", namespace, "pods", "-l",
                      "volt.dev/job=synthetic,!volt.dev/capacity-probe")["items"]
    assert left["spec"]["nodeName"] != node
    assert json.loads(next(e["value"] for e in left["spec"]["containers"][0]["env"]
                           if e["name"] == "VOLT_TRAINER"))["num_nodes"] == 1
    assert_resumed_at_two_processes(kube, namespace, saved_step)
