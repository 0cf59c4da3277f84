"""What the operator reads from a node pod, as a small immutable value.

The status machine works on ``PodView`` objects instead of raw dicts so that
the Kubernetes pod layout (conditions, containerStatuses, reasons) is parsed
in one place.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from .builders import CONTAINER, LABEL_ATTEMPT, LABEL_PROBE, LABEL_RANK

# Pod-level reasons and DisruptionTarget reasons that mean "the cluster took
# the pod away", not "the training failed".
DISRUPTION_REASONS = frozenset(
    {
        "Evicted",
        "Preempted",
        "PreemptionByScheduler",
        "EvictionByEvictionAPI",
        "DeletionByTaintManager",
        "DeletionByPodGC",
        "TerminationByKubelet",
        "NodeShutdown",
        "Shutdown",
    }
)


@dataclass(frozen=True)
class PodView:
    name: str
    rank: int
    attempt: int
    phase: str
    ready: bool
    deleting: bool
    gone: bool
    exit_code: Optional[int]
    reason: str
    message: str
    disrupted: bool
    finished_at: Optional[str]
    ip: Optional[str]
    deletion_time: Optional[str] = None
    created: Optional[str] = None
    node: Optional[str] = None
    # Why a pod is not running yet: the scheduler's (Unschedulable) or the
    # kubelet's (ImagePullBackOff, ContainerCreating...) reason and message.
    waiting_reason: str = ""
    waiting_message: str = ""
    # metadata.deletionGracePeriodSeconds: 0 once someone force-deleted the pod.
    deletion_grace: Optional[int] = None
    # The node rank a capacity probe stands in for (builders.build_probe); None for node pods.
    probe: Optional[int] = None
    # metadata.uid: a deletion names it, so that a stale view never deletes the newer pod
    # of the same name (the names are reused by every attempt).
    uid: Optional[str] = None

    @property
    def removed(self) -> bool:
        """Taken away from outside (deleted, evicted, preempted), not crashed by itself."""
        return self.deleting or self.gone or self.disrupted

    @property
    def succeeded(self) -> bool:
        return self.phase == "Succeeded" or (self.exit_code == 0 and not self.disrupted)

    @property
    def failed(self) -> bool:
        if self.succeeded:
            return False
        return (
            self.phase == "Failed"
            or self.disrupted
            or (self.exit_code is not None and self.exit_code != 0)
        )

    @property
    def active(self) -> bool:
        return not (self.succeeded or self.failed or self.gone)

    @property
    def stopping(self) -> bool:
        """Its container has exited but the kubelet has not yet made the pod's phase terminal:
        it is still tearing the pod down, and the scheduler still counts its resources."""
        return self.exit_code is not None and self.phase not in ("Succeeded", "Failed") and not self.gone


def _int_label(labels: Dict[str, str], key: str) -> int:
    try:
        return int(labels.get(key, "-1"))
    except ValueError:
        return -1


def _trainer_status(status: Dict[str, Any]) -> Dict[str, Any]:
    for container in status.get("containerStatuses") or []:
        if container.get("name") == CONTAINER:
            return container
    return {}


def pod_view(pod: Dict[str, Any], gone: bool = False) -> PodView:
    """Parse one pod; ``gone`` marks the last state seen in a DELETED event."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    container = _trainer_status(status)
    terminated = (container.get("state") or {}).get("terminated") or {}
    exit_code = terminated.get("exitCode")
    reason = terminated.get("reason") or status.get("reason") or ""
    message = terminated.get("message") or status.get("message") or ""
    disrupted = status.get("reason") in DISRUPTION_REASONS
    ready = False
    for cond in status.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            disrupted = True
            reason = cond.get("reason") or reason or "DisruptionTarget"
            message = cond.get("message") or message
        if cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
    if status.get("reason") in DISRUPTION_REASONS:
        reason = status["reason"]
    waiting = (container.get("state") or {}).get("waiting") or {}
    waiting_reason, waiting_message = waiting.get("reason") or "", waiting.get("message") or ""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            waiting_reason = cond.get("reason") or "Unscheduled"
            waiting_message = cond.get("message") or ""
    phase = status.get("phase") or "Pending"
    return PodView(
        name=meta.get("name", ""),
        uid=meta.get("uid"),
        rank=_int_label(labels, LABEL_RANK),
        attempt=_int_label(labels, LABEL_ATTEMPT),
        phase=phase,
        ready=ready and phase == "Running",
        deleting=bool(meta.get("deletionTimestamp")) or gone,
        gone=gone,
        exit_code=exit_code,
        reason=reason,
        message=message[:4096],
        disrupted=disrupted,
        finished_at=terminated.get("finishedAt"),
        ip=status.get("podIP"),
        deletion_time=meta.get("deletionTimestamp"),
        created=meta.get("creationTimestamp"),
        node=(pod.get("spec") or {}).get("nodeName"),
        waiting_reason=waiting_reason,
        waiting_message=waiting_message[:1024],
        deletion_grace=meta.get("deletionGracePeriodSeconds"),
        probe=_int_label(labels, LABEL_PROBE) if LABEL_PROBE in labels else None,
    )
