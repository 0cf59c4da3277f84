"""A shrunk elastic TrainingJob grows back, in the pure status machine and builders: it keeps
capacity probes for its missing nodes, and once every probe is bound to a node it resizes to
spec.trainer.numNodes at its next checkpoint. Kueue-sized jobs, jobs that never reported a
checkpoint, and gangs that have not yet run shrinkAfterSeconds at their size never probe;
anything but a running shrunk gang deletes its probes."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional

import pytest

from volt_operator.api import GrowBackStatus, TrainingJobSpec, TrainingJobStatus, format_time
from volt_operator.builders import (
    LABEL_ATTEMPT, LABEL_JOB, LABEL_PROBE, LABEL_RANK, JobRef, build_pod, build_probe, build_service,
)
from volt_operator.network_policy import build_network_policy
from volt_operator.observed import PodView, pod_view
from volt_operator.status import RESIZED, JobMeta, Plan, condition, decide

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=timezone.utc)
JOB = JobRef("grow", "ns", "uid-1")
NO_ROOM = "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector"
ONE_PER_NODE = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
    "labelSelector": {"matchLabels": {"volt.dev/job": "grow"}},
    "topologyKey": "kubernetes.io/hostname"}]}}


def spec(nodes: int = 2, min_nodes: int = 1, after: int = 60, **over: Any) -> TrainingJobSpec:
    body: Dict[str, Any] = {
        "image": "volt-trainer:1",
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-m", "volt.examples.synthetic"],
        "trainer": {"numNodes": nodes, "devices": 1, "accelerator": "gpu"},
        "resources": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        "checkpoint": {"claimName": "ckpt", "path": "/checkpoints"},
        "elastic": {"minNodes": min_nodes, "shrinkAfterSeconds": after},
        "template": {
            "nodeSelector": {"pool": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": ONE_PER_NODE,
            "priorityClassName": "training",
            "labels": {"team": "vision"},
        },
    }
    body.update(over)
    return TrainingJobSpec.model_validate(body)


def node_pod(rank: int, attempt: int = 1) -> PodView:
    body = build_pod(JOB, spec(), rank, attempt, "auto")
    body["metadata"]["creationTimestamp"] = format_time(NOW - timedelta(seconds=600))
    body["status"] = {"phase": "Running", "podIP": f"10.0.0.{rank + 1}",
                      "conditions": [{"type": "Ready", "status": "True"}]}
    return pod_view(body)


def probe(rank: int, node: Optional[str] = None, phase: Optional[str] = None,
          deleting: bool = False, gone: bool = False) -> PodView:
    """A probe as the API returns it (built by the real builder): unscheduled, or bound to ``node``."""
    body = build_probe(JOB, spec(), rank)
    body["metadata"]["creationTimestamp"] = format_time(NOW - timedelta(seconds=30))
    if node is None:
        body["status"] = {"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": NO_ROOM}]}
    else:
        body["spec"]["nodeName"] = node
        body["status"] = {"phase": phase or "Running",
                          "conditions": [{"type": "PodScheduled", "status": "True"}]}
    if deleting:
        body["metadata"]["deletionTimestamp"] = format_time(NOW + timedelta(seconds=1))
    return pod_view(body, gone=gone)


def shrunk(running_for: float = 600, checkpoint_step: Optional[int] = 100, nodes: int = 1,
           requested: int = 2, **over: Any) -> TrainingJobStatus:
    """Attempt 1 running at ``nodes`` of ``requested`` after an elastic shrink."""
    body: Dict[str, Any] = {
        "phase": "Running", "attempt": 1, "numNodes": nodes, "requestedNumNodes": requested,
        "resizes": 1,
        "conditions": [{"type": "Running", "status": "True", "reason": "AllNodesReady",
                        "lastTransitionTime": format_time(NOW - timedelta(seconds=running_for))}],
    }
    if checkpoint_step is not None:
        body["checkpoint"] = {"path": f"/checkpoints/grow/step-{checkpoint_step}", "step": checkpoint_step}
    body.update(over)
    return TrainingJobStatus.model_validate(body)


def probing(**over: Any) -> TrainingJobStatus:
    """``shrunk`` with probes asked for a while ago."""
    return shrunk(growBack={"since": format_time(NOW - timedelta(seconds=60))}, **over)


def look(job: TrainingJobSpec, status: TrainingJobStatus, pods: List[PodView],
         probes: List[PodView] = (), now: datetime = NOW, kueue_managed: bool = False) -> Plan:
    return decide(job, JobMeta("grow"), status, pods, True, now, probes=probes,
                  kueue_managed=kueue_managed)


def reasons(plan: Plan) -> List[str]:
    return [e.reason for e in plan.events]


# -- the probe pod


def test_a_probe_asks_the_scheduler_for_what_its_node_pod_would() -> None:
    job = spec()
    node, placeholder = build_pod(JOB, job, 1, 1, "auto"), build_probe(JOB, job, 1)
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "securityContext"):
        assert placeholder["spec"][key] == node["spec"][key], key
    container, trainer = placeholder["spec"]["containers"][0], node["spec"]["containers"][0]
    for key in ("image", "imagePullPolicy", "resources", "securityContext"):
        assert container[key] == trainer[key], key
    assert container["resources"]["requests"] == {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": 1}
    # The checkpoint claim too (volume topology), read-only and mounted nowhere.
    assert placeholder["spec"]["volumes"] == [
        {"name": "volt-checkpoints", "persistentVolumeClaim": {"claimName": "ckpt", "readOnly": True}}]
    assert "volumeMounts" not in container
    # It holds the room: it sleeps, and restarts in place if its command is missing.
    assert container["command"][0] == "sleep" and placeholder["spec"]["restartPolicy"] == "Always"
    assert placeholder["metadata"]["ownerReferences"] == node["metadata"]["ownerReferences"]


def test_a_probe_is_never_taken_for_a_node_pod() -> None:
    body = build_probe(JOB, spec(), 1)
    labels = body["metadata"]["labels"]
    assert body["metadata"]["name"] == "grow-probe-1"
    # The job's label (the template's affinity terms select it) but no rank and no attempt.
    assert labels == {"team": "vision", LABEL_JOB: "grow", LABEL_PROBE: "1"}
    assert LABEL_RANK not in labels and LABEL_ATTEMPT not in labels
    # No DNS name in the job's domain, no ports, no scrape annotations, no environment.
    pod_spec, container = body["spec"], body["spec"]["containers"][0]
    assert "hostname" not in pod_spec and "subdomain" not in pod_spec
    assert "ports" not in container and "env" not in container
    assert not any(k.startswith("prometheus.io/") for k in body["metadata"]["annotations"])
    view = pod_view(body)
    assert view.probe == 1 and view.rank == -1 and view.attempt == -1
    assert pod_view(build_pod(JOB, spec(), 1, 1, "auto")).probe is None
    # Selected by the job's Service and NetworkPolicy as every pod with the job's label:
    # harmless (it serves nothing and has no hostname there), and documented.
    assert build_service(JOB, spec())["spec"]["selector"].items() <= labels.items()
    assert build_network_policy(JOB, spec(), [])["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_a_user_label_cannot_pose_as_a_probe() -> None:
    with pytest.raises(ValueError, match="volt.dev/capacity-probe"):
        spec(template={"labels": {LABEL_PROBE: "0"}})


# -- when probes exist


def test_a_shrunk_gang_probes_only_after_running_shrink_after_seconds_at_its_size() -> None:
    early = look(spec(after=60), shrunk(running_for=20), [node_pod(0)])
    assert early.create_probes == [] and early.requeue_after == pytest.approx(40)
    plan = look(spec(after=60), shrunk(running_for=61), [node_pod(0)])
    assert plan.create_probes == [1] and plan.delete_probes == [] and not plan.delete_pods
    assert plan.status.num_nodes == 1 and reasons(plan) == ["CapacityProbe"]
    assert "grow-probe-1" in plan.events[0].message and "running at 1 of 2" in plan.events[0].message
    wait = plan.status.grow_back
    assert wait is not None and wait.since == format_time(NOW) and wait.probes_bound_time is None
    # Told once: a probe the quota refuses is asked for again without another event.
    again = look(spec(after=60), plan.status, [node_pod(0)], now=NOW + timedelta(seconds=3))
    assert again.create_probes == [1] and reasons(again) == []
    assert again.status.grow_back == wait


def test_one_probe_per_missing_node() -> None:
    plan = look(spec(4, min_nodes=2), shrunk(nodes=2, requested=4), [node_pod(0), node_pod(1)])
    assert plan.create_probes == [2, 3]
    some = look(spec(4, min_nodes=2), plan.status, [node_pod(0), node_pod(1)], [probe(2, node="n3")])
    assert some.create_probes == [3] and reasons(some) == []


@pytest.mark.parametrize("why, job, status, kueue", [
    ("not elastic", spec(elastic=None), shrunk(), False),
    ("sized by Kueue", spec(), shrunk(), True),
    ("no checkpoint reported: nothing to grow at", spec(), shrunk(checkpoint_step=None), False),
    ("at full size", spec(), shrunk(nodes=2), False),
])
def test_never_probes(why: str, job: TrainingJobSpec, status: TrainingJobStatus, kueue: bool) -> None:
    pods = [node_pod(r) for r in range(status.num_nodes or 0)]
    status.grow_back = GrowBackStatus(since=format_time(NOW))  # probes left from before
    plan = look(job, status, pods, [probe(1, node="n2")], kueue_managed=kueue)
    assert plan.create_probes == [] and plan.status.grow_back is None, why
    assert plan.delete_probes == ["grow-probe-1"], why
    assert plan.status.num_nodes == status.num_nodes and not plan.delete_pods, why


def test_suspended_restarting_and_finished_jobs_delete_their_probes() -> None:
    probes = [probe(1, node="n2"), probe(2, deleting=True)]
    suspended = look(spec(suspend=True), probing(), [node_pod(0)], probes)
    assert suspended.status.phase == "Suspended" and suspended.delete_probes == ["grow-probe-1"]
    restarting = look(spec(), probing(phase="Restarting", attempt=2), [node_pod(0)], probes)
    assert restarting.delete_probes == ["grow-probe-1"] and restarting.create_probes == []
    finished = look(spec(), probing(phase="Succeeded"), [node_pod(0)], probes)
    assert finished.delete_probes == ["grow-probe-1"]
    for plan in (suspended, restarting, finished):
        assert plan.status.grow_back is None


# -- growing back


def test_unscheduled_probes_keep_the_shrunk_size() -> None:
    plan = look(spec(), probing(), [node_pod(0)], [probe(1)])
    assert plan.create_probes == [] and plan.delete_probes == []
    assert plan.status.num_nodes == 1 and reasons(plan) == []
    assert plan.status.grow_back.probes_bound_time is None


def test_all_probes_bound_waits_for_the_next_checkpoint_then_grows_back() -> None:
    job = spec(4, min_nodes=2)
    gang = [node_pod(0), node_pod(1)]
    half = look(job, probing(nodes=2, requested=4), gang, [probe(2, node="n3"), probe(3)])
    assert half.status.grow_back.probes_bound_time is None and reasons(half) == []

    bound = [probe(2, node="n3"), probe(3, node="n4")]
    seen = look(job, half.status, gang, bound)
    assert seen.status.grow_back.since == half.status.grow_back.since
    assert seen.status.grow_back.checkpoint_step == 100
    assert seen.status.grow_back.probes_bound_time == format_time(NOW)
    assert reasons(seen) == ["CapacityReturned"] and "after step 100" in seen.events[0].message
    assert seen.status.num_nodes == 2 and not seen.delete_pods and not seen.delete_probes

    # The same checkpoint: still waiting, the probes hold the room.
    later = NOW + timedelta(seconds=30)
    same = look(job, seen.status, gang, bound, now=later)
    assert same.status.num_nodes == 2 and not same.delete_probes and reasons(same) == []

    # A checkpoint recorded since: the probes go first and the gang resizes up.
    checkpointed = seen.status.model_copy(deep=True)
    checkpointed.checkpoint.step = 150
    grow = look(job, checkpointed, gang, bound, now=later)
    st = grow.status
    assert st.num_nodes == 4 and st.requested_num_nodes == 4 and st.attempt == 2
    assert st.resizes == 2 and st.restarts == 0 and st.phase == "Restarting"
    assert st.grow_back is None
    assert sorted(grow.delete_probes) == ["grow-probe-2", "grow-probe-3"] and grow.create_probes == []
    assert sorted(grow.delete_pods) == ["grow-node-0", "grow-node-1"]
    resized = condition(st, RESIZED)
    assert resized.reason == "CapacityReturned"
    assert "from 2 to 4 node(s)" in resized.message and "checkpoint step 150" in resized.message
    assert reasons(grow) == ["Resized"]

    # The new gang (the probes gone) is created at the full size and resumes.
    after = look(job, st, [], [probe(2, node="n3", deleting=True)], now=later)
    assert after.create_ranks == [] and after.delete_probes == []
    ready = look(job, st, [], [], now=later)
    assert ready.create_ranks == [0, 1, 2, 3] and ready.resume == "auto"


def test_a_probe_that_loses_its_node_resets_the_wait() -> None:
    seen = look(spec(), probing(), [node_pod(0)], [probe(1, node="n2")])
    assert seen.status.grow_back.probes_bound_time is not None
    evicted = look(spec(), seen.status, [node_pod(0)], [probe(1, node="n2", phase="Failed")])
    assert evicted.status.grow_back.probes_bound_time is None
    assert evicted.status.grow_back.checkpoint_step is None
    assert evicted.delete_probes == ["grow-probe-1"]
    assert evicted.create_probes == []  # created again once the old one is gone
    gone = look(spec(), evicted.status, [node_pod(0)], [probe(1, node="n2", gone=True)])
    assert gone.create_probes == [1]


def test_a_grown_gang_that_shrinks_again_probes_only_after_shrink_after_seconds() -> None:
    """No flapping faster than the shrink: the gang shrunk again must run that long first."""
    again = shrunk(running_for=5, resizes=3)
    assert look(spec(after=60), again, [node_pod(0)]).create_probes == []
    assert look(spec(after=60), again, [node_pod(0)], now=NOW + timedelta(seconds=56)).create_probes == [1]
