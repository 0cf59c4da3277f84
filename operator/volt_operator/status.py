"""The status machine: one pure function from what is observed to what to do.

``decide(spec, meta, status, pods, service_exists, now)`` returns a ``Plan``:
the next status plus the actions that bring the world closer to the spec. It
is level-based: called again with the same observations it asks for the same
(idempotent) actions, so the operator can restart at any time. The handler
writes the status *first* and acts second, so an intent such as "gang restart,
attempt 3" survives an operator crash between the two.

Phases: Pending -> Running -> Succeeded | Failed, with Restarting (gang
restart in progress), Suspended, and Queued (waiting for Kueue's admission,
kueue.py) on the side. Terminal phases are sticky.

Every wait is bounded: a pod stuck terminating on a node that no longer
reports is force-deleted, a gang that stops stepping or never starts is
restarted after ``stallTimeoutSeconds``, free restarts have their own budget,
and pods the API server refuses fail the job after a few tries
(``after_create_errors``). docs/reliability.md lists each fault.

The gang's size is ``status.numNodes``: spec.trainer.numNodes, or fewer after
an elastic shrink. A different size is a resize: the running gang is deleted
(SIGTERM: it checkpoints and exits 75) and a new attempt starts at the new
size and resumes; no restart budget is spent (docs/operator.md, Elastic jobs).
A shrunk elastic job keeps capacity probes for its missing nodes and grows back
at its next checkpoint once they are all bound (``_grow_back``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import List, Optional, Sequence, Tuple

from . import failures
from .kueue import CHANGED_WHILE_ADMITTED, WORKLOAD_RECREATED, Admission
from .api import (
    TERMINAL_PHASES,
    Condition,
    FailureInfo,
    GrowBackStatus,
    NodeCounts,
    TrainingJobSpec,
    TrainingJobStatus,
    format_time,
    parse_time,
)
from .builders import pod_name, probe_name, resume_value
from .observed import PodView

MAX_BACKOFF_SECONDS = 600
# A pod still there this long after its grace period ended (its deletionTimestamp)
# has a node that does not report back (NotReady, unreachable, kubelet gone):
# it is force-deleted so that the gang, whose pods keep their names, can restart.
STUCK_POD_MARGIN_SECONDS = 30.0
# A running pod that vanished without its DELETED event seen yet: how long to
# wait for that event (its exit code says checkpointed, evicted...) before
# counting it as deleted.
DELETED_EVENT_GRACE_SECONDS = 10.0
# Creations the API server refuses (an invalid pod: 400/422) before the job fails.
MAX_CREATE_REFUSALS = 3
# A rank that exits with PEER_LOST reports a consequence; give the rank that
# caused it this long to report its own exit before judging the gang.
PEER_LOST_GRACE_SECONDS = 15.0
# How often a job that waits on something (deletions, backoff) is looked at.
WAIT_POLL_SECONDS = 2.0

# Condition types.
RUNNING = "Running"
RESTARTING = "Restarting"
SUSPENDED = "Suspended"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CREATED = "Created"
STALLED = "Stalled"
PODS_READY = "PodsReady"
RESIZED = "Resized"
PROGRESS_POLLED = "ProgressPolled"  # set by the reconciler, which reads rank 0's /progress
ADMITTED = "Admitted"  # Kueue's admission of the job's Workload (kueue.py)
PREEMPTED = "Preempted"
RECONCILED = "Reconciled"  # False while the operator's own requests for the job fail (reconciler.py)

# Waiting reasons that say the gang cannot start by itself (a user or an admin must act),
# grouped so that a kubelet alternating ErrImagePull and ImagePullBackOff warns once.
_WAITING_PROBLEMS = {
    "Unschedulable": "Unschedulable",
    "ErrImagePull": "ImagePull",
    "ImagePullBackOff": "ImagePull",
    "InvalidImageName": "ImagePull",
    "ErrImageNeverPull": "ImagePull",
    "CreateContainerConfigError": "ContainerConfig",
    "CreateContainerError": "ContainerConfig",
    "RunContainerError": "ContainerConfig",
    "CrashLoopBackOff": "CrashLoop",
}


@dataclass(frozen=True)
class JobMeta:
    name: str
    generation: int = 1


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    status: TrainingJobStatus
    create_service: bool = False
    create_ranks: List[int] = field(default_factory=list)
    resume: str = "auto"
    delete_pods: List[str] = field(default_factory=list)
    # Deleted with gracePeriodSeconds=0: stuck terminating on a node that is gone.
    force_delete_pods: List[str] = field(default_factory=list)
    delete_job: bool = False
    events: List[Event] = field(default_factory=list)
    requeue_after: Optional[float] = None
    restart_reason: Optional[str] = None
    became_running: bool = False
    # Capacity probes (builders.build_probe) to create, by node rank, and to delete.
    create_probes: List[int] = field(default_factory=list)
    delete_probes: List[str] = field(default_factory=list)
    # False: the job wants no probes now (decide deletes those there are).
    keeps_probes: bool = False

    def requeue(self, seconds: float) -> None:
        seconds = max(0.5, seconds)
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds

    def emit(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))


def set_condition(
    status: TrainingJobStatus,
    type_: str,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
) -> None:
    """Upsert a condition; its transition time moves only when its status flips."""
    text = "True" if value else "False"
    for i, cond in enumerate(status.conditions):
        if cond.type == type_:
            changed = cond.status != text
            status.conditions[i] = Condition(
                type=type_,
                status=text,
                reason=reason,
                message=message,
                last_transition_time=format_time(now) if changed else cond.last_transition_time,
                observed_generation=status.observed_generation,
            )
            return
    status.conditions.append(
        Condition(
            type=type_,
            status=text,
            reason=reason,
            message=message,
            last_transition_time=format_time(now),
            observed_generation=status.observed_generation,
        )
    )


def condition(status: TrainingJobStatus, type_: str) -> Optional[Condition]:
    return next((c for c in status.conditions if c.type == type_), None)


def with_create_error(status: TrainingJobStatus, message: str, now: datetime) -> TrainingJobStatus:
    """The status after creating children failed (shown to users, not only logged)."""
    out = status.model_copy(deep=True)
    set_condition(out, CREATED, False, "CreateFailed", message[:4000], now)
    return out


def api_failure(code: int, reason: Optional[str], action: str, message: str) -> Tuple[str, str]:
    """The ``Reconciled=False`` reason and message for a request of the operator's that
    the API server answered with an error (``action``: 'delete pods/x in namespace ns')."""
    if code == 403:
        return "Forbidden", (
            f"the operator may not {action}: {message}. Grant the operator's service account "
            "this permission (docs/packaging.md lists all the operator needs); it tries again "
            "with backoff")
    return reason or "ApiError", (
        f"the API server answered {code} when the operator tried to {action}: {message}; "
        "it tries again with backoff")


def with_reconcile_failure(status: TrainingJobStatus, reason: str, message: str,
                           now: datetime) -> Optional[TrainingJobStatus]:
    """The status that says the operator cannot act on the job; None when it says so already."""
    said = condition(status, RECONCILED)
    message = message[:4000]
    if said is not None and (said.status, said.reason, said.message) == ("False", reason, message):
        return None
    out = status.model_copy(deep=True)
    set_condition(out, RECONCILED, False, reason, message, now)
    return out


def clear_reconcile_failure(status: TrainingJobStatus, now: datetime) -> None:
    """The operator's requests succeed again: a ``Reconciled=False`` turns True."""
    said = condition(status, RECONCILED)
    if said is not None and said.status == "False":
        set_condition(status, RECONCILED, True, "Recovered",
                      f"the operator's requests for the job succeed again (they failed: {said.reason})",
                      now)


# What Pod Security admission answers (403): 'pods "x" is forbidden: violates
# PodSecurity "restricted:latest": privileged (container "trainer" must not set ...)'.
_POD_SECURITY = re.compile(r'violates PodSecurity "[^"]*":.*', re.DOTALL)


def pod_security_violation(message: str) -> Optional[str]:
    """The rule(s) a pod broke, from a Pod Security admission refusal; None for other errors."""
    found = _POD_SECURITY.search(message)
    return found.group(0).strip() if found else None


@dataclass(frozen=True)
class CreateError:
    """Creating one child failed. ``refused``: the API server refused the object
    itself (400 BadRequest / 422 Invalid), so the same request cannot succeed
    later; other errors (quota, throttling, a webhook that is down) may pass.
    A Pod Security refusal (403) is a refusal too: the namespace's enforce level
    does not change by waiting."""

    message: str
    refused: bool

    @property
    def pod_security(self) -> Optional[str]:
        return pod_security_violation(self.message)

    @property
    def final(self) -> bool:
        return self.refused or self.pod_security is not None


def after_create_errors(
    spec: TrainingJobSpec,
    status: TrainingJobStatus,
    errors: List[CreateError],
    pods: List[PodView],
    now: datetime,
) -> Plan:
    """The status after creations failed: condition Created=False with the API
    server's message; after MAX_CREATE_REFUSALS refusals the job fails with it
    (reason CreateFailed, or PodSecurityViolation naming the broken rules)
    instead of asking again every few seconds forever."""
    plan = Plan(status=with_create_error(status, "; ".join(e.message for e in errors), now))
    refused = [e for e in errors if e.final]
    if not refused:
        plan.requeue(5.0)
        return plan
    st = plan.status
    st.create_refusals += 1
    if st.create_refusals < MAX_CREATE_REFUSALS:
        plan.requeue(5.0)
        return plan
    pods_left = [p for p in pods if not p.gone]
    violation = next((e.pod_security for e in refused if e.pod_security), None)
    if violation is not None:
        return _finish(
            spec, plan, pods_left, now, "Failed", "PodSecurityViolation",
            f"the namespace's Pod Security admission refused the job's pods "
            f"{st.create_refusals} times: {violation}. Change spec.template (or the "
            "namespace's pod-security.kubernetes.io/enforce label) and create the job again",
        )
    return _finish(
        spec, plan, pods_left, now, "Failed", "CreateFailed",
        f"the job's pods were refused {st.create_refusals} times: "
        f"{refused[0].message}",
    )


def _count(status: TrainingJobStatus, current: List[PodView], desired: int) -> None:
    live = [p for p in current if not p.gone]
    status.nodes = NodeCounts(
        desired=desired,
        ready=sum(p.ready for p in live),
        active=sum(p.active for p in live),
        succeeded=sum(p.succeeded for p in live),
        failed=sum(p.failed for p in live),
    )
    status.ready_nodes = f"{status.nodes.ready}/{desired}"


def _deletable(pods: List[PodView]) -> List[str]:
    return [p.name for p in pods if not p.deleting]


def _cleanup(spec: TrainingJobSpec, pods: List[PodView]) -> List[str]:
    if spec.clean_pod_policy == "All":
        return _deletable(pods)
    if spec.clean_pod_policy == "Running":
        return _deletable([p for p in pods if p.active])
    return []


def _ttl(spec: TrainingJobSpec, status: TrainingJobStatus, plan: Plan, now: datetime) -> None:
    if spec.ttl_seconds_after_finished is None:
        return
    done = parse_time(status.completion_time) or now
    left = (done + timedelta(seconds=spec.ttl_seconds_after_finished) - now).total_seconds()
    if left <= 0:
        plan.delete_job = True
    else:
        plan.requeue(left)


def _finish(
    spec: TrainingJobSpec,
    plan: Plan,
    pods: List[PodView],
    now: datetime,
    phase: str,
    reason: str,
    message: str,
    kill_all: bool = False,
) -> Plan:
    st = plan.status
    st.phase = phase
    st.completion_time = format_time(now)
    st.backoff_until = None
    st.pods_missing_since = None
    ok = phase == "Succeeded"
    set_condition(st, SUCCEEDED if ok else FAILED, True, reason, message, now)
    set_condition(st, RUNNING, False, reason, message, now)
    if condition(st, RESTARTING) is not None:
        set_condition(st, RESTARTING, False, reason, message, now)
    plan.emit("Normal" if ok else "Warning", "Succeeded" if ok else "Failed", message)
    # A deadline stops the training whatever cleanPodPolicy says.
    plan.delete_pods = _deletable([p for p in pods if p.active]) if kill_all else []
    plan.delete_pods = sorted(set(plan.delete_pods) | set(_cleanup(spec, pods)))
    _ttl(spec, st, plan, now)
    return plan


def _new_attempt(st: TrainingJobStatus) -> None:
    """A new gang has made no step yet: the stall clock waits for its first
    (``lastStepTime`` is the current attempt's; the step count stays on show)."""
    if st.training is not None:
        st.training.last_step_time = None


def _restart(
    spec: TrainingJobSpec, plan: Plan, pods: List[PodView], verdict: failures.Verdict, now: datetime
) -> Plan:
    st = plan.status
    policy = spec.failure_policy
    counted = verdict.action == failures.RESTART
    if counted and st.restarts_counted >= policy.max_restarts:
        return _finish(
            spec, plan, pods, now, "Failed", "RestartLimitExceeded",
            f"failurePolicy.maxRestarts={policy.max_restarts} spent; last failure: "
            f"{verdict.message}",
        )
    free_used = st.restarts - st.restarts_counted
    if not counted and free_used >= policy.max_free_restarts:
        return _finish(
            spec, plan, pods, now, "Failed", "FreeRestartLimitExceeded",
            f"failurePolicy.maxFreeRestarts={policy.max_free_restarts} spent (preemptions, "
            f"evictions, checkpointed exits); last: {verdict.message}",
        )
    delay = 0
    if counted:
        st.restarts_counted += 1
        delay = min(MAX_BACKOFF_SECONDS, policy.backoff_seconds * 2 ** (st.restarts_counted - 1))
    st.restarts += 1
    st.attempt += 1
    _new_attempt(st)
    st.phase = "Restarting"
    st.pods_missing_since = None
    st.backoff_until = format_time(now + timedelta(seconds=delay)) if delay else None
    budget = (
        f"{st.restarts_counted}/{policy.max_restarts} of the budget"
        if counted
        else "not counted against the budget"
    )
    message = f"gang restart {st.restarts} (attempt {st.attempt}, {budget}): {verdict.message}"
    set_condition(st, RESTARTING, True, verdict.reason, message, now)
    set_condition(st, RUNNING, False, "Restarting", message, now)
    if condition(st, PODS_READY) is not None:
        set_condition(st, PODS_READY, False, "Restarting", message, now)
    plan.emit("Warning", "GangRestart", message)
    plan.restart_reason = verdict.reason
    plan.delete_pods = _deletable(pods)
    plan.requeue(max(delay, WAIT_POLL_SECONDS))
    return plan


def _missing_after_start(current: List[PodView], n: int, attempt: int, job: str) -> List[PodView]:
    """Ranks whose pod vanished while the gang was running (deleted by someone)."""
    present = {p.rank for p in current}
    return [
        PodView(
            name=pod_name(job, rank), rank=rank, attempt=attempt, phase="Unknown",
            ready=False, deleting=True, gone=True, exit_code=None, reason="",
            message="", disrupted=False, finished_at=None, ip=None,
        )
        for rank in range(n)
        if rank not in present
    ]


def _awaiting_deleted_pod(spec: TrainingJobSpec, live: List[PodView], now: datetime) -> bool:
    """Someone deleted a running node pod and it is still shutting down: wait for
    its exit code (75 means it checkpointed) before judging the gang, so that
    its peers' reactions are not taken for the cause. Bounded by the grace
    period, in case its node never reports back."""
    limit = spec.termination_grace_period_seconds + 30
    for pod in live:
        if pod.deleting and pod.exit_code is None:
            since = parse_time(pod.deletion_time)
            if since is None or (now - since).total_seconds() < limit:
                return True
    return False


def _stuck_terminating(pods: List[PodView], now: datetime, margin: float) -> List[PodView]:
    """Pods still there ``margin`` seconds after their grace period ended
    (deletionTimestamp is the end of the grace period). One already
    force-deleted (grace 0) waits on finalizers, which are not ours to remove."""
    stuck = []
    for pod in pods:
        end = parse_time(pod.deletion_time)
        if pod.gone or end is None or pod.deletion_grace == 0:
            continue
        if (now - end).total_seconds() >= margin:
            stuck.append(pod)
    return stuck


def _force_delete(plan: Plan, stuck: List[PodView], now: datetime) -> None:
    for pod in stuck:
        late = (now - (parse_time(pod.deletion_time) or now)).total_seconds()
        plan.force_delete_pods.append(pod.name)
        plan.emit(
            "Warning", "ForceDeleted",
            f"{pod.name} was still terminating {late:.0f}s after its grace period ended "
            f"(node {pod.node or 'unknown'} does not report back); force-deleted so that "
            "the gang can restart",
        )


def _describe_waiting(pods: List[PodView]) -> str:
    parts = []
    for pod in pods:
        why = pod.waiting_reason or pod.phase
        if pod.waiting_message:
            why += f": {pod.waiting_message}"
        parts.append(f"{pod.name} ({why})")
    return "; ".join(parts)


def waiting_problem(reason: str) -> Optional[str]:
    """The kind of trouble a pod's waiting reason names (None: it is merely starting)."""
    return _WAITING_PROBLEMS.get(reason)


def _pods_not_ready(st: TrainingJobStatus, waiting: List[PodView], plan: Plan, now: datetime) -> None:
    """Condition PodsReady=False with the pods' own reasons; a Warning event when a new kind of
    trouble appears (not on every reconcile: the condition remembers the last kind)."""
    troubled = [p for p in waiting if waiting_problem(p.waiting_reason)]
    first = (troubled or waiting)[0]
    reason = first.waiting_reason or "PodsStarting"
    message = _describe_waiting(troubled or waiting)[:4000]
    old = condition(st, PODS_READY)
    old_problem = waiting_problem(old.reason) if old is not None and old.status == "False" else None
    set_condition(st, PODS_READY, False, reason, message, now)
    problem = waiting_problem(reason)
    if problem is not None and problem != old_problem:
        plan.emit("Warning", reason, f"the gang cannot start: {message}")


def startup_allowance(spec: TrainingJobSpec) -> int:
    """Seconds a gang may take from its pods Running to its first optimizer step:
    the rendezvous timeout (volt-run itself gives up after it, exit 77) plus the
    stall timeout (loading the checkpoint and the first step)."""
    return spec.rendezvous.timeout_seconds + spec.failure_policy.stall_timeout_seconds


def _stalled(
    spec: TrainingJobSpec, st: TrainingJobStatus, live: List[PodView], n: int, now: datetime,
    plan: Plan,
) -> Optional[failures.Verdict]:
    """A gang that makes no progress for failurePolicy.stallTimeoutSeconds.

    Running and stepping: rank 0 reported no optimizer step for that long.
    ``status.training.lastStepTime`` is this attempt's (a gang restart clears
    it), so the clock starts at the new gang's first step, not at its start.
    Running, no step yet in this attempt, but an earlier attempt reported steps:
    starting up (rendezvous, loading the checkpoint) is bounded by
    ``startup_allowance`` from the gang becoming Running. No step ever
    reported: never judged (a script without the progress endpoint).
    Not yet Running: every pod exists but some are not Ready that long after
    the last was created (not scheduled, Unschedulable, ImagePullBackOff...:
    the timeout; pods on a node merely starting: the startup allowance), while
    the others hold their nodes at the rendezvous.
    """
    timeout = spec.failure_policy.stall_timeout_seconds
    if not timeout or len(live) < n or any(p.succeeded for p in live):
        return None
    if st.phase == "Running":
        return _stalled_running(spec, st, live, now, plan)
    waiting = [p for p in live if p.active and not p.ready]
    created = [t for t in (parse_time(p.created) for p in live) if t is not None]
    if not waiting or not created:
        return None
    # Unscheduled (no node yet) or in trouble: waiting for capacity or for someone to act.
    troubled = any(not p.node or waiting_problem(p.waiting_reason) for p in waiting)
    limit = timeout if troubled else startup_allowance(spec)
    if _overdue(plan, max(created), limit, now) is None:
        return None
    return failures.Verdict(
        failures.RESTART, waiting[0], "Stalled",
        f"the gang did not start within {limit}s (failurePolicy.stallTimeoutSeconds={timeout}"
        f"{'' if troubled else f' + rendezvous.timeoutSeconds={spec.rendezvous.timeout_seconds}'}"
        f"); not ready: {_describe_waiting(waiting)}",
    )


def _overdue(plan: Plan, since: datetime, limit: float, now: datetime) -> Optional[float]:
    """The seconds waited since ``since`` once they reach ``limit``; before that None, and
    the plan requeues for the moment they will."""
    waited = (now - since).total_seconds()
    if waited < limit:
        plan.requeue(limit - waited)
        return None
    return waited


def _stalled_running(
    spec: TrainingJobSpec, st: TrainingJobStatus, live: List[PodView], now: datetime, plan: Plan,
) -> Optional[failures.Verdict]:
    timeout = spec.failure_policy.stall_timeout_seconds
    running = condition(st, RUNNING)
    since = parse_time(running.last_transition_time) if running else None
    training = st.training
    rank0 = next((p for p in live if p.rank == 0), None)
    if since is None or training is None or rank0 is None:
        return None
    last_step = parse_time(training.last_step_time)
    if last_step is None and training.step is None:
        return None  # no step reported by any attempt: nothing to judge by
    if last_step is None:
        waited = _overdue(plan, since, startup_allowance(spec), now)
        if waited is None:
            return None
        return failures.Verdict(
            failures.RESTART, rank0, "Stalled",
            f"no optimizer step {waited:.0f}s after attempt {st.attempt} started (allowed: "
            f"rendezvous.timeoutSeconds={spec.rendezvous.timeout_seconds} + "
            f"failurePolicy.stallTimeoutSeconds={timeout}); rank 0 ({rank0.name}) reports the "
            "steps: the gang did not get past its start (rendezvous, loading the checkpoint, "
            "first step) on one of its ranks",
        )
    waited = _overdue(plan, max(since, last_step), timeout, now)
    if waited is None:
        return None
    return failures.Verdict(
        failures.RESTART, rank0, "Stalled",
        f"no optimizer step for {waited:.0f}s (failurePolicy.stallTimeoutSeconds={timeout}); "
        f"rank 0 ({rank0.name}) last reported step {training.step} at "
        f"{training.last_step_time}. Rank 0 is the rank that reports progress, not "
        "necessarily the one that hangs: every rank waits for the slowest at each step, "
        "so the hung rank may be on any pod of the gang",
    )


def target_num_nodes(spec: TrainingJobSpec, status: TrainingJobStatus) -> int:
    """The size the gang should have: spec.trainer.numNodes, unless an elastic shrink
    lowered it since numNodes was last set (it holds until numNodes changes or the job
    is resumed from suspension)."""
    wanted = spec.trainer.num_nodes
    if status.num_nodes is None or status.requested_num_nodes != wanted:
        return wanted
    return min(status.num_nodes, wanted)


def _elastic_shrink(
    spec: TrainingJobSpec, live: List[PodView], n: int, now: datetime, plan: Plan
) -> Optional[Tuple[int, str]]:
    """With spec.elastic: the smaller size to restart at when some node pods stayed
    unschedulable for shrinkAfterSeconds (no node fits them: short capacity, or their
    node was lost or cordoned), as (nodes, why). The size is the pods that were
    placed, never below minNodes; None while there is nothing to shrink."""
    elastic = spec.elastic
    if elastic is None or n <= elastic.min_nodes:
        return None
    grace = elastic.shrink_after_seconds
    late = []
    for pod in live:
        if not pod.active or pod.ready or pod.waiting_reason != "Unschedulable":
            continue
        created = parse_time(pod.created)
        if _overdue(plan, created if created is not None else now, grace, now) is not None:
            late.append(pod)
    if not late:
        return None
    nodes = max(elastic.min_nodes, n - len(late))
    return nodes, (
        f"{len(late)} of {n} node pod(s) could not be scheduled for {grace}s "
        f"(spec.elastic.shrinkAfterSeconds; minNodes {elastic.min_nodes}): "
        f"{_describe_waiting(late)}"
    )


def _resize(
    spec: TrainingJobSpec, plan: Plan, pods: List[PodView], old: int, new: int,
    reason: str, why: str, now: datetime,
) -> Plan:
    """Run the gang at ``new`` nodes: a gang that exists is deleted (SIGTERM: the
    engine checkpoints and exits 75) and the next attempt, created once it is gone,
    resumes from that checkpoint. Not a restart: no budget is spent."""
    st = plan.status
    st.num_nodes, st.requested_num_nodes = new, spec.trainer.num_nodes
    st.resizes += 1
    live = [p for p in pods if not p.gone]
    if any(p.attempt == st.attempt for p in live):
        st.attempt += 1
        _new_attempt(st)
        st.phase = "Restarting"
        st.pods_missing_since = None
        then = (
            f"the gang checkpoints on SIGTERM and stops; attempt {st.attempt} starts "
            f"{new} node(s) and resumes from the checkpoint"
        )
    else:
        then = f"attempt {st.attempt} starts {new} node(s)"
    message = f"resizing from {old} to {new} node(s): {why}; {then}"
    set_condition(st, RESIZED, True, reason, message, now)
    if st.phase == "Restarting":
        set_condition(st, RUNNING, False, "Resizing", message, now)
        if condition(st, PODS_READY) is not None:
            set_condition(st, PODS_READY, False, "Resizing", message, now)
    _count(st, [], new)
    plan.emit("Normal", "Resized", message)
    plan.delete_pods = _deletable(live)
    plan.requeue(WAIT_POLL_SECONDS)
    return plan


def _awaiting_deleted_event(
    st: TrainingJobStatus, missing: List[PodView], now: datetime
) -> bool:
    """A pod of the running gang is gone from the API without a last state seen
    (its DELETED event, which carries its exit code and disruption, may still be
    on its way): wait up to DELETED_EVENT_GRACE_SECONDS from when it was first
    seen missing (kept in the status, so a restarted operator waits no longer)."""
    if not missing:
        st.pods_missing_since = None
        return False
    since = parse_time(st.pods_missing_since)
    if since is None:
        st.pods_missing_since = format_time(now)
        return True
    return (now - since).total_seconds() < DELETED_EVENT_GRACE_SECONDS


def _await_root_cause(verdict: failures.Verdict, live: List[PodView], now: datetime) -> bool:
    """Only peers reported PEER_LOST while another rank still looks alive."""
    if verdict.reason != "PeerLost" or not any(p.active for p in live):
        return False
    finished = parse_time(verdict.pod.finished_at)
    return finished is not None and (now - finished).total_seconds() < PEER_LOST_GRACE_SECONDS


def _queued(plan: Plan, pods: List[PodView], gate: Admission, now: datetime) -> Plan:
    """Kueue has not admitted the job, or wants its admission back: no pod runs.

    A gang that runs is deleted (SIGTERM: the engine checkpoints and exits 75) and
    the next attempt, created when Kueue admits the job again, resumes from that
    checkpoint. Like a suspension, it spends no restart budget and the deadline
    counts again from the new start."""
    st = plan.status
    live = [p for p in pods if not p.gone]
    if any(p.attempt == st.attempt for p in live):
        st.attempt += 1
        _new_attempt(st)
        if gate.preempted:
            set_condition(st, PREEMPTED, True, gate.reason, gate.message, now)
        stop = (f"{gate.message}; the gang checkpoints on SIGTERM and stops, attempt "
                f"{st.attempt} resumes when Kueue admits the job again")
        if gate.reason == CHANGED_WHILE_ADMITTED:  # the user's doing: no warning
            plan.emit("Normal", CHANGED_WHILE_ADMITTED, stop)
        else:
            plan.emit("Warning", "Preempted" if gate.preempted else "Evicted", stop)
    if st.phase != "Queued":
        plan.emit("Normal", "Queued", gate.message)
    elif gate.reason == WORKLOAD_RECREATED:  # once per change: the next read is Kueue's own
        plan.emit("Normal", WORKLOAD_RECREATED, gate.message)
    st.phase = "Queued"
    st.start_time = None
    st.backoff_until = None
    st.pods_missing_since = None
    set_condition(st, ADMITTED, False, gate.reason, gate.message, now)
    set_condition(st, RUNNING, False, "Queued", gate.message, now)
    _count(st, [], st.num_nodes or 0)
    plan.delete_pods = _deletable(live)
    if plan.delete_pods:
        plan.requeue(WAIT_POLL_SECONDS)
    return plan


def _admitted(st: TrainingJobStatus, plan: Plan, gate: Admission, now: datetime) -> None:
    """Kueue admitted the job: a queued job's gang may be created."""
    admitted = condition(st, ADMITTED)
    if admitted is not None and admitted.status == "True":
        return
    set_condition(st, ADMITTED, True, gate.reason, gate.message, now)
    preempted = condition(st, PREEMPTED)
    if preempted is not None and preempted.status == "True":
        set_condition(st, PREEMPTED, False, "Readmitted", gate.message, now)
    plan.emit("Normal", "Admitted", gate.message)
    if st.phase == "Queued":
        st.phase = "Pending"
        set_condition(st, RUNNING, False, "PodsPending", gate.message, now)


def _grow_back(
    spec: TrainingJobSpec, job: str, plan: Plan, pods: List[PodView], probes: List[PodView],
    n: int, kueue_managed: bool, now: datetime,
) -> Plan:
    """A running elastic gang below spec.trainer.numNodes (an elastic shrink) probes for
    the room of its missing nodes and grows back into it.

    Probes are pods built like the node pods they stand for (builders.build_probe):
    the scheduler places them only where those would fit, and once bound they hold
    the room. When every probe is bound the job waits for its next checkpoint (a
    status.checkpoint.step above the one recorded then in status.growBack), then
    resizes to numNodes as a numNodes patch does; decide deletes the probes in the
    same step, so the new gang can take their room. status.growBack remembers the
    probing (events once per change, not per reconcile). No probing for a job that
    Kueue sizes, that never reported a checkpoint (it would have nothing to grow
    at), or before its shrunk gang has run shrinkAfterSeconds: a gang that grows
    into capacity that is gone again shrinks back after shrinkAfterSeconds, so a
    shrink/grow cycle takes at least twice that (no flapping faster)."""
    st = plan.status
    wanted = spec.trainer.num_nodes
    elastic = spec.elastic
    checkpoint = st.checkpoint.step if st.checkpoint is not None else None
    if elastic is None or kueue_managed or st.phase != "Running" or n >= wanted or checkpoint is None:
        return plan
    running = condition(st, RUNNING)
    since = parse_time(running.last_transition_time) if running is not None else None
    if since is None or _overdue(plan, since, elastic.shrink_after_seconds, now) is None:
        return plan
    plan.keeps_probes = True
    ranks = range(n, wanted)
    usable = {p.probe: p for p in probes if p.probe in ranks and p.active and not p.deleting}
    plan.delete_probes = [p.name for p in probes
                          if not p.deleting and p.name not in {u.name for u in usable.values()}]
    present = {p.probe for p in probes if not p.gone}
    plan.create_probes = [r for r in ranks if r not in present]
    wait = st.grow_back
    if wait is None:
        wait = st.grow_back = GrowBackStatus(since=format_time(now))
        plan.emit("Normal", "CapacityProbe",
                  f"running at {n} of {wanted} node(s); probing for the room of the other "
                  f"{len(ranks)} ({', '.join(probe_name(job, r) for r in ranks)}): "
                  "the job grows back at its next checkpoint once every probe is scheduled")
    bound = [usable[r] for r in ranks if r in usable and usable[r].node]
    if len(bound) < len(ranks):
        wait.probes_bound_time = wait.checkpoint_step = None
        return plan
    if wait.probes_bound_time is None:
        wait.probes_bound_time, wait.checkpoint_step = format_time(now), checkpoint
        plan.emit("Normal", "CapacityReturned",
                  f"room for {wanted} node(s) again (probes on {', '.join(p.node or '' for p in bound)}); "
                  f"the job grows back at its next checkpoint after step {checkpoint}")
        return plan
    if wait.checkpoint_step is not None and checkpoint <= wait.checkpoint_step:
        return plan
    plan.keeps_probes = False  # decide deletes the probes and clears status.growBack
    why = (f"capacity returned (capacity probes bound since {wait.probes_bound_time}) "
           f"and checkpoint step {checkpoint} was recorded since")
    return _resize(spec, plan, pods, n, wanted, "CapacityReturned", why, now)


def decide(
    spec: TrainingJobSpec,
    meta: JobMeta,
    status: TrainingJobStatus,
    pods: List[PodView],
    service_exists: bool,
    now: datetime,
    stuck_pod_margin: float = STUCK_POD_MARGIN_SECONDS,
    admission: Optional[Admission] = None,
    probes: Sequence[PodView] = (),
    kueue_managed: bool = False,
) -> Plan:
    """Next status and actions for one TrainingJob (pure). ``admission``: Kueue's
    word on the job's Workload, for a job queued through Kueue (kueue.py).
    ``probes``: the job's capacity probes (``PodView.probe`` set), ``pods`` its node
    pods; ``kueue_managed``: the job has a Kueue queue-name label (Kueue sizes it)."""
    plan = _decide(spec, meta, status, pods, service_exists, now, stuck_pod_margin,
                   admission, list(probes), kueue_managed)
    if not plan.keeps_probes:
        # Suspended, finished, restarting, resizing, not elastic...: no room is held.
        plan.status.grow_back = None
        plan.create_probes = []
        plan.delete_probes = [p.name for p in probes if not p.deleting]
    return plan


def _decide(
    spec: TrainingJobSpec,
    meta: JobMeta,
    status: TrainingJobStatus,
    pods: List[PodView],
    service_exists: bool,
    now: datetime,
    stuck_pod_margin: float,
    admission: Optional[Admission],
    probes: List[PodView],
    kueue_managed: bool,
) -> Plan:
    st = status.model_copy(deep=True)
    plan = Plan(status=st)
    st.observed_generation = meta.generation
    if st.num_nodes is None:  # a new job (or one from before status.numNodes)
        st.num_nodes = st.requested_num_nodes = spec.trainer.num_nodes
    n = st.num_nodes  # the current gang's size
    current = [p for p in pods if p.attempt == st.attempt]
    stale = [p for p in pods if p.attempt != st.attempt]
    _count(st, current, n)

    if st.phase in TERMINAL_PHASES:
        # Sticky: never recreate anything; only clean up and honour the TTL.
        plan.delete_pods = _cleanup(spec, [p for p in pods if not p.gone])
        _ttl(spec, st, plan, now)
        return plan
    if st.phase is None:
        st.phase = "Pending"
        set_condition(st, RUNNING, False, "PodsPending", "waiting for the node pods", now)
    stuck = _stuck_terminating(pods + probes, now, stuck_pod_margin)
    if stuck:
        _force_delete(plan, stuck, now)

    if spec.suspend:
        if st.phase != "Suspended":
            plan.emit("Normal", "Suspended", "job suspended; pods deleted, the job is kept")
        st.phase = "Suspended"
        st.start_time = None  # the deadline restarts on resume, as for a Job
        st.backoff_until = None
        set_condition(st, SUSPENDED, True, "Suspended", "spec.suspend is true", now)
        set_condition(st, RUNNING, False, "Suspended", "spec.suspend is true", now)
        plan.delete_pods = _deletable([p for p in pods if not p.gone])
        if plan.delete_pods:
            plan.requeue(WAIT_POLL_SECONDS)
        return plan
    # A resumed job asks for spec.trainer.numNodes again (an elastic shrink is undone).
    # Before Kueue's gate: a queued job's suspension gave its quota back, so it resumes
    # by queueing again.
    resumed = st.phase == "Suspended"
    if resumed:
        st.attempt += 1
        _new_attempt(st)
        st.phase = "Pending"
        set_condition(st, SUSPENDED, False, "Resumed", "spec.suspend is false", now)
        set_condition(st, RUNNING, False, "PodsPending", "resuming", now)
        plan.emit("Normal", "Resumed", f"job resumed as attempt {st.attempt}")
        stale, current = [p for p in pods if not p.gone], []
        _count(st, current, n)
    if admission is not None:
        if not admission.admitted:
            return _queued(plan, pods, admission, now)
        _admitted(st, plan, admission, now)

    start = parse_time(st.start_time)
    if spec.active_deadline_seconds and start is not None:
        left = spec.active_deadline_seconds - (now - start).total_seconds()
        if left <= 0:
            return _finish(
                spec, plan, pods, now, "Failed", "DeadlineExceeded",
                f"activeDeadlineSeconds={spec.active_deadline_seconds} exceeded",
                kill_all=True,
            )
        plan.requeue(left)

    if not service_exists:
        plan.create_service = True

    live = [p for p in current if not p.gone]
    live_ranks = {p.rank for p in live}
    # A pod seen only in its DELETED event: a failure once the gang ran (DDP
    # cannot lose a rank), otherwise it is simply created again below.
    gone = [p for p in current if p.gone and p.rank not in live_ranks]
    failed = [p for p in live if p.failed]
    failed += [p for p in gone if p.failed or (st.phase == "Running" and not p.succeeded)]
    if st.phase == "Running":
        missing = _missing_after_start(live + gone, n, st.attempt, meta.name)
        if _awaiting_deleted_event(st, missing, now):
            plan.requeue(1.0)
            return plan
        failed += missing
    if st.phase == "Running":
        if _awaiting_deleted_pod(spec, live, now):
            plan.requeue(1.0)
            return plan
        # Deleted long ago and never reported an exit: count it as deleted.
        failed += [p for p in live if p.deleting and p.exit_code is None and not p.failed]
    verdict = failures.worst(failed, spec.failure_policy)
    if verdict is not None and _await_root_cause(verdict, live, now):
        plan.requeue(1.0)
        return plan
    if verdict is None and not stale:
        verdict = _stalled(spec, st, live, n, now, plan)
        if verdict is not None:
            set_condition(st, STALLED, True, "Stalled", verdict.message, now)
    if verdict is not None:
        p = verdict.pod
        st.last_failure = FailureInfo(
            pod=p.name, rank=p.rank, exit_code=p.exit_code, reason=verdict.reason,
            message=verdict.message, attempt=st.attempt, time=format_time(now),
        )
        if verdict.action == failures.FAIL:
            return _finish(spec, plan, pods, now, "Failed", verdict.reason, verdict.message)
        return _restart(spec, plan, pods, verdict, now)

    done = {p.rank for p in current if p.succeeded}
    if done == set(range(n)):
        return _finish(
            spec, plan, pods, now, "Succeeded", "Completed",
            f"all {n} node(s) finished training (attempt {st.attempt})",
        )
    target = spec.trainer.num_nodes if resumed else target_num_nodes(spec, st)
    if target != n:
        reason, why = (
            ("Resumed", f"resumed at spec.trainer.numNodes={target}") if resumed
            else ("NumNodesChanged", f"spec.trainer.numNodes changed to {target}")
        )
        return _resize(spec, plan, pods, n, target, reason, why, now)
    st.requested_num_nodes = spec.trainer.num_nodes

    if stale:
        # A gang restart or a resume: the old gang must be gone first (same names).
        plan.delete_pods = _deletable([p for p in stale if not p.gone])
        plan.requeue(WAIT_POLL_SECONDS)
        return plan
    backoff = parse_time(st.backoff_until)
    if backoff is not None and now < backoff:
        plan.requeue((backoff - now).total_seconds())
        return plan
    st.backoff_until = None

    missing = [r for r in range(n) if r not in live_ranks]
    if len(missing) == n and any(not p.gone for p in probes):
        # A new gang takes the room of the capacity probes (deleted below): once they are gone.
        plan.requeue(WAIT_POLL_SECONDS)
        return plan
    if missing:
        seen_checkpoint = bool(st.checkpoint and st.checkpoint.path)
        plan.create_ranks = missing
        plan.resume = resume_value(spec, st.attempt, seen_checkpoint)
        if st.start_time is None:
            st.start_time = format_time(now)
        if len(missing) == n:
            plan.emit(
                "Normal", "Created",
                f"creating {n} node pod(s) for attempt {st.attempt}",
            )
            # Only a checkpoint on the job's volume (or a given path) survives the pods.
            durable = spec.checkpoint is not None or plan.resume not in ("auto", "never")
            if st.attempt > 0 and durable:
                # With "auto" the engine picks the newest verified checkpoint when it starts,
                # which may be one written after the last progress poll (the SIGTERM save).
                if plan.resume not in ("auto", "never"):
                    where = plan.resume
                elif seen_checkpoint and st.checkpoint:
                    where = (f"the latest checkpoint on the volume (the last one reported: "
                             f"{st.checkpoint.path}, step {st.checkpoint.step})")
                else:
                    where = "the latest checkpoint on the volume, if any"
                plan.emit(
                    "Normal", "CheckpointResumed", f"attempt {st.attempt} resumes from {where}"
                )
        plan.requeue(WAIT_POLL_SECONDS)
        return plan

    created = condition(st, CREATED)
    if created is None or created.status != "True":
        # Only once every pod exists, so a failing create is not flapped to True.
        set_condition(st, CREATED, True, "PodsCreated", f"all {n} node pods exist", now)
    st.create_refusals = 0
    waiting = [p for p in live if p.active and not p.ready]
    if waiting and st.phase != "Running":
        # Say why the gang is not up yet: the scheduler's or the kubelet's reason.
        set_condition(st, RUNNING, False, "PodsPending",
                      f"waiting for {_describe_waiting(waiting)}"[:4000], now)
        _pods_not_ready(st, waiting, plan, now)
        shrink = _elastic_shrink(spec, live, n, now, plan)
        if shrink is not None:
            return _resize(spec, plan, pods, n, shrink[0], "Unschedulable", shrink[1], now)

    if st.nodes.ready == n and st.phase != "Running":
        plan.became_running = True
        st.phase = "Running"
        message = f"all {n} node(s) running (attempt {st.attempt})"
        set_condition(st, RUNNING, True, "AllNodesReady", message, now)
        set_condition(st, PODS_READY, True, "AllNodesReady", message, now)
        if condition(st, RESTARTING) is not None:
            set_condition(st, RESTARTING, False, "AllNodesReady", message, now)
        stalled = condition(st, STALLED)
        if stalled is not None and stalled.status == "True":
            set_condition(st, STALLED, False, "AllNodesReady", message, now)
        plan.emit("Normal", "Running", message)
    return _grow_back(spec, meta.name, plan, pods, probes, n, kueue_managed, now)
