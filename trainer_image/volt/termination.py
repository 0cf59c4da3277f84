"""The container's termination message: the last words a rank leaves for the operator.

Kubernetes copies the file at a container's terminationMessagePath (at most
4096 bytes) into the pod status when the container exits. The operator sets
``VOLT_TERMINATION_MESSAGE_PATH`` to that path; global rank 0 writes its final
progress document there, so the job's status shows the last step and
checkpoint even though the /progress endpoint is gone.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from typing import Any, Dict, Mapping, Optional

from volt import exit_codes
from volt.contract import ENV_TERMINATION_MESSAGE_PATH

log = logging.getLogger(__name__)

# Read alone rather than through JobContract.from_env: the exit path that writes the message
# must work even when the process exits because another job variable is malformed.
TERMINATION_ENV = ENV_TERMINATION_MESSAGE_PATH
MAX_BYTES = 4096  # the kubelet truncates longer messages


def encode_progress(progress: Mapping[str, Any]) -> bytes:
    """Compact JSON of ``progress`` within MAX_BYTES: per-metric values go first when it is too long."""
    body = json.dumps(progress, separators=(",", ":"), default=str).encode()
    if len(body) > MAX_BYTES:
        body = json.dumps({k: v for k, v in progress.items() if k != "metrics"},
                          separators=(",", ":"), default=str).encode()
    return body[:MAX_BYTES]


def write_termination_message(progress: Mapping[str, Any],
                              environ: Optional[Dict[str, str]] = None) -> bool:
    """Write ``progress`` to the termination message file, if the environment names one."""
    path = (environ if environ is not None else os.environ).get(TERMINATION_ENV)
    if not path:
        return False
    try:
        with open(path, "wb") as handle:
            handle.write(encode_progress(progress))
    except OSError as exc:  # never fail a finished run over its epitaph
        log.warning("could not write the termination message to %s: %s", path, exc)
        return False
    return True


def write_termination_text(text: str, environ: Optional[Dict[str, str]] = None) -> bool:
    """Write one line of plain text (why the process exits) as the termination message, if one is wanted."""
    path = (environ if environ is not None else os.environ).get(TERMINATION_ENV)
    if not path:
        return False
    try:
        with open(path, "wb") as handle:
            handle.write(text.encode()[:MAX_BYTES])
    except OSError as exc:
        log.warning("could not write the termination message to %s: %s", path, exc)
        return False
    return True


def exit_for_error(err: BaseException, environ: Optional[Dict[str, str]] = None) -> Optional[SystemExit]:
    """The ``SystemExit`` for an error that names its own exit code (an int ``exit_code`` attribute), or None.

    Before returning it prints the traceback (a ``SystemExit`` prints nothing) and
    leaves ``<reason>: <message>`` as the termination message, so the operator's
    status says why (e.g. ``CheckpointVolumeFull: the checkpoint volume is full: ...``).
    """
    code = getattr(err, "exit_code", None)
    if isinstance(err, SystemExit) or not isinstance(code, int) or isinstance(code, bool):
        return None
    reason = getattr(err, "reason", None) or type(err).__name__
    traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    sys.stderr.write(f"volt: exiting with {code} ({exit_codes.describe(code)}): {err}\n")
    sys.stderr.flush()
    write_termination_text(f"{reason}: {err}", environ)
    return SystemExit(code)
