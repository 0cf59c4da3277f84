"""Elastic TrainingJobs in the pure status machine: a changed spec.trainer.numNodes is a
resize (the gang checkpoints on SIGTERM, a new attempt starts at the new size), and
spec.elastic shrinks a gang whose pods stay unschedulable, never below minNodes."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional

import pytest

from volt_operator.api import TrainingJobSpec, TrainingJobStatus, format_time
from volt_operator.builders import JobRef, build_pod, build_pods
from volt_operator.observed import PodView, pod_view
from volt_operator.status import RESIZED, JobMeta, Plan, condition, decide, target_num_nodes

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=timezone.utc)
JOB = JobRef("elastic", "ns", "uid-1")
NO_ROOM = "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector"


def spec(nodes: int = 2, **over: Any) -> TrainingJobSpec:
    body: Dict[str, Any] = {
        "image": "volt-trainer:1",
        "command": ["python", "-m", "volt.examples.synthetic"],
        "trainer": {"numNodes": nodes, "devices": 2, "accelerator": "cpu"},
        "checkpoint": {"claimName": "ckpt", "path": "/checkpoints"},
        "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 10},
    }
    body.update(over)
    return TrainingJobSpec.model_validate(body)


def elastic(nodes: int = 2, min_nodes: int = 1, after: int = 60) -> TrainingJobSpec:
    return spec(nodes, elastic={"minNodes": min_nodes, "shrinkAfterSeconds": after})


def pod(rank: int, attempt: int = 0, phase: str = "Running", ready: bool = True,
        exit_code: Optional[int] = None, unschedulable_for: Optional[float] = None,
        deleting: bool = False) -> PodView:
    """A pod as the API returns it (built by the real builder), with a status."""
    body = build_pod(JOB, spec(), rank, attempt, "auto")
    created = NOW - timedelta(seconds=unschedulable_for if unschedulable_for is not None else 600)
    body["metadata"]["creationTimestamp"] = format_time(created)
    status: Dict[str, Any] = {"phase": phase, "conditions": []}
    if unschedulable_for is not None:
        status["phase"] = "Pending"
        status["conditions"].append({"type": "PodScheduled", "status": "False",
                                     "reason": "Unschedulable", "message": NO_ROOM})
    elif phase == "Running":
        status["conditions"].append({"type": "Ready", "status": "True" if ready else "False"})
    if exit_code is not None:
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": {
            "exitCode": exit_code, "reason": "Error", "finishedAt": format_time(NOW)}}}]
    if deleting:
        body["metadata"]["deletionTimestamp"] = format_time(NOW + timedelta(seconds=20))
    body["status"] = status
    return pod_view(body)


def st(**over: Any) -> TrainingJobStatus:
    return TrainingJobStatus.model_validate(over)


def look(job: TrainingJobSpec, status: TrainingJobStatus, *pods: PodView,
         now: datetime = NOW) -> Plan:
    return decide(job, JobMeta("elastic"), status, list(pods), True, now)


def reasons(plan: Plan) -> List[str]:
    return [e.reason for e in plan.events]


RUNNING_AT_2 = dict(phase="Running", numNodes=2, requestedNumNodes=2)


def test_a_new_job_records_its_size() -> None:
    plan = look(spec(3), st())
    assert plan.status.num_nodes == 3 and plan.status.requested_num_nodes == 3
    assert plan.create_ranks == [0, 1, 2]


def test_a_status_from_before_num_nodes_is_read_as_the_spec_size() -> None:
    plan = look(spec(2), st(phase="Running"), pod(0), pod(1))
    assert plan.status.num_nodes == 2 and plan.status.phase == "Running"
    assert not plan.delete_pods and not plan.events


def test_num_nodes_patched_down_stops_the_gang_for_a_new_attempt_at_the_new_size() -> None:
    plan = look(spec(1), st(**RUNNING_AT_2), pod(0), pod(1))
    out = plan.status
    assert out.phase == "Restarting" and out.attempt == 1
    assert out.num_nodes == 1 and out.requested_num_nodes == 1 and out.resizes == 1
    # A resize is not a failure: neither restart count nor budget moves.
    assert out.restarts == 0 and out.restarts_counted == 0 and out.last_failure is None
    assert sorted(plan.delete_pods) == ["elastic-node-0", "elastic-node-1"]
    assert not plan.force_delete_pods and not plan.create_ranks
    resized = condition(out, RESIZED)
    assert resized is not None and resized.status == "True" and resized.reason == "NumNodesChanged"
    assert "from 2 to 1 node(s)" in resized.message and "checkpoints on SIGTERM" in resized.message
    assert condition(out, "Running").reason == "Resizing"
    assert reasons(plan) == ["Resized"] and "from 2 to 1" in plan.events[0].message
    assert out.nodes.desired == 1 and out.ready_nodes == "0/1"


def test_the_old_gang_exiting_is_not_judged_and_the_new_one_starts_once_it_is_gone() -> None:
    resizing = look(spec(1), st(**RUNNING_AT_2), pod(0), pod(1)).status
    # SIGTERM: rank 0 checkpointed (75), rank 1 was killed (143): neither is a failure now.
    waiting = look(spec(1), resizing, pod(0, exit_code=75, phase="Failed", deleting=True),
                   pod(1, exit_code=143, phase="Failed", deleting=True))
    assert waiting.status.phase == "Restarting" and waiting.status.restarts == 0
    assert waiting.status.last_failure is None and not waiting.create_ranks
    assert waiting.requeue_after is not None
    # Old pods gone: the next attempt has exactly one pod, rank 0, and resumes.
    created = look(spec(1), waiting.status)
    assert created.create_ranks == [0] and created.resume == "auto"
    assert reasons(created) == ["Created", "CheckpointResumed"]
    running = look(spec(1), created.status, pod(0, attempt=1))
    assert running.status.phase == "Running" and running.status.ready_nodes == "1/1"
    assert running.status.resizes == 1 and running.status.attempt == 1


def test_num_nodes_patched_up_creates_the_larger_gang() -> None:
    resizing = look(spec(3), st(**RUNNING_AT_2), pod(0), pod(1)).status
    assert resizing.num_nodes == 3
    assert look(spec(3), resizing).create_ranks == [0, 1, 2]


def test_a_resize_without_a_gang_changes_the_size_only() -> None:
    # Restarting after a failure, old pods already gone, waiting out the backoff.
    backoff = st(phase="Restarting", attempt=1, restarts=1, restartsCounted=1, numNodes=2,
                 requestedNumNodes=2, backoffUntil=format_time(NOW + timedelta(seconds=5)))
    plan = look(spec(1), backoff)
    assert plan.status.attempt == 1 and plan.status.num_nodes == 1 and plan.status.resizes == 1
    assert not plan.delete_pods and not plan.create_ranks
    assert "attempt 1 starts 1 node(s)" in plan.events[0].message
    after = look(spec(1), plan.status, now=NOW + timedelta(seconds=6))
    assert after.create_ranks == [0] and after.status.backoff_until is None


def test_a_finished_gang_succeeds_rather_than_resizing() -> None:
    done = [pod(r, phase="Succeeded", exit_code=0) for r in (0, 1)]
    plan = look(spec(1), st(**RUNNING_AT_2), *done)
    assert plan.status.phase == "Succeeded" and plan.status.resizes == 0


def test_pods_are_built_for_the_gangs_size() -> None:
    pods = build_pods(JOB, spec(2).with_num_nodes(1), attempt=1, resume="auto")
    assert [p["metadata"]["name"] for p in pods] == ["elastic-node-0"]
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["NUM_NODES"] == env["PET_NNODES"] == "1" and env["WORLD_SIZE"] == "2"
    assert json.loads(env["VOLT_TRAINER"])["num_nodes"] == 1
    assert spec(2).with_num_nodes(2).trainer.num_nodes == 2


# -- spec.elastic: shrink when pods stay unschedulable

def test_an_unschedulable_pod_waits_out_the_grace_then_the_gang_shrinks() -> None:
    pending = st(phase="Pending", numNodes=2, requestedNumNodes=2)
    early = look(elastic(after=60), pending, pod(0), pod(1, unschedulable_for=20))
    assert early.status.num_nodes == 2 and not early.delete_pods
    assert early.requeue_after is not None and early.requeue_after <= 40
    plan = look(elastic(after=60), pending, pod(0), pod(1, unschedulable_for=61))
    out = plan.status
    assert out.num_nodes == 1 and out.requested_num_nodes == 2 and out.attempt == 1
    assert out.restarts == 0 and out.restarts_counted == 0 and out.resizes == 1
    assert sorted(plan.delete_pods) == ["elastic-node-0", "elastic-node-1"]
    resized = condition(out, RESIZED)
    assert resized.reason == "Unschedulable"
    for words in ("from 2 to 1 node(s)", "elastic-node-1 (Unschedulable: 0/2 nodes",
                  "spec.elastic.shrinkAfterSeconds", "minNodes 1"):
        assert words in resized.message, words
    assert "Resized" in reasons(plan)


def test_the_shrunk_size_holds_while_num_nodes_is_unchanged() -> None:
    shrunk = st(phase="Restarting", attempt=1, numNodes=1, requestedNumNodes=2)
    assert target_num_nodes(elastic(), shrunk) == 1
    plan = look(elastic(), shrunk)
    assert plan.create_ranks == [0] and plan.status.num_nodes == 1
    running = look(elastic(), plan.status, pod(0, attempt=1))
    assert running.status.phase == "Running" and running.status.ready_nodes == "1/1"


def test_never_below_min_nodes() -> None:
    pending = st(phase="Pending", numNodes=4, requestedNumNodes=4)
    three_late = [pod(0)] + [pod(r, unschedulable_for=61) for r in (1, 2, 3)]
    plan = look(elastic(4, min_nodes=2), pending, *three_late)
    assert plan.status.num_nodes == 2
    at_min = st(phase="Pending", attempt=1, numNodes=2, requestedNumNodes=4)
    still = look(elastic(4, min_nodes=2), at_min, pod(0, attempt=1),
                 pod(1, attempt=1, unschedulable_for=600))
    assert still.status.num_nodes == 2 and not still.delete_pods and still.status.resizes == 0


def test_without_elastic_an_unschedulable_gang_keeps_its_size() -> None:
    pending = st(phase="Pending", numNodes=2, requestedNumNodes=2)
    plan = look(spec(2), pending, pod(0), pod(1, unschedulable_for=6000))
    assert plan.status.num_nodes == 2 and plan.status.resizes == 0
    assert condition(plan.status, RESIZED) is None


def test_patching_num_nodes_overrides_a_shrink() -> None:
    shrunk = st(phase="Running", attempt=1, numNodes=1, requestedNumNodes=2)
    plan = look(elastic(3, min_nodes=1), shrunk, pod(0, attempt=1))
    assert plan.status.num_nodes == 3 and plan.status.attempt == 2
    assert condition(plan.status, RESIZED).reason == "NumNodesChanged"


def test_resuming_a_suspended_job_grows_back_to_num_nodes() -> None:
    suspended = st(phase="Suspended", attempt=1, numNodes=1, requestedNumNodes=2)
    plan = look(elastic(), suspended)
    assert plan.status.num_nodes == 2 and plan.status.attempt == 2
    assert condition(plan.status, RESIZED).reason == "Resumed"
    assert reasons(plan) == ["Resumed", "Resized"]
    assert look(elastic(), plan.status).create_ranks == [0, 1]
