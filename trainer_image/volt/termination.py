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
from typing import Any, Dict, Mapping, Optional

log = logging.getLogger(__name__)

TERMINATION_ENV = "VOLT_TERMINATION_MESSAGE_PATH"
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
