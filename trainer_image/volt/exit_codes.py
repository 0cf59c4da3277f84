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
128+N  killed by signal N    supervisor   137 = SIGKILL/OOM, 143 = SIGTERM, no checkpoint
=====  ====================  ===========  =============================================

75 and 78 follow BSD sysexits (EX_TEMPFAIL, EX_CONFIG). Scripts may exit with
other codes in 2..127; they count as user errors.
"""
from __future__ import annotations

import signal

SUCCESS = 0
USER_ERROR = 1
CHECKPOINTED = 75
PEER_LOST = 76
RENDEZVOUS_TIMEOUT = 77
CONFIG_ERROR = 78

#: Codes after which a restart from the last checkpoint is the right reaction.
RETRYABLE = frozenset({CHECKPOINTED, PEER_LOST, RENDEZVOUS_TIMEOUT})

_NAMES = {
    SUCCESS: "success",
    USER_ERROR: "user error (uncaught exception in the training script)",
    CHECKPOINTED: "checkpointed on SIGTERM, restart me",
    PEER_LOST: "peer lost (another rank or node failed)",
    RENDEZVOUS_TIMEOUT: "rendezvous timeout (a peer never arrived)",
    CONFIG_ERROR: "configuration error (arguments or environment)",
}


def from_signal(signum: int) -> int:
    """The shell convention for a process ended by signal ``signum``: 128 + signum."""
    return 128 + int(signum)


def is_retryable(code: int) -> bool:
    """True for the engine's retryable codes; signals (>= 128) are the supervisor's call."""
    return code in RETRYABLE


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
