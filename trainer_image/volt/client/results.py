"""Typed views of TrainingJob objects, pods and events: pure functions of the API's dicts."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, List, Mapping, Optional

TERMINAL_PHASES = ("Succeeded", "Failed")
# Conditions that, False, say the operator cannot do what the job needs: a request the API
# server refused (a permission it lacks, a quota), not a state the job passes through.
BLOCKING_CONDITIONS = ("Reconciled", "Created")


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str = ""
    message: str = ""
    last_transition_time: Optional[str] = None


@dataclass(frozen=True)
class Failure:
    """The failure that caused the last gang restart or the job's failure."""

    pod: str
    node_rank: int
    exit_code: Optional[int]
    reason: str
    message: str
    attempt: int


@dataclass(frozen=True)
class JobStatus:
    """A TrainingJob as ``volt get`` shows it."""

    name: str
    namespace: str
    phase: str  # "" until the operator has seen the job
    ready_nodes: str = "0/0"
    attempt: int = 0
    restarts: int = 0
    suspended: bool = False
    epoch: Optional[int] = None
    step: Optional[int] = None
    loss: Optional[float] = None
    progress: Optional[float] = None  # 0..1 of the planned steps, when the engine knows them
    eta_seconds: Optional[float] = None
    throughput: Optional[str] = None  # e.g. "12.5 steps/s", as the operator reports it
    last_failure: Optional[Failure] = None
    conditions: List[Condition] = field(default_factory=list)
    created: Optional[str] = None
    start_time: Optional[str] = None
    completion_time: Optional[str] = None

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded"

    @property
    def blocked_by(self) -> Optional[Condition]:
        """Why the operator cannot move an unfinished job on, if it says so."""
        if self.finished:
            return None
        return next((c for kind in BLOCKING_CONDITIONS for c in self.conditions
                     if c.type == kind and c.status == "False"), None)


@dataclass(frozen=True)
class PodInfo:
    name: str
    node_rank: Optional[int]
    attempt: Optional[int]
    phase: str
    node: str
    restarts: int
    state: str  # "Running", "Waiting: ImagePullBackOff", "Terminated: Error (exit code 1)"


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str
    count: int
    last_seen: Optional[str]
    source: str  # the object it is about, e.g. "TrainingJob/tiny" or "Pod/tiny-node-0"


@dataclass(frozen=True)
class JobDescription:
    """``volt describe``: the status, what happened to the job, and its pods."""

    status: JobStatus
    spec: Dict[str, Any]
    events: List[Event]
    pods: List[PodInfo]


def _int(value: Any) -> Optional[int]:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _float(value: Any) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _eta_seconds(training: Mapping[str, Any]) -> Optional[float]:
    """The ETA in seconds from whichever form the status carries it in."""
    if training.get("remainingSeconds") is not None:
        return _float(training["remainingSeconds"])
    eta = training.get("eta")
    if isinstance(eta, (int, float)):
        return float(eta)
    if isinstance(eta, str):  # "1h05m" / "3m12s" / "42s"
        parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", eta.strip())
        if parts and any(parts.groups()):
            hours, minutes, seconds = (float(p) if p else 0.0 for p in parts.groups())
            return hours * 3600 + minutes * 60 + seconds
    return None


def _throughput(training: Mapping[str, Any]) -> Optional[str]:
    for key, unit in (("samplesPerSecond", "samples/s"), ("stepsPerSecond", "steps/s")):
        value = _float(training.get(key))
        if value is not None:
            return f"{value:.3g} {unit}"
    text = training.get("throughput")
    return str(text) if text not in (None, "") else None


def job_status(obj: Mapping[str, Any]) -> JobStatus:
    """A TrainingJob object (as the API returns it) as a JobStatus."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    training = status.get("training") or {}
    failure = status.get("lastFailure")
    return JobStatus(
        name=meta.get("name", ""),
        namespace=meta.get("namespace", ""),
        phase=status.get("phase") or "",
        ready_nodes=status.get("readyNodes") or "0/0",
        attempt=_int(status.get("attempt")) or 0,
        restarts=_int(status.get("restarts")) or 0,
        suspended=bool(spec.get("suspend")),
        epoch=_int(training.get("epoch")),
        step=_int(training.get("step")),
        loss=_float(training.get("loss")),
        progress=_float(training.get("progress")),
        eta_seconds=_eta_seconds(training),
        throughput=_throughput(training),
        last_failure=None if not failure else Failure(
            pod=failure.get("pod", ""), node_rank=_int(failure.get("rank")) or 0,
            exit_code=_int(failure.get("exitCode")), reason=failure.get("reason", ""),
            message=failure.get("message", ""), attempt=_int(failure.get("attempt")) or 0),
        conditions=[Condition(type=c.get("type", ""), status=c.get("status", ""),
                              reason=c.get("reason", ""), message=c.get("message", ""),
                              last_transition_time=c.get("lastTransitionTime"))
                    for c in status.get("conditions") or []],
        created=meta.get("creationTimestamp"),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime"),
    )


def _container_state(statuses: List[Mapping[str, Any]]) -> str:
    for cs in statuses:
        state = cs.get("state") or {}
        if "waiting" in state:
            waiting = state["waiting"] or {}
            text = f"Waiting: {waiting.get('reason', '')}".rstrip(": ")
            return f"{text} ({waiting['message']})" if waiting.get("message") else text
        if "terminated" in state:
            done = state["terminated"] or {}
            return f"Terminated: {done.get('reason', '')} (exit code {done.get('exitCode')})"
    return "Running" if statuses else ""


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    state = _container_state(statuses)
    if not state:  # not scheduled or not started: the scheduler's reason
        pending = [c for c in status.get("conditions") or [] if c.get("status") == "False"]
        state = "; ".join(f"{c.get('reason', c.get('type'))}: {c.get('message', '')}".rstrip(": ")
                          for c in pending)
    return PodInfo(
        name=meta.get("name", ""),
        node_rank=_int(labels.get("volt.dev/node-rank")),
        attempt=_int(labels.get("volt.dev/attempt")),
        phase=status.get("phase") or "",
        node=(pod.get("spec") or {}).get("nodeName") or "",
        restarts=sum(_int(cs.get("restartCount")) or 0 for cs in statuses),
        state=state,
    )


def event(ev: Mapping[str, Any]) -> Event:
    involved = ev.get("involvedObject") or {}
    return Event(
        type=ev.get("type") or "",
        reason=ev.get("reason") or "",
        message=(ev.get("message") or "").strip(),
        count=_int(ev.get("count")) or 1,
        last_seen=ev.get("lastTimestamp") or ev.get("eventTime")
        or (ev.get("metadata") or {}).get("creationTimestamp"),
        source=f"{involved.get('kind', '')}/{involved.get('name', '')}",
    )


def format_duration(seconds: Optional[float]) -> str:
    """42s, 3m12s, 2h05m: as kubectl prints ages."""
    if seconds is None:
        return ""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def age(timestamp: Optional[str], now: Optional[datetime] = None) -> str:
    if not timestamp:
        return ""
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    return format_duration(((now or datetime.now(timezone.utc)) - then).total_seconds())
