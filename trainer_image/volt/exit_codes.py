"""Process exit codes of volt workers and ``volt-run``: the contract with the operator.

The operator (and any other supervisor) decides from the exit code alone whether
a gang restart makes sense and whether it spends the restart budget:

=====  ====================  ===========  =============================================
code   name                  retryable    meaning
=====  ====================  ===========  =============================================
0      SUCCESS               -            training finished
1      USER_ERROR            no           an uncaught exception in the training script
75     CHECKPOINTED          yes (free)   got SIGTERM, saved a checkpoint, restart me
76     PEER_LOST             yes          another rank or node died or vanished
77     RENDEZVOUS_TIMEOUT    yes          a peer never arrived within the timeout
78     CONFIG_ERROR          no           bad arguments or environment contract
79     CHECKPOINT_VOLUME_FULL   yes       saving a checkpoint hit ENOSPC/EDQUOT
80     CHECKPOINT_VOLUME_ERROR  yes       saving a checkpoint hit EIO/EROFS/ESTALE
128+N  killed by signal N    supervisor   137 = SIGKILL/OOM, 143 = SIGTERM, no checkpoint
=====  ====================  ===========  =============================================

75 and 78 follow BSD sysexits (EX_TEMPFAIL, EX_CONFIG). Scripts may exit with
other codes in 2..127; they count as user errors. 79 and 80 leave the previous
checkpoint and ``latest.json`` intact (``volt.checkpoint.CheckpointVolumeError``),
so a restart resumes from it; they spend the restart budget, so a volume that
stays full ends the job.

``node_exit_code`` is the rule ``volt-run`` applies to report one node: what
that node saw first-hand, never what another node reported (see its docstring).
"""
from __future__ import annotations

import signal
from typing import Sequence

SUCCESS = 0
USER_ERROR = 1
CHECKPOINTED = 75
PEER_LOST = 76
RENDEZVOUS_TIMEOUT = 77
CONFIG_ERROR = 78
CHECKPOINT_VOLUME_FULL = 79
CHECKPOINT_VOLUME_ERROR = 80

#: Codes after which a restart from the last checkpoint is the right reaction.
RETRYABLE = frozenset({CHECKPOINTED, PEER_LOST, RENDEZVOUS_TIMEOUT, CHECKPOINT_VOLUME_FULL, CHECKPOINT_VOLUME_ERROR})

_NAMES = {
    SUCCESS: "success",
    USER_ERROR: "user error (uncaught exception in the training script)",
    CHECKPOINTED: "checkpointed on SIGTERM, restart me",
    PEER_LOST: "peer lost (another rank or node failed)",
    RENDEZVOUS_TIMEOUT: "rendezvous timeout (a peer never arrived)",
    CONFIG_ERROR: "configuration error (arguments or environment)",
    CHECKPOINT_VOLUME_FULL: "checkpoint volume full (no space left while saving)",
    CHECKPOINT_VOLUME_ERROR: "checkpoint volume failing (I/O error while saving)",
}


def from_signal(signum: int) -> int:
    """The shell convention for a process ended by signal ``signum``: 128 + signum."""
    return 128 + int(signum)


def is_retryable(code: int) -> bool:
    """True for the engine's retryable codes; signals (>= 128) are the supervisor's call."""
    return code in RETRYABLE


#: Signals by which a worker's own supervisor stops it; a kill by one of these that
#: follows another failure of the node is a consequence, not a cause.
_STOP_SIGNALS = frozenset({128 + signal.SIGTERM, 128 + signal.SIGKILL})


def node_exit_code(
    worker_codes: Sequence[int],
    *,
    failed: bool,
    sigterm: bool = False,
    stopped_for_peer: bool = False,
    rendezvous_failed: bool = False,
) -> int:
    """The exit code of one node's ``volt-run``: what this node saw first-hand.

    Args:
        worker_codes: exit codes of this node's failed workers in the order they
            were seen (killed by signal N as 128 + N). Workers that exited 0 are
            not listed.
        failed: the worker group failed (False: every worker exited 0).
        sigterm: ``volt-run`` itself got SIGTERM (the pod is being deleted).
        stopped_for_peer: ``volt-run`` killed its workers because another node failed.
        rendezvous_failed: the roll call or rendezvous timed out.

    Rules, first match wins:

    1. rendezvous failed: ``RENDEZVOUS_TIMEOUT``.
    2. every worker exited 0: ``SUCCESS``.
    3. a worker exited ``CHECKPOINTED``: ``CHECKPOINTED``. A rank exits 75 only after
       the collective save returned on every rank, so the checkpoint is complete
       even if slower ranks were stopped afterwards.
    4. SIGTERM without a checkpoint: 143.
    5. the first *first-hand* worker code: anything but ``PEER_LOST`` and but a
       SIGTERM/SIGKILL death that follows an earlier failure (torch's agent stops
       the remaining workers that way) or that we sent because of a peer. A kill
       seen first (an OOM kill) is first-hand.
    6. ``PEER_LOST``: only workers that lost a peer, or were stopped because of one.

    So the node whose rank raised exits 1 even when a peer that lost its connection
    to that rank reported sooner; the operator then sees the user error (no restart)
    and the peers' 76 (consequences it ignores when a cause is present).
    """
    if rendezvous_failed:
        return RENDEZVOUS_TIMEOUT
    if not failed:
        return SUCCESS
    if CHECKPOINTED in worker_codes:
        return CHECKPOINTED
    if sigterm:
        return from_signal(signal.SIGTERM)
    for index, code in enumerate(worker_codes):
        if code == PEER_LOST:
            continue
        if code in _STOP_SIGNALS and (index > 0 or stopped_for_peer):
            continue
        return code
    if worker_codes or stopped_for_peer:
        return PEER_LOST
    return USER_ERROR  # the agent failed without naming a worker: no better guess


def describe(code: int) -> str:
    """A one-line human description of ``code``."""
    if code in _NAMES:
        return _NAMES[code]
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            return f"killed by signal {code - 128}"
    if code < 0:  # subprocess convention for "killed by signal"
        return describe(from_signal(-code))
    return f"exit code {code} (user error)"
