"""Table-driven tests of the status machine: observed pods -> next phase and action."""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from volt_operator import failures
from volt_operator.api import (
    CheckpointStatus,
    TrainingJobSpec,
    TrainingProgress,
    TrainingJobStatus,
    format_time,
)
from volt_operator.builders import JobRef, build_pod
from volt_operator.observed import pod_view
from volt_operator.status import (
    MAX_CREATE_REFUSALS,
    RECONCILED,
    CreateError,
    JobMeta,
    after_create_errors,
    api_failure,
    clear_reconcile_failure,
    condition,
    decide,
    with_create_error,
    with_reconcile_failure,
)

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=timezone.utc)
JOB = JobRef("mnist", "ns", "uid-1")


def spec(**over: Any) -> TrainingJobSpec:
    body: Dict[str, Any] = {
        "image": "volt-trainer:1",
        "command": ["python", "-m", "volt.examples.synthetic"],
        "trainer": {"numNodes": 2, "devices": 2, "accelerator": "cpu"},
        "failurePolicy": {"maxRestarts": 2, "backoffSeconds": 10},
    }
    body.update(over)
    return TrainingJobSpec.model_validate(body)


def pod(
    rank: int,
    attempt: int = 0,
    phase: str = "Running",
    ready: bool = True,
    exit_code: Optional[int] = None,
    reason: Optional[str] = None,
    disruption: Optional[str] = None,
    pod_reason: Optional[str] = None,
    deleting: bool = False,
    gone: bool = False,
    finished: Optional[datetime] = None,
    deleted_at: Optional[datetime] = None,
    created: Optional[datetime] = None,
    waiting: Optional[str] = None,
    deletion_grace: Optional[int] = None,
    message: str = "",
    unschedulable: Optional[str] = None,
) -> Any:
    """A pod as the API returns it, built by the real builder then given a status."""
    body = build_pod(JOB, spec(), rank, attempt, "auto")
    body["metadata"]["creationTimestamp"] = format_time(created or NOW - timedelta(seconds=60))
    status: Dict[str, Any] = {"phase": phase, "podIP": f"198.18.0.{10 + rank}", "conditions": []}
    if waiting:
        status["containerStatuses"] = [{"name": "trainer", "state": {"waiting": {
            "reason": waiting, "message": f"{waiting} for volt-trainer:1"}}}]
    if phase == "Running":
        status["conditions"].append({"type": "Ready", "status": "True" if ready else "False"})
    if unschedulable:
        status["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                     "message": unschedulable})
    if exit_code is not None:
        term = {"exitCode": exit_code,
                "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                "finishedAt": format_time(finished or NOW)}
        if message:
            term["message"] = message
        status["containerStatuses"] = [{"name": "trainer", "state": {"terminated": term}}]
    if disruption:
        status["conditions"].append(
            {"type": "DisruptionTarget", "status": "True", "reason": disruption}
        )
    if pod_reason:
        status["reason"] = pod_reason
    if deleting:
        body["metadata"]["deletionTimestamp"] = format_time(deleted_at or NOW)
        if deletion_grace is not None:
            body["metadata"]["deletionGracePeriodSeconds"] = deletion_grace
    body["status"] = status
    return pod_view(body, gone=gone)


def running(*ranks: int, attempt: int = 0) -> List[Any]:
    return [pod(r, attempt) for r in ranks]


def st(**over: Any) -> TrainingJobStatus:
    return TrainingJobStatus.model_validate(over)


@dataclass
class Case:
    status: TrainingJobStatus
    pods: List[Any]
    phase: str
    spec: TrainingJobSpec = field(default_factory=spec)
    service: bool = True
    create: List[int] = field(default_factory=list)
    delete: List[str] = field(default_factory=list)
    attempt: int = 0
    restarts: int = 0
    counted: int = 0
    events: List[str] = field(default_factory=list)
    delete_job: bool = False
    resume: Optional[str] = None
    now: datetime = NOW
    failed_rank: Optional[int] = None


CASES: Dict[str, Case] = {
    "new job creates service and every pod": Case(
        st(), [], "Pending", service=False, create=[0, 1], events=["Created"], resume="auto"
    ),
    "pods scheduled but not ready stay pending": Case(
        st(phase="Pending"), [pod(0, phase="Pending"), pod(1)], "Pending"
    ),
    "all ready -> running": Case(st(phase="Pending"), running(0, 1), "Running", events=["Running"]),
    "running stays running, no action": Case(st(phase="Running"), running(0, 1), "Running"),
    "one pod missing while pending is recreated": Case(
        st(phase="Pending"), running(0), "Pending", create=[1]
    ),
    "all exit 0 -> succeeded": Case(
        st(phase="Running"),
        [pod(0, phase="Succeeded", exit_code=0), pod(1, phase="Succeeded", exit_code=0)],
        "Succeeded",
        events=["Succeeded"],
    ),
    "rank 0 done, rank 1 still running: wait": Case(
        st(phase="Running"), [pod(0, phase="Succeeded", exit_code=0), pod(1)], "Running"
    ),
    "user error fails fast and cleans running pods": Case(
        st(phase="Running"),
        [pod(0), pod(1, phase="Failed", exit_code=1)],
        "Failed",
        delete=["mnist-node-0"],
        events=["Failed"],
    ),
    "config error 78 fails fast": Case(
        st(phase="Running"), [pod(0), pod(1, phase="Failed", exit_code=78)], "Failed",
        delete=["mnist-node-0"], events=["Failed"],
    ),
    "OOM kill restarts the gang and spends budget": Case(
        st(phase="Running"),
        [pod(0), pod(1, phase="Failed", exit_code=137, reason="OOMKilled")],
        "Restarting",
        delete=["mnist-node-0", "mnist-node-1"],
        attempt=1, restarts=1, counted=1, events=["GangRestart"],
    ),
    "checkpointed 75 restarts without spending budget": Case(
        st(phase="Running"),
        [pod(0, phase="Failed", exit_code=75), pod(1, phase="Failed", exit_code=76)],
        "Restarting",
        delete=["mnist-node-0", "mnist-node-1"],
        attempt=1, restarts=1, counted=0, events=["GangRestart"],
    ),
    "preempted pod restarts for free even when peers report peer lost": Case(
        st(phase="Running"),
        [pod(0, phase="Failed", exit_code=76),
         pod(1, phase="Failed", exit_code=143, disruption="PreemptionByScheduler")],
        "Restarting",
        delete=["mnist-node-0", "mnist-node-1"],
        attempt=1, restarts=1, counted=0, events=["GangRestart"],
    ),
    "evicted pod (pod reason) restarts for free": Case(
        st(phase="Running"), [pod(0), pod(1, phase="Failed", pod_reason="Evicted")],
        "Restarting", delete=["mnist-node-0", "mnist-node-1"],
        attempt=1, restarts=1, counted=0, events=["GangRestart"],
    ),
    "crash beats peer-lost noise: user error of rank 1 fails the job": Case(
        st(phase="Running"),
        [pod(0, phase="Failed", exit_code=76), pod(1, phase="Failed", exit_code=2)],
        "Failed", events=["Failed"],
    ),
    "only peer-lost so far, the other rank still running: wait for the root cause": Case(
        st(phase="Running"), [pod(0, phase="Failed", exit_code=76), pod(1)], "Running",
    ),
    "peer-lost and the grace is over: restart, spends budget": Case(
        st(phase="Running"),
        [pod(0, phase="Failed", exit_code=76, finished=NOW - timedelta(seconds=16)), pod(1)],
        "Restarting", delete=["mnist-node-0", "mnist-node-1"],
        attempt=1, restarts=1, counted=1, events=["GangRestart"],
    ),
    "budget spent -> failed": Case(
        st(phase="Running", restarts=2, restartsCounted=2, attempt=2),
        [pod(0, 2), pod(1, 2, phase="Failed", exit_code=137)],
        "Failed", delete=["mnist-node-0"], attempt=2, restarts=2, counted=2, events=["Failed"],
    ),
    "free restarts have their own budget: the 21st fails the job": Case(
        st(phase="Running", restarts=20, restartsCounted=0, attempt=20),
        [pod(0, 20), pod(1, 20, phase="Failed", exit_code=75)],
        "Failed", delete=["mnist-node-0"], attempt=20, restarts=20, counted=0,
        events=["Failed"], failed_rank=1,
    ),
    "free restarts never exhaust the counted budget": Case(
        st(phase="Running", restarts=9, restartsCounted=2, attempt=9),
        [pod(0, 9), pod(1, 9, phase="Failed", exit_code=75)],
        "Restarting", delete=["mnist-node-0", "mnist-node-1"],
        attempt=10, restarts=10, counted=2, events=["GangRestart"],
    ),
    "pod gone while running, its DELETED event not seen yet: wait for it": Case(
        st(phase="Running"), running(0), "Running",
    ),
    "pod gone while running and no DELETED event came -> free gang restart": Case(
        st(phase="Running", podsMissingSince=format_time(NOW - timedelta(seconds=10))),
        running(0), "Restarting", delete=["mnist-node-0"],
        attempt=1, restarts=1, counted=0, events=["GangRestart"],
    ),
    "pod gone, then its DELETED event says it checkpointed -> free restart": Case(
        st(phase="Running", podsMissingSince=format_time(NOW - timedelta(seconds=3))),
        [pod(0), pod(1, phase="Failed", exit_code=75, gone=True)],
        "Restarting", delete=["mnist-node-0"], attempt=1, restarts=1, counted=0,
        events=["GangRestart"], failed_rank=1,
    ),
    "pod seen in its DELETED event with exit 75 -> free restart": Case(
        st(phase="Running"), [pod(0), pod(1, phase="Failed", exit_code=75, gone=True)],
        "Restarting", delete=["mnist-node-0"], attempt=1, restarts=1, counted=0,
        events=["GangRestart"],
    ),
    "terminating pod without exit code yet: wait for it": Case(
        st(phase="Running"), [pod(0), pod(1, deleting=True)], "Running"
    ),
    "deleted pod still shutting down, peer already exited 75: wait for it": Case(
        st(phase="Running"), [pod(0, phase="Failed", exit_code=75), pod(1, deleting=True)],
        "Running",
    ),
    "deleted pod and its peer both checkpointed: the deleted pod is the cause": Case(
        st(phase="Running"),
        [pod(0, phase="Failed", exit_code=75), pod(1, phase="Failed", exit_code=75,
                                                   deleting=True)],
        "Restarting", delete=["mnist-node-0"], attempt=1, restarts=1, counted=0,
        events=["GangRestart"], failed_rank=1,
    ),
    "deleted pod killed after its peer reported peer lost: it is the cause, free": Case(
        st(phase="Running"),
        [pod(0, phase="Failed", exit_code=76), pod(1, phase="Failed", exit_code=143,
                                                   deleting=True)],
        "Restarting", delete=["mnist-node-0"], attempt=1, restarts=1, counted=0,
        events=["GangRestart"], failed_rank=1,
    ),
    "a stuck terminating pod is judged once the grace period is long over": Case(
        st(phase="Running"),
        [pod(0), pod(1, deleting=True, deleted_at=NOW - timedelta(seconds=200))],
        "Restarting", delete=["mnist-node-0"], attempt=1, restarts=1, counted=0,
        events=["ForceDeleted", "GangRestart"], failed_rank=1,
    ),
    "restart: old gang still terminating, wait": Case(
        st(phase="Restarting", attempt=1, restarts=1, restartsCounted=1),
        [pod(0, 0, deleting=True), pod(1, 0, phase="Failed", exit_code=137)],
        "Restarting", delete=["mnist-node-1"], attempt=1, restarts=1, counted=1,
    ),
    "restart: old gang gone but backoff not over": Case(
        st(phase="Restarting", attempt=1, restarts=1, restartsCounted=1,
           backoffUntil=format_time(NOW + timedelta(seconds=5))),
        [], "Restarting", attempt=1, restarts=1, counted=1,
    ),
    "restart: backoff over -> new gang resumes from checkpoint": Case(
        st(phase="Restarting", attempt=1, restarts=1, restartsCounted=1,
           backoffUntil=format_time(NOW - timedelta(seconds=1)),
           checkpoint=CheckpointStatus(path="/checkpoints/mnist/last.ckpt", step=40)),
        [], "Restarting", create=[0, 1], attempt=1, restarts=1, counted=1,
        spec=spec(checkpoint={"claimName": "ckpts"}),
        events=["Created", "CheckpointResumed"], resume="auto",
    ),
    "restart: new gang ready -> running": Case(
        st(phase="Restarting", attempt=1, restarts=1), running(0, 1, attempt=1), "Running",
        attempt=1, restarts=1, events=["Running"],
    ),
    "suspend deletes pods and keeps the job": Case(
        st(phase="Running"), running(0, 1), "Suspended", spec=spec(suspend=True),
        delete=["mnist-node-0", "mnist-node-1"], events=["Suspended"],
    ),
    "resume recreates the gang as a new attempt": Case(
        st(phase="Suspended"), [], "Pending", create=[0, 1], attempt=1,
        spec=spec(checkpoint={"claimName": "ckpts"}),
        events=["Resumed", "Created", "CheckpointResumed"], resume="auto",
    ),
    "resume without a checkpoint volume starts over (no resume event)": Case(
        st(phase="Suspended"), [], "Pending", create=[0, 1], attempt=1,
        events=["Resumed", "Created"], resume="auto",
    ),
    "deadline exceeded fails and kills pods even with cleanPodPolicy None": Case(
        st(phase="Running", startTime=format_time(NOW - timedelta(seconds=61))),
        running(0, 1), "Failed",
        spec=spec(activeDeadlineSeconds=60, cleanPodPolicy="None"),
        delete=["mnist-node-0", "mnist-node-1"], events=["Failed"],
    ),
    "terminal phase is sticky: no recreation": Case(
        st(phase="Succeeded", completionTime=format_time(NOW)), [], "Succeeded"
    ),
    "failed job is sticky even if pods look healthy": Case(
        st(phase="Failed", completionTime=format_time(NOW)), running(0, 1), "Failed",
        delete=["mnist-node-0", "mnist-node-1"],
    ),
    "cleanPodPolicy All deletes finished pods": Case(
        st(phase="Succeeded", completionTime=format_time(NOW)),
        [pod(0, phase="Succeeded", exit_code=0)], "Succeeded",
        spec=spec(cleanPodPolicy="All"), delete=["mnist-node-0"],
    ),
    "ttl not reached: nothing": Case(
        st(phase="Succeeded", completionTime=format_time(NOW - timedelta(seconds=5))), [],
        "Succeeded", spec=spec(ttlSecondsAfterFinished=30),
    ),
    "ttl reached: delete the job": Case(
        st(phase="Succeeded", completionTime=format_time(NOW - timedelta(seconds=31))), [],
        "Succeeded", spec=spec(ttlSecondsAfterFinished=30), delete_job=True,
    ),
    "rule: exit 3 restarts instead of failing": Case(
        st(phase="Running"), [pod(0), pod(1, phase="Failed", exit_code=3)], "Restarting",
        spec=spec(failurePolicy={"rules": [
            {"action": "RestartGang", "onExitCodes": {"operator": "In", "values": [3]}}]}),
        delete=["mnist-node-0", "mnist-node-1"], attempt=1, restarts=1, counted=1,
        events=["GangRestart"],
    ),
    "rule: OOMKilled fails the job": Case(
        st(phase="Running"), [pod(0), pod(1, phase="Failed", exit_code=137, reason="OOMKilled")],
        "Failed", spec=spec(failurePolicy={"rules": [
            {"action": "FailJob", "onReasons": ["OOMKilled"]}]}),
        delete=["mnist-node-0"], events=["Failed"],
    ),
    "resume FromPath seeds the first attempt": Case(
        st(), [], "Pending", spec=spec(resume="FromPath", fromPath="/ckpt/seed.ckpt"),
        service=False, create=[0, 1], events=["Created"], resume="/ckpt/seed.ckpt",
    ),
    "resume Never": Case(
        st(), [], "Pending", spec=spec(resume="Never"), create=[0, 1], events=["Created"],
        resume="never",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_decide(name: str) -> None:
    case = CASES[name]
    plan = decide(case.spec, JobMeta("mnist", 3), case.status, case.pods, case.service, case.now)
    got = plan.status
    assert got.phase == case.phase
    assert plan.create_service == (not case.service)
    assert plan.create_ranks == case.create
    assert sorted(plan.delete_pods) == sorted(case.delete)
    assert got.attempt == case.attempt
    assert got.restarts == case.restarts
    assert got.restarts_counted == case.counted
    assert [e.reason for e in plan.events] == case.events
    assert plan.delete_job == case.delete_job
    assert got.observed_generation == 3
    if case.resume is not None:
        assert plan.resume == case.resume
    if case.failed_rank is not None:
        assert got.last_failure is not None and got.last_failure.rank == case.failed_rank
    # Level-based: the same observations again ask for no new transition.
    again = decide(case.spec, JobMeta("mnist", 3), got, case.pods, case.service, case.now)
    assert again.status.phase == got.phase or got.phase == "Restarting"
    assert again.status.attempt == got.attempt or got.phase in ("Suspended",)


def test_a_resumed_gang_says_the_engine_picks_the_latest_checkpoint_not_only_the_last_reported() -> None:
    # A SIGTERM save lands after the last progress poll: the event must not promise the older one.
    case = CASES["restart: backoff over -> new gang resumes from checkpoint"]
    plan = decide(case.spec, JobMeta("mnist", 3), case.status, case.pods, case.service, case.now)
    resumed = [e.message for e in plan.events if e.reason == "CheckpointResumed"]
    assert resumed == ["attempt 1 resumes from the latest checkpoint on the volume "
                       "(the last one reported: /checkpoints/mnist/last.ckpt, step 40)"]


def test_gang_restart_records_last_failure_and_backoff() -> None:
    plan = decide(
        spec(), JobMeta("mnist"), st(phase="Running"),
        [pod(0), pod(1, phase="Failed", exit_code=137, reason="OOMKilled")], True, NOW,
    )
    failure = plan.status.last_failure
    assert failure is not None
    assert (failure.pod, failure.rank, failure.exit_code, failure.reason) == (
        "mnist-node-1", 1, 137, "OOMKilled")
    assert plan.status.backoff_until == format_time(NOW + timedelta(seconds=10))
    restarting = next(c for c in plan.status.conditions if c.type == "Restarting")
    assert restarting.status == "True" and restarting.reason == "OOMKilled"
    # The second counted restart waits twice as long.
    plan2 = decide(
        spec(), JobMeta("mnist"),
        st(phase="Running", attempt=1, restarts=1, restartsCounted=1),
        [pod(0, 1), pod(1, 1, phase="Failed", exit_code=139)], True, NOW,
    )
    assert plan2.status.backoff_until == format_time(NOW + timedelta(seconds=20))


def test_user_error_names_rank_and_exit_code() -> None:
    plan = decide(
        spec(), JobMeta("mnist"), st(phase="Running"),
        [pod(0, phase="Failed", exit_code=76), pod(1, phase="Failed", exit_code=1)], True, NOW,
    )
    assert plan.status.phase == "Failed"
    failure = plan.status.last_failure
    assert failure is not None and (failure.rank, failure.exit_code) == (1, 1)
    assert failure.reason == "UserError"
    assert "rank 1" in failure.message and "exit code 1" in failure.message
    assert plan.status.completion_time == format_time(NOW)
    cond = next(c for c in plan.status.conditions if c.type == "Failed")
    assert cond.status == "True" and cond.reason == "UserError"


ROOT_CAUSE = "KeyError: 'label' at train.py:12 in training_step (global rank 3)"


@pytest.mark.parametrize("message, shown", [
    (ROOT_CAUSE, ROOT_CAUSE),
    (ROOT_CAUSE + "\nsecond line", ROOT_CAUSE),  # one line: events and kubectl columns stay readable
    ("KeyError: 'label' at train.py:12 in <module> (global rank 1)",  # raised outside the Trainer
     "KeyError: 'label' at train.py:12 in <module> (global rank 1)"),
    ('{"step": 12, "epoch": 0}', None),  # rank 0's final progress explains nothing
    ("", None),
])
def test_user_error_carries_the_failing_ranks_exception(message: str, shown: Optional[str]) -> None:
    plan = decide(
        spec(), JobMeta("mnist"), st(phase="Running"),
        [pod(0, phase="Failed", exit_code=76), pod(1, phase="Failed", exit_code=1, message=message)],
        True, NOW,
    )
    failure = plan.status.last_failure
    assert failure is not None and failure.reason == "UserError"
    expected = "mnist-node-1 (rank 1): exit code 1 (user error), reason Error"
    assert failure.message == (f"{expected}: {shown}" if shown else expected)
    failed_event = next(e for e in plan.events if e.reason == "Failed")
    assert failed_event.type == "Warning" and failed_event.message == failure.message


def test_the_exception_survives_a_gang_restart() -> None:
    restart_on_user_error = spec(failurePolicy={
        "maxRestarts": 2, "backoffSeconds": 0,
        "rules": [{"action": "RestartGang", "onExitCodes": {"operator": "In", "values": [1]}}]})
    plan = decide(
        restart_on_user_error, JobMeta("mnist"), st(phase="Running"),
        [pod(0, phase="Failed", exit_code=76), pod(1, phase="Failed", exit_code=1, message=ROOT_CAUSE)],
        True, NOW,
    )
    assert plan.status.phase == "Restarting"
    assert plan.status.last_failure is not None and ROOT_CAUSE in plan.status.last_failure.message
    restart_event = next(e for e in plan.events if e.reason == "GangRestart")
    assert ROOT_CAUSE in restart_event.message
    # The next attempt runs: the failed pods are gone, the status still says why the last one failed.
    later = decide(restart_on_user_error, JobMeta("mnist"), plan.status, running(0, 1, attempt=1), True,
                   NOW + timedelta(seconds=30))
    assert later.status.phase == "Running" and later.status.attempt == 1
    assert later.status.last_failure is not None and ROOT_CAUSE in later.status.last_failure.message


def test_condition_transition_time_moves_only_on_flip() -> None:
    first = decide(spec(), JobMeta("mnist"), st(phase="Pending"), running(0, 1), True, NOW)
    later = NOW + timedelta(minutes=5)
    second = decide(spec(), JobMeta("mnist"), first.status, running(0, 1), True, later)
    running_cond = next(c for c in second.status.conditions if c.type == "Running")
    assert running_cond.status == "True"
    assert running_cond.last_transition_time == format_time(NOW)


def test_nodes_column_counts_ready_pods() -> None:
    plan = decide(
        spec(), JobMeta("mnist"), st(phase="Pending"),
        [pod(0), pod(1, ready=False)], True, NOW,
    )
    assert plan.status.ready_nodes == "1/2"
    assert plan.status.nodes.desired == 2 and plan.status.nodes.ready == 1


def test_create_error_is_a_condition() -> None:
    out = with_create_error(st(phase="Pending"), "pods is forbidden: quota", NOW)
    cond = next(c for c in out.conditions if c.type == "Created")
    assert (cond.status, cond.reason) == ("False", "CreateFailed")
    assert "quota" in cond.message


def test_exit_codes_match_the_engine() -> None:
    """The operator copies the engine's exit codes (it imports neither torch nor volt).

    volt/exit_codes.py is loaded as a lone file: importing it through the volt
    package would import torch, which takes longer than this module's timeout on
    a loaded machine and is not what is under test.
    """
    path = Path(__file__).resolve().parents[2] / "trainer_image" / "volt" / "exit_codes.py"
    spec = importlib.util.spec_from_file_location("engine_exit_codes", path)
    assert spec is not None and spec.loader is not None
    exit_codes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exit_codes)
    for name in ("CHECKPOINTED", "PEER_LOST", "RENDEZVOUS_TIMEOUT", "CONFIG_ERROR",
                 "CHECKPOINT_VOLUME_FULL", "CHECKPOINT_VOLUME_ERROR", "RETRYABLE"):
        assert getattr(failures, name) == getattr(exit_codes, name), name


# --- progress mirroring and the status patch --------------------------------

def test_merge_patch_is_minimal_and_nulls_removed_keys() -> None:
    from volt_operator.reconciler import merge_patch

    old = {"phase": "Running", "backoffUntil": "t", "training": {"step": 1, "loss": 0.5},
           "conditions": [{"type": "Running"}]}
    new = {"phase": "Running", "training": {"step": 2}, "conditions": [{"type": "Running"}],
           "restarts": 1}
    assert merge_patch(old, new) == {
        "backoffUntil": None, "training": {"step": 2, "loss": None}, "restarts": 1,
    }
    assert merge_patch(new, new) == {}


def test_progress_from_a_real_http_endpoint() -> None:
    import http.server
    import json as _json
    import threading

    from volt_operator import progress

    payload = {"epoch": 2, "step": 130, "loss": 0.123456789, "progress": 0.65, "attempt": 0,
               "checkpoint": {"path": "/ckpt/j/last.ckpt", "step": 100,
                              "time": "2026-11-27T12:00:00Z"},
               "metrics": {"val_loss": 0.2}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = _json.dumps(payload).encode() if self.path == "/progress" else b"nope"
            self.send_response(200 if self.path == "/progress" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        got = progress.fetch("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    training, checkpoint = progress.to_status(got, NOW)
    assert (training.epoch, training.step, training.progress) == (2, 130, 0.65)
    assert training.loss == pytest.approx(0.123457)
    assert training.last_update == format_time(NOW)
    assert checkpoint is not None
    assert (checkpoint.path, checkpoint.step) == ("/ckpt/j/last.ckpt", 100)


def test_progress_errors_are_bounded() -> None:
    from volt_operator import progress
    from operator_process import free_port  # type: ignore[import-not-found]

    with pytest.raises(progress.ProgressError):
        progress.fetch("127.0.0.1", free_port(), timeout=0.5)
    training, checkpoint = progress.to_status({"epoch": "x", "loss": float("nan")}, NOW)
    assert training.epoch is None and training.loss is None and checkpoint is None


def test_final_progress_from_the_termination_message() -> None:
    from volt_operator import progress

    final = progress.from_termination_message(
        '{"epoch": 3, "step": 128, "loss": 0.01, "checkpoint": {"path": "/c/last.ckpt", '
        '"step": 128, "time": "2026-11-27T12:00:00Z"}}'
    )
    assert final is not None
    training, checkpoint = progress.to_status(final, NOW)
    assert (training.epoch, training.step) == (3, 128)
    assert checkpoint is not None and checkpoint.step == 128
    assert progress.from_termination_message("Error: boom") is None
    assert progress.from_termination_message('{"no": "step"}') is None


# --- bounded restarts, stuck pods, stalls -----------------------------------

def _cond(plan: Any, type_: str) -> Any:
    return next(c for c in plan.status.conditions if c.type == type_)


def test_free_restart_budget_is_configurable_and_named_in_the_failure() -> None:
    s = spec(failurePolicy={"maxRestarts": 2, "maxFreeRestarts": 1})
    first = decide(s, JobMeta("mnist"), st(phase="Running"),
                   [pod(0), pod(1, phase="Failed", pod_reason="Evicted")], True, NOW)
    assert first.status.phase == "Restarting" and first.status.restarts_counted == 0
    second = decide(s, JobMeta("mnist"), st(phase="Running", attempt=1, restarts=1),
                    [pod(0, 1), pod(1, 1, phase="Failed", pod_reason="Evicted")], True, NOW)
    assert second.status.phase == "Failed"
    failed = _cond(second, "Failed")
    assert failed.reason == "FreeRestartLimitExceeded"
    assert "maxFreeRestarts=1" in failed.message and "mnist-node-1" in failed.message
    # A counted failure still restarts: the budgets are separate.
    third = decide(s, JobMeta("mnist"), st(phase="Running", attempt=1, restarts=1),
                   [pod(0, 1), pod(1, 1, phase="Failed", exit_code=137)], True, NOW)
    assert third.status.phase == "Restarting" and third.status.restarts_counted == 1


def test_refused_pods_fail_the_job_after_a_bounded_number_of_tries() -> None:
    refused = [CreateError("creating pod mnist-node-1: POST ...: 422 Pod \"mnist-node-1\" is "
                           "invalid: spec.tolerations[0].operator: Invalid value", True)]
    status = st(phase="Pending")
    pods = [pod(0, phase="Pending", ready=False)]
    for attempt in range(1, MAX_CREATE_REFUSALS):
        plan = after_create_errors(spec(), status, refused, pods, NOW)
        status = plan.status
        assert status.phase == "Pending" and status.create_refusals == attempt
        assert _cond(plan, "Created").reason == "CreateFailed"
    plan = after_create_errors(spec(), status, refused, pods, NOW)
    assert plan.status.phase == "Failed" and plan.status.completion_time
    failed = _cond(plan, "Failed")
    assert failed.reason == "CreateFailed" and "spec.tolerations[0].operator" in failed.message
    assert plan.delete_pods == ["mnist-node-0"]  # the pod that did get created goes
    assert [e.reason for e in plan.events] == ["Failed"]


def test_quota_errors_retry_without_bound() -> None:
    quota = [CreateError("creating pod mnist-node-1: 403 exceeded quota: one-pod", False)]
    status = st(phase="Pending")
    for _ in range(MAX_CREATE_REFUSALS * 3):
        status = after_create_errors(spec(), status, quota, [], NOW).status
    assert status.phase == "Pending" and status.create_refusals == 0


def test_refusal_count_resets_once_the_gang_exists() -> None:
    plan = decide(spec(), JobMeta("mnist"), st(phase="Pending", createRefusals=2),
                  running(0, 1), True, NOW)
    assert plan.status.create_refusals == 0


@pytest.mark.parametrize(
    "ended_ago, grace, forced",
    [(31, None, True), (29, None, False), (300, 0, False)],
    ids=["past the margin", "within the margin", "already force-deleted (finalizer)"],
)
def test_old_gang_stuck_terminating_is_force_deleted(ended_ago: int, grace: Optional[int],
                                                     forced: bool) -> None:
    stale = [pod(0, 0, deleting=True, deleted_at=NOW - timedelta(seconds=ended_ago),
                 deletion_grace=grace),
             pod(1, 0, phase="Failed", exit_code=137, deleting=True)]
    status = st(phase="Restarting", attempt=1, restarts=1, restartsCounted=1)
    plan = decide(spec(), JobMeta("mnist"), status, stale, True, NOW)
    assert plan.status.phase == "Restarting" and plan.create_ranks == []
    assert plan.force_delete_pods == (["mnist-node-0"] if forced else [])
    events = [e for e in plan.events if e.reason == "ForceDeleted"]
    assert len(events) == (1 if forced else 0)
    if forced:
        assert events[0].type == "Warning" and "mnist-node-0" in events[0].message
    # Once it is gone the next attempt is created.
    after = decide(spec(), JobMeta("mnist"), plan.status, [], True, NOW + timedelta(seconds=20))
    assert after.create_ranks == [0, 1]


def test_stuck_margin_is_a_parameter() -> None:
    stale = [pod(0, 0, deleting=True, deleted_at=NOW - timedelta(seconds=5))]
    status = st(phase="Restarting", attempt=1, restarts=1, restartsCounted=1)
    plan = decide(spec(), JobMeta("mnist"), status, stale, True, NOW, stuck_pod_margin=2)
    assert plan.force_delete_pods == ["mnist-node-0"]


def _running_status(running_since: datetime, last_step: Optional[datetime]) -> Any:
    status = st(phase="Running", conditions=[{
        "type": "Running", "status": "True", "reason": "AllNodesReady", "message": "",
        "lastTransitionTime": format_time(running_since)}])
    if last_step is not None:
        status.training = TrainingProgress(step=40, last_step_time=format_time(last_step))
    return status


@pytest.mark.parametrize(
    "running_since, last_step, stalled",
    [
        (3600, 1801, True),   # no step for longer than the timeout
        (3600, 100, False),   # a recent step
        (3600, None, False),  # the engine reports no step time: never judged
        (60, 3000, False),    # a new gang: counted from when it became Running
        (1801, 3000, True),   # a new gang that never stepped
    ],
)
def test_stall_while_running(running_since: int, last_step: Optional[int],
                             stalled: bool) -> None:
    status = _running_status(
        NOW - timedelta(seconds=running_since),
        None if last_step is None else NOW - timedelta(seconds=last_step),
    )
    plan = decide(spec(), JobMeta("mnist"), status, running(0, 1), True, NOW)
    if not stalled:
        assert plan.status.phase == "Running" and not plan.delete_pods
        return
    assert plan.status.phase == "Restarting" and plan.status.restarts_counted == 1
    cond = _cond(plan, "Stalled")
    assert cond.status == "True" and "mnist-node-0" in cond.message
    assert "stallTimeoutSeconds=1800" in cond.message
    assert plan.status.last_failure is not None
    assert plan.status.last_failure.reason == "Stalled"
    assert sorted(plan.delete_pods) == ["mnist-node-0", "mnist-node-1"]
    # The new gang clears the condition once it runs.
    back = decide(spec(), JobMeta("mnist"), plan.status, running(0, 1, attempt=1), True,
                  NOW + timedelta(seconds=30))
    assert back.status.phase == "Running" and _cond(back, "Stalled").status == "False"


def test_stall_timeout_zero_turns_it_off() -> None:
    status = _running_status(NOW - timedelta(days=1), NOW - timedelta(days=1))
    plan = decide(spec(failurePolicy={"stallTimeoutSeconds": 0}), JobMeta("mnist"), status,
                  running(0, 1), True, NOW)
    assert plan.status.phase == "Running"


def test_gang_that_cannot_start_is_bounded_and_named() -> None:
    long_ago = NOW - timedelta(seconds=1801)
    pods = [pod(0, created=long_ago),
            pod(1, phase="Pending", waiting="ImagePullBackOff", created=long_ago)]
    waiting = decide(spec(), JobMeta("mnist"), st(phase="Pending"), pods[:1] + [
        pod(1, phase="Pending", waiting="ImagePullBackOff")], True, NOW)
    # Before the timeout the reason shows in the Running condition.
    assert waiting.status.phase == "Pending"
    assert "ImagePullBackOff" in _cond(waiting, "Running").message
    plan = decide(spec(), JobMeta("mnist"), st(phase="Pending"), pods, True, NOW)
    assert plan.status.phase == "Restarting" and plan.status.restarts_counted == 1
    cond = _cond(plan, "Stalled")
    assert "mnist-node-1 (ImagePullBackOff" in cond.message
    assert "mnist-node-0" not in cond.message


def test_last_update_is_the_time_of_the_last_step() -> None:
    from volt_operator import progress

    step_time = NOW - timedelta(seconds=42)
    training, _ = progress.to_status(
        {"step": 7, "last_step_time": step_time.timestamp()}, NOW)
    assert training.last_update == format_time(step_time) == training.last_step_time
    older, _ = progress.to_status({"step": 7}, NOW)
    assert older.last_update == format_time(NOW) and older.last_step_time is None


GPU_SHORTAGE = "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."


def waiting_pod(rank: int, why: str) -> Any:
    if why == "Unschedulable":
        return pod(rank, phase="Pending", unschedulable=GPU_SHORTAGE)
    return pod(rank, phase="Pending", waiting=why)


@pytest.mark.parametrize("why, reason, in_message, warning", [
    ("Unschedulable", "Unschedulable", "mnist-node-1 (Unschedulable: " + GPU_SHORTAGE + ")", True),
    ("ImagePullBackOff", "ImagePullBackOff", "mnist-node-1 (ImagePullBackOff: ImagePullBackOff for volt-trainer:1)",
     True),
    ("ErrImagePull", "ErrImagePull", "mnist-node-1 (ErrImagePull", True),
    ("CreateContainerConfigError", "CreateContainerConfigError", "mnist-node-1 (CreateContainerConfigError", True),
    ("ContainerCreating", "ContainerCreating", "mnist-node-1 (ContainerCreating", False),
])
def test_why_the_gang_is_not_ready_is_a_condition_and_a_warning(why: str, reason: str, in_message: str,
                                                                warning: bool) -> None:
    plan = decide(spec(), JobMeta("mnist"), st(phase="Pending"), [pod(0), waiting_pod(1, why)], True, NOW)
    ready = next(c for c in plan.status.conditions if c.type == "PodsReady")
    assert (ready.status, ready.reason) == ("False", reason)
    assert in_message in ready.message and "mnist-node-0" not in ready.message
    warnings = [e for e in plan.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == ([reason] if warning else [])
    if warning:
        assert in_message in warnings[0].message


def test_a_trouble_is_not_warned_again_until_it_changes_and_ready_clears_it() -> None:
    def look(status: TrainingJobStatus, *pods: Any) -> Any:
        return decide(spec(), JobMeta("mnist"), status, list(pods), True, NOW)

    first = look(st(phase="Pending"), pod(0), waiting_pod(1, "ErrImagePull"))
    assert [e.reason for e in first.events] == ["ErrImagePull"]
    # The same trouble on the next reconciles, or the kubelet's back-off spelling of it: no new event.
    again = look(first.status, pod(0), waiting_pod(1, "ErrImagePull"))
    backoff = look(again.status, pod(0), waiting_pod(1, "ImagePullBackOff"))
    assert again.events == [] and backoff.events == []
    assert next(c for c in backoff.status.conditions if c.type == "PodsReady").reason == "ImagePullBackOff"
    # Another trouble is news.
    unschedulable = look(backoff.status, waiting_pod(0, "Unschedulable"), waiting_pod(1, "ImagePullBackOff"))
    assert [e.reason for e in unschedulable.events] == ["Unschedulable"]
    ready = next(c for c in unschedulable.status.conditions if c.type == "PodsReady")
    assert "mnist-node-0 (Unschedulable" in ready.message and "mnist-node-1 (ImagePullBackOff" in ready.message
    # Every pod ready: the condition turns True and the job runs.
    running_plan = look(unschedulable.status, pod(0), pod(1))
    ready = next(c for c in running_plan.status.conditions if c.type == "PodsReady")
    assert running_plan.status.phase == "Running" and (ready.status, ready.reason) == ("True", "AllNodesReady")


def test_a_missing_pod_is_awaited_from_when_it_was_first_seen_missing() -> None:
    first = decide(spec(), JobMeta("mnist"), st(phase="Running"), running(0), True, NOW)
    assert first.status.phase == "Running"
    assert first.status.pods_missing_since == format_time(NOW)
    later = decide(spec(), JobMeta("mnist"), first.status, running(0), True,
                   NOW + timedelta(seconds=5))
    assert later.status.phase == "Running"  # still within the grace
    last = decide(spec(), JobMeta("mnist"), later.status, running(0), True,
                  NOW + timedelta(seconds=11))
    assert last.status.phase == "Restarting"
    assert last.status.last_failure is not None
    assert last.status.last_failure.reason == "PodDeleted"
    assert last.status.pods_missing_since is None


# --- a deleted pod is a disruption, not a crash ------------------------------------------------

@pytest.mark.parametrize("code, gone", [(143, False), (137, False), (143, True), (None, True)],
                         ids=["SIGTERM, terminating", "SIGKILL after the grace period",
                              "SIGTERM, seen in its DELETED event", "no exit code, gone"])
def test_a_deleted_pod_restarts_for_free_whatever_signal_ended_it(code: Optional[int], gone: bool) -> None:
    """kubectl delete pod: the trainer did not checkpoint in its grace period (143), or was
    killed at its end (137). The deletion stopped it: PodDeleted, a free restart, never
    Crashed; the peer's PEER_LOST is its consequence."""
    deleted = pod(1, phase="Failed", exit_code=code, deleting=True, gone=gone) if code is not None \
        else pod(1, phase="Running", deleting=True, gone=gone)
    peer = pod(0, phase="Failed", exit_code=76)
    for pods in ([peer, deleted], [deleted, peer]):
        plan = decide(spec(), JobMeta("mnist"), st(phase="Running"), pods, True, NOW)
        assert plan.status.phase == "Restarting"
        assert plan.status.restarts == 1 and plan.status.restarts_counted == 0
        last = plan.status.last_failure
        assert last is not None and last.reason == "PodDeleted" and last.rank == 1, last
        assert "not counted against the budget" in _cond(plan, "Restarting").message


def test_deleted_pods_spend_the_free_budget() -> None:
    s = spec(failurePolicy={"maxRestarts": 2, "maxFreeRestarts": 1})
    pods = [pod(0, 1, phase="Failed", exit_code=76), pod(1, 1, phase="Failed", exit_code=143, deleting=True)]
    plan = decide(s, JobMeta("mnist"), st(phase="Running", attempt=1, restarts=1), pods, True, NOW)
    assert plan.status.phase == "Failed"
    assert _cond(plan, "Failed").reason == "FreeRestartLimitExceeded"


@pytest.mark.parametrize("reason", ["OOMKilled", None])
def test_a_signal_without_a_deletion_is_still_a_crash(reason: Optional[str]) -> None:
    pods = [pod(0), pod(1, phase="Failed", exit_code=137, reason=reason)]
    plan = decide(spec(), JobMeta("mnist"), st(phase="Running"), pods, True, NOW)
    assert plan.status.restarts_counted == 1
    assert plan.status.last_failure is not None
    assert plan.status.last_failure.reason == (reason or "Crashed")


def test_an_oom_kill_while_being_deleted_is_an_oom_kill() -> None:
    pods = [pod(0), pod(1, phase="Failed", exit_code=137, reason="OOMKilled", deleting=True)]
    plan = decide(spec(), JobMeta("mnist"), st(phase="Running"), pods, True, NOW)
    assert plan.status.restarts_counted == 1 and plan.status.last_failure.reason == "OOMKilled"


# --- a full checkpoint volume is named whichever rank reported first ---------------------------

VOLUME_FULL = ("CheckpointVolumeFull: the checkpoint volume is full: writing /checkpoints/mnist/latest.json "
               "failed with ENOSPC (No space left on device)")


@pytest.mark.parametrize("order", ["full first", "peer lost first"])
def test_the_full_volume_is_the_root_cause_over_peer_lost(order: str) -> None:
    full = pod(0, phase="Failed", exit_code=79, message=VOLUME_FULL)
    lost = pod(1, phase="Failed", exit_code=76)
    pods = [full, lost] if order == "full first" else [lost, full]
    plan = decide(spec(), JobMeta("mnist"), st(phase="Running"), pods, True, NOW)
    last = plan.status.last_failure
    assert last is not None and last.reason == "CheckpointVolumeFull" and last.rank == 0, last
    assert "ENOSPC" in last.message


@pytest.mark.parametrize("order", ["node 0 first", "node 1 first"])
def test_a_node_that_exited_peer_lost_but_whose_rank_hit_enospc_names_the_full_volume(order: str) -> None:
    """Node 0's rank 0 hit ENOSPC (its termination message says so), but its local rank 1
    saw the closed connection first and the node exited 76, as did node 1."""
    node0 = pod(0, phase="Failed", exit_code=76, message=VOLUME_FULL)
    node1 = pod(1, phase="Failed", exit_code=76)
    pods = [node0, node1] if order == "node 0 first" else [node1, node0]
    plan = decide(spec(), JobMeta("mnist"), st(phase="Running"), pods, True, NOW)
    last = plan.status.last_failure
    assert last is not None and last.reason == "CheckpointVolumeFull" and last.rank == 0, last
    assert "exit code 76 (lost a peer)" in last.message
    assert "but its rank failed first-hand with exit code 79 (checkpoint volume full)" in last.message
    assert plan.status.restarts_counted == 1


def test_peer_lost_seen_before_the_full_volume_waits_for_it() -> None:
    """In time: the peer's 76 arrives while the rank that hit ENOSPC is still exiting."""
    lost = pod(1, phase="Failed", exit_code=76, finished=NOW - timedelta(seconds=1))
    waiting = decide(spec(), JobMeta("mnist"), st(phase="Running"), [pod(0), lost], True, NOW)
    assert waiting.status.phase == "Running" and waiting.status.last_failure is None
    full = pod(0, phase="Failed", exit_code=79, message=VOLUME_FULL)
    later = decide(spec(), JobMeta("mnist"), waiting.status, [full, lost], True, NOW + timedelta(seconds=2))
    assert later.status.last_failure is not None
    assert later.status.last_failure.reason == "CheckpointVolumeFull"


# --- the stall clock of a restarted gang starts at its first step ------------------------------

def _with_step(status: Any, step_at: Optional[datetime], step: int = 40) -> Any:
    status = status.model_copy(deep=True)
    status.training = TrainingProgress(step=step, last_step_time=None if step_at is None else format_time(step_at))
    return status


def test_a_restarted_gang_is_not_stalled_while_it_starts_up() -> None:
    """stallTimeoutSeconds=30: the first gang stalls and restarts; the new gang takes longer
    than 30 s to its first step (start, rendezvous, checkpoint load). That is not a stall:
    the clock starts at its first step, and its start-up is bounded by the rendezvous
    timeout plus the stall timeout."""
    s = spec(failurePolicy={"maxRestarts": 5, "backoffSeconds": 0, "stallTimeoutSeconds": 30},
             rendezvous={"timeoutSeconds": 120})
    hung = _with_step(_running_status(NOW - timedelta(seconds=300), None), NOW - timedelta(seconds=31))
    first = decide(s, JobMeta("mnist"), hung, running(0, 1), True, NOW)
    assert first.status.phase == "Restarting" and first.status.last_failure.reason == "Stalled"
    assert first.status.training.last_step_time is None and first.status.training.step == 40
    t = NOW + timedelta(seconds=5)
    new_gang = decide(s, JobMeta("mnist"), first.status, running(0, 1, attempt=1), True, t)
    assert new_gang.status.phase == "Running"
    # 31 s and 149 s later, still no step of the new gang: starting up, not stalled.
    for later in (31, 149):
        plan = decide(s, JobMeta("mnist"), new_gang.status, running(0, 1, attempt=1), True,
                      t + timedelta(seconds=later))
        assert plan.status.phase == "Running" and plan.status.restarts == 1, later
    # Its first step at +60 s: from then on the 30 s clock runs from its last step.
    stepped = _with_step(new_gang.status, t + timedelta(seconds=60), step=41)
    fine = decide(s, JobMeta("mnist"), stepped, running(0, 1, attempt=1), True, t + timedelta(seconds=89))
    assert fine.status.phase == "Running"
    stalled = decide(s, JobMeta("mnist"), stepped, running(0, 1, attempt=1), True, t + timedelta(seconds=91))
    assert stalled.status.phase == "Restarting" and stalled.status.restarts == 2


def test_a_restarted_gang_that_never_steps_is_bounded_by_the_startup_allowance() -> None:
    s = spec(failurePolicy={"maxRestarts": 5, "stallTimeoutSeconds": 30}, rendezvous={"timeoutSeconds": 120})
    status = _with_step(_running_status(NOW - timedelta(seconds=151), None), None)
    plan = decide(s, JobMeta("mnist"), status, running(0, 1), True, NOW)
    assert plan.status.phase == "Restarting"
    cond = _cond(plan, "Stalled")
    assert "rendezvous.timeoutSeconds=120 + failurePolicy.stallTimeoutSeconds=30" in cond.message
    early = decide(s, JobMeta("mnist"), status, running(0, 1), True, NOW - timedelta(seconds=2))
    assert early.status.phase == "Running" and early.requeue_after is not None


def test_pods_merely_starting_get_the_startup_allowance_troubled_ones_the_timeout() -> None:
    s = spec(failurePolicy={"stallTimeoutSeconds": 30}, rendezvous={"timeoutSeconds": 120})
    created = NOW - timedelta(seconds=31)

    def on_node(view: Any) -> Any:
        return dataclasses.replace(view, node="node-b")

    starting = [on_node(pod(0, created=created)),
                on_node(pod(1, phase="Pending", waiting="ContainerCreating", created=created))]
    assert decide(s, JobMeta("mnist"), st(phase="Pending"), starting, True, NOW).status.phase == "Pending"
    late = decide(s, JobMeta("mnist"), st(phase="Pending"), starting, True, NOW + timedelta(seconds=120))
    assert late.status.phase == "Restarting"
    pulling = [on_node(pod(0, created=created)),
               on_node(pod(1, phase="Pending", waiting="ImagePullBackOff", created=created))]
    assert decide(s, JobMeta("mnist"), st(phase="Pending"), pulling, True, NOW).status.phase == "Restarting"
    # No node yet (no scheduler took it, or no capacity): waiting for capacity, not starting.
    unscheduled = [on_node(pod(0, created=created)), pod(1, phase="Pending", created=created)]
    assert decide(s, JobMeta("mnist"), st(phase="Pending"), unscheduled, True, NOW).status.phase == "Restarting"


def test_the_stalled_message_says_rank_0_reports_and_the_hang_may_be_elsewhere() -> None:
    status = _running_status(NOW - timedelta(seconds=3600), NOW - timedelta(seconds=1801))
    plan = decide(spec(), JobMeta("mnist"), status, running(0, 1), True, NOW)
    message = _cond(plan, "Stalled").message
    assert "rank 0 (mnist-node-0) last reported step 40" in message
    assert "Rank 0 is the rank that reports progress, not necessarily the one that hangs" in message


# --- a pod the namespace's Pod Security level forbids ------------------------------------------

POD_SECURITY_403 = (
    'creating pod mnist-node-0: POST /api/v1/namespaces/ns/pods: 403 pods "mnist-node-0" is forbidden: '
    'violates PodSecurity "restricted:latest": privileged (container "trainer" must not set '
    'securityContext.privileged=true)')


def test_a_pod_security_refusal_fails_the_job_naming_the_rule() -> None:
    refused = [CreateError(POD_SECURITY_403, False)]  # 403: not a 400/422 "invalid"
    status = st(phase="Pending")
    for attempt in range(1, MAX_CREATE_REFUSALS):
        plan = after_create_errors(spec(), status, refused, [], NOW)
        status = plan.status
        assert status.phase == "Pending" and status.create_refusals == attempt
    plan = after_create_errors(spec(), status, refused, [], NOW)
    assert plan.status.phase == "Failed"
    failed = _cond(plan, "Failed")
    assert failed.reason == "PodSecurityViolation"
    assert ('violates PodSecurity "restricted:latest": privileged (container "trainer" must not set '
            'securityContext.privileged=true)') in failed.message


def test_other_403s_still_retry_without_bound() -> None:
    forbidden = [CreateError('creating pod mnist-node-0: 403 pods "mnist-node-0" is forbidden: exceeded quota: '
                             'one-pod, requested: pods=1', False)]
    status = st(phase="Pending")
    for _ in range(MAX_CREATE_REFUSALS * 2):
        status = after_create_errors(spec(), status, forbidden, [], NOW).status
    assert status.phase == "Pending"


def test_a_container_that_did_not_start_says_why() -> None:
    """Exit 128 StartError is the runtime's: the message carries its reason, not "killed by signal 0"."""
    why = 'exec: "volt-run": executable file not found in $PATH'
    pods = [pod(0), pod(1, phase="Failed", exit_code=128, reason="StartError", message=why)]
    plan = decide(spec(), JobMeta("mnist"), st(phase="Running"), pods, True, NOW)
    last = plan.status.last_failure
    assert last is not None and why in last.message and "signal 0" not in last.message, last


FORBIDDEN = ('pods "mnist-node-0" is forbidden: User "system:serviceaccount:volt:volt-operator" '
             'cannot delete resource "pods" in API group "" in the namespace "ns"')


def test_a_forbidden_request_says_what_the_operator_may_not_do_and_what_to_grant() -> None:
    reason, message = api_failure(403, "Forbidden", "delete pods/mnist-node-0 in namespace ns", FORBIDDEN)
    assert reason == "Forbidden"
    assert message.startswith("the operator may not delete pods/mnist-node-0 in namespace ns: pods")
    assert "service account" in message and "docs/packaging.md" in message and "backoff" in message


def test_another_api_error_keeps_the_servers_reason() -> None:
    reason, message = api_failure(503, "ServiceUnavailable", "create pods in namespace ns", "try later")
    assert reason == "ServiceUnavailable"
    assert "answered 503" in message and "create pods in namespace ns: try later" in message
    assert api_failure(500, None, "get trainingjobs.volt.dev/x", "boom")[0] == "ApiError"


def test_a_failure_is_said_once_and_turns_true_when_requests_succeed_again() -> None:
    st = TrainingJobStatus(phase="Running")
    reason, message = api_failure(403, "Forbidden", "delete pods/mnist-node-0 in namespace ns", FORBIDDEN)
    failed = with_reconcile_failure(st, reason, message, NOW)
    assert failed is not None and not st.conditions  # the input is not changed
    said = condition(failed, RECONCILED)
    assert said is not None and (said.status, said.reason) == ("False", "Forbidden")
    assert with_reconcile_failure(failed, reason, message, NOW + timedelta(seconds=30)) is None
    other = with_reconcile_failure(failed, "InternalError", "boom", NOW + timedelta(seconds=30))
    assert other is not None
    changed = condition(other, RECONCILED)
    assert changed is not None and changed.reason == "InternalError"
    assert changed.last_transition_time == said.last_transition_time  # still False: no transition

    clear_reconcile_failure(other, NOW + timedelta(seconds=60))
    recovered = condition(other, RECONCILED)
    assert recovered is not None and (recovered.status, recovered.reason) == ("True", "Recovered")
    assert "InternalError" in recovered.message
    clear_reconcile_failure(st, NOW)
    assert condition(st, RECONCILED) is None  # a job that never failed gets no condition
