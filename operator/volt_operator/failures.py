"""The failure policy: what one failed node pod means for the whole gang.

Exit codes are the engine's contract (``volt/exit_codes.py``; copied here
because the operator image does not ship the engine, and a test keeps the
two in step):

  75 CHECKPOINTED        saved on SIGTERM, restart me: restart, budget kept
  76 PEER_LOST           another rank died: restart, spends budget
  77 RENDEZVOUS_TIMEOUT  a peer never arrived: restart, spends budget
  78 CONFIG_ERROR        bad arguments/env: fail now
  79 CHECKPOINT_VOLUME_FULL   ENOSPC while saving: restart, spends budget
  80 CHECKPOINT_VOLUME_ERROR  EIO/EROFS while saving: restart, spends budget
  1-127 otherwise        user error: fail now
  >= 128 (signal)        crash, OOM kill: restart, spends budget

Evictions and preemptions (DisruptionTarget, reason Evicted/Preempted) restart
without spending the budget, and so does a pod someone deleted: no exit code,
or killed by the deletion's SIGTERM (143) or SIGKILL at the end of its grace
period (137). ``spec.failurePolicy.rules`` come first.

A node can report a consequence (76, or a stop signal) although its own rank
failed first-hand: the rank that hit ENOSPC leaves ``CheckpointVolumeFull: ...``
as the termination message, but a peer on the same node noticed the closed
connection and exited 76 first. The rank's own reason wins (``own_failure_code``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from .api import FailurePolicy, FailureRule
from .observed import PodView

CHECKPOINTED = 75
PEER_LOST = 76
RENDEZVOUS_TIMEOUT = 77
CONFIG_ERROR = 78
CHECKPOINT_VOLUME_FULL = 79
CHECKPOINT_VOLUME_ERROR = 80
RETRYABLE = frozenset({CHECKPOINTED, PEER_LOST, RENDEZVOUS_TIMEOUT, CHECKPOINT_VOLUME_FULL, CHECKPOINT_VOLUME_ERROR})
FREE_RESTART_CODES = frozenset({CHECKPOINTED})
# How a deletion ends a container: SIGTERM, then SIGKILL once the grace period is over.
DELETION_SIGNAL_CODES = frozenset({128 + 15, 128 + 9})
# Container runtimes' reasons for a container that never ran (containerd: exit 128).
_START_FAILURES = frozenset({"StartError", "ContainerCannotRun"})
# Reasons the engine writes first in its termination message ("<Reason>: <why>",
# volt.termination.exit_for_error) for failures that have their own exit code.
_OWN_FAILURE_REASONS = {
    "CheckpointVolumeFull": CHECKPOINT_VOLUME_FULL,
    "CheckpointVolumeError": CHECKPOINT_VOLUME_ERROR,
}

# Every `reason` a gang restart (or failure) can carry; metrics use this set.
REASONS = (
    "Preempted", "Evicted", "Checkpointed", "PeerLost", "RendezvousTimeout",
    "OOMKilled", "PodDeleted", "Crashed", "PodFailed", "UserError", "ConfigError",
    "FailurePolicyRule", "CheckpointVolumeFull", "CheckpointVolumeError",
    "Stalled",  # status.py: no step, or a gang that never started, for stallTimeoutSeconds
)

FAIL = "FailJob"
RESTART = "RestartGang"
RESTART_FREE = "RestartGangIgnoreBudget"
_SEVERITY = {FAIL: 2, RESTART: 1, RESTART_FREE: 0}


@dataclass(frozen=True)
class Verdict:
    action: str
    pod: PodView
    reason: str
    message: str


def _rule_matches(rule: FailureRule, pod: PodView) -> bool:
    if rule.on_exit_codes is not None:
        if pod.exit_code is None:
            return False
        inside = pod.exit_code in rule.on_exit_codes.values
        return inside if rule.on_exit_codes.operator == "In" else not inside
    return pod.reason in (rule.on_reasons or [])


_RETRY_REASONS = {
    PEER_LOST: "PeerLost",
    RENDEZVOUS_TIMEOUT: "RendezvousTimeout",
    CHECKPOINT_VOLUME_FULL: "CheckpointVolumeFull",
    CHECKPOINT_VOLUME_ERROR: "CheckpointVolumeError",
}


def _engine_message(pod: PodView, code: Optional[int]) -> str:
    """The engine's own words (its termination message) for an exit code below 128.

    ``volt-run`` leaves the failing rank's exception (``KeyError: 'label' at
    train.py:12 in training_step (global rank 1)``) for exit 1, the engine a reason
    for 78-80; rank 0's final progress (JSON) and a signal's exit explain nothing.
    """
    text = (pod.message or "").strip()
    if code is None or not 0 < code < 128 or not text or text.startswith("{"):
        return ""
    return ": " + text.splitlines()[0][:1000]


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "no exit code"
    names = {
        CHECKPOINTED: "checkpointed on SIGTERM",
        PEER_LOST: "lost a peer",
        RENDEZVOUS_TIMEOUT: "rendezvous timed out",
        CONFIG_ERROR: "configuration error",
        CHECKPOINT_VOLUME_FULL: "checkpoint volume full",
        CHECKPOINT_VOLUME_ERROR: "checkpoint volume failing",
    }
    if code in names:
        return f"exit code {code} ({names[code]})"
    if code == 128:
        return f"exit code {code} (the container did not start or exited 128)"
    if code >= 128:
        return f"exit code {code} (killed by signal {code - 128})"
    return f"exit code {code} (user error)"


def own_failure_code(pod: PodView) -> Optional[int]:
    """The engine's own exit code for a node that reported only a consequence.

    A node exits PEER_LOST (or with the signal its agent stopped the failing rank
    with) when another of its ranks noticed the failure before the failing rank
    had exited; that rank's termination message still names its reason.
    """
    code = pod.exit_code
    if code is None or not (code == PEER_LOST or code >= 128):
        return None
    head = (pod.message or "").strip().split(":", 1)[0]
    return _OWN_FAILURE_REASONS.get(head)


def judge(pod: PodView, policy: FailurePolicy) -> Verdict:
    """The action one failed pod asks for."""
    where = f"{pod.name} (rank {pod.rank}): {describe_exit(pod.exit_code)}"
    if pod.reason:
        where += f", reason {pod.reason}"
    code = pod.exit_code
    own = own_failure_code(pod)
    if own is not None:
        where += f", but its rank failed first-hand with {describe_exit(own)}"
        code = own
    for index, rule in enumerate(policy.rules):
        if _rule_matches(rule, pod):
            return Verdict(
                rule.action, pod, "FailurePolicyRule",
                f"{where}; failurePolicy.rules[{index}]{_engine_message(pod, code)}",
            )
    if pod.disrupted:
        kind = "Preempted" if "preempt" in pod.reason.lower() else "Evicted"
        return Verdict(RESTART_FREE, pod, kind, where)
    if code in FREE_RESTART_CODES:
        return Verdict(RESTART_FREE, pod, "Checkpointed", where)
    if code in RETRYABLE:
        return Verdict(RESTART, pod, _RETRY_REASONS[code], where + _engine_message(pod, code))
    if code is not None and 0 < code < 128:
        name = "ConfigError" if code == CONFIG_ERROR else "UserError"
        return Verdict(FAIL, pod, name, where + _engine_message(pod, code))
    if pod.reason == "OOMKilled":
        return Verdict(RESTART, pod, "OOMKilled", where)
    if (pod.gone or pod.deleting) and (code is None or code in DELETION_SIGNAL_CODES):
        # Someone deleted it (kubectl delete, a node drain without the eviction API):
        # the deletion stopped the training, not a fault of its own, like an eviction.
        how = "" if code is None else f" ({describe_exit(code)}: it did not checkpoint in its grace period)"
        return Verdict(RESTART_FREE, pod, "PodDeleted", f"{pod.name} (rank {pod.rank}) was deleted{how}")
    if pod.reason in _START_FAILURES and pod.message:
        # The runtime's words ("exec: \"volt-run\": executable file not found in $PATH").
        where += ": " + pod.message.strip().splitlines()[0][:1000]
    return Verdict(RESTART, pod, "Crashed" if code else "PodFailed", where)


def worst(failed: Iterable[PodView], policy: FailurePolicy) -> Optional[Verdict]:
    """The gang's verdict from all failed pods.

    When one rank crashes or is preempted, the others exit with PEER_LOST as
    a consequence; the root cause decides (a preempted rank must not spend
    the budget because its peers noticed). A pod removed from outside comes
    first, then the most severe action, then the lowest rank.
    """
    verdicts = [judge(p, policy) for p in failed]
    if not verdicts:
        return None
    causes = [
        v for v in verdicts if not (v.pod.exit_code == PEER_LOST and v.reason == "PeerLost")
    ]
    pool = causes or verdicts
    # A pod someone deleted, evicted or preempted is the root cause: its peers
    # stop (75/76) because of it, whichever exit the operator saw first.
    return sorted(pool, key=lambda v: (not v.pod.removed, -_SEVERITY[v.action], v.pod.rank))[0]
