"""Pod status as one pure function of the pod spec and what the runner observed.

The rules follow the kubelet's: a container is waiting, running or terminated;
exit code 0 is `Completed`, anything else `Error`; a signal-killed process
reports 128+signal (137 for SIGKILL), and a container restarted under the
pod's restartPolicy keeps its previous termination in `lastState`. The phase
is Pending until every init container succeeded and every container started,
Succeeded when all containers exited 0 and none will restart, Failed when one
failed and none will restart, Running otherwise. There are no probes: a
running container is ready.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

WAITING, RUNNING, TERMINATED = "waiting", "running", "terminated"


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_code_of(returncode: int) -> int:
    """Popen's returncode (negative for a signal) as a container exit code."""
    return 128 - returncode if returncode < 0 else returncode


def termination_reason(exit_code: int) -> str:
    return "Completed" if exit_code == 0 else "Error"


@dataclass
class Termination:
    exit_code: int
    started_at: datetime | None
    finished_at: datetime
    reason: str | None = None
    message: str | None = None

    def to_api(self, container_id: str | None) -> dict[str, Any]:
        state: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason or termination_reason(self.exit_code),
            "startedAt": rfc3339(self.started_at),
            "finishedAt": rfc3339(self.finished_at),
        }
        if self.exit_code > 128:
            state["signal"] = self.exit_code - 128
        if self.message:
            state["message"] = self.message
        if container_id:
            state["containerID"] = container_id
        return state


@dataclass
class ContainerRecord:
    """What the runner knows about one container of a pod."""

    name: str
    image: str
    state: str = WAITING
    waiting_reason: str = "ContainerCreating"
    waiting_message: str | None = None
    started_at: datetime | None = None
    terminated: Termination | None = None
    last_terminated: Termination | None = None
    restart_count: int = 0
    pid: int | None = None
    container_id: str | None = None

    def to_api(self) -> dict[str, Any]:
        if self.state == RUNNING:
            state: dict[str, Any] = {"running": {"startedAt": rfc3339(self.started_at)}}
        elif self.state == TERMINATED and self.terminated is not None:
            state = {"terminated": self.terminated.to_api(self.container_id)}
        else:
            waiting: dict[str, Any] = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.state == RUNNING,
            "started": self.state == RUNNING,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": (
                {"terminated": self.last_terminated.to_api(None)} if self.last_terminated else {}
            ),
        }
        if self.container_id:
            status["containerID"] = self.container_id
        return status


@dataclass
class PodRecord:
    """The runner's view of one pod: its sandbox and containers."""

    host_ip: str
    pod_ip: str | None = None
    sandbox_ready: bool = False
    start_time: datetime | None = None
    init_containers: list[ContainerRecord] = field(default_factory=list)
    containers: list[ContainerRecord] = field(default_factory=list)
    # A pod the agent cannot run at all (bad volume, unresolvable env): the
    # kubelet keeps such a pod Pending with the container waiting and a reason.
    config_error: str | None = None


def will_restart(restart_policy: str, exit_code: int) -> bool:
    return restart_policy == "Always" or (restart_policy == "OnFailure" and exit_code != 0)


def compute_phase(restart_policy: str, record: PodRecord) -> str:
    for init in record.init_containers:
        term = init.terminated if init.state == TERMINATED else None
        if term is not None and term.exit_code != 0 and restart_policy == "Never":
            return "Failed"
    if any(not (c.state == TERMINATED and c.terminated and c.terminated.exit_code == 0)
           for c in record.init_containers):
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for container in record.containers:
        if container.state == RUNNING:
            running += 1
        elif container.state == TERMINATED and container.terminated is not None:
            stopped += 1
            succeeded += container.terminated.exit_code == 0
        elif container.last_terminated is not None:
            # Waiting to be restarted: the kubelet counts it as stopped.
            stopped += 1
            succeeded += container.last_terminated.exit_code == 0
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if restart_policy == "Never":
        return "Failed"
    return "Running"


def _condition(kind: str, ok: bool, previous: dict[str, dict[str, Any]], now: datetime,
               reason: str | None = None) -> dict[str, Any]:
    status = "True" if ok else "False"
    before = previous.get(kind)
    since = before.get("lastTransitionTime") if before and before.get("status") == status else None
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": since or rfc3339(now),
    }
    if reason and not ok:
        condition["reason"] = reason
    return condition


def compute_pod_status(pod: dict[str, Any], record: PodRecord, now: datetime) -> dict[str, Any]:
    """The `status` a kubelet would report for `pod` (an API dict) given `record`."""
    spec = pod.get("spec") or {}
    previous_status = pod.get("status") or {}
    previous = {c["type"]: c for c in previous_status.get("conditions") or []}
    restart_policy = spec.get("restartPolicy") or "Always"
    phase = compute_phase(restart_policy, record)
    # A terminal phase is sticky, as in the kubelet.
    if previous_status.get("phase") in ("Succeeded", "Failed"):
        phase = previous_status["phase"]

    initialized = all(c.state == TERMINATED and c.terminated and c.terminated.exit_code == 0
                      for c in record.init_containers)
    containers_ready = bool(record.containers) and all(c.state == RUNNING for c in record.containers)
    if phase in ("Succeeded", "Failed"):
        not_ready_reason = "PodCompleted"
    else:
        not_ready_reason = "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", record.sandbox_ready, previous, now),
        _condition("Initialized", initialized, previous, now, "ContainersNotInitialized"),
        _condition("Ready", containers_ready, previous, now, not_ready_reason),
        _condition("ContainersReady", containers_ready, previous, now, not_ready_reason),
    ]
    if "PodScheduled" in previous:
        conditions.append(previous["PodScheduled"])

    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": record.host_ip,
        "hostIPs": [{"ip": record.host_ip}],
        "startTime": rfc3339(record.start_time),
        "containerStatuses": [c.to_api() for c in record.containers],
    }
    if record.init_containers:
        status["initContainerStatuses"] = [c.to_api() for c in record.init_containers]
    if record.pod_ip:
        status["podIP"] = record.pod_ip
        status["podIPs"] = [{"ip": record.pod_ip}]
    if record.config_error:
        status["message"] = record.config_error
    generation = (pod.get("metadata") or {}).get("generation")
    if generation is not None:  # which spec this status describes (1.33+ kubelets report it)
        status["observedGeneration"] = generation
    return status
