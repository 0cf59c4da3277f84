"""The container's termination message: the last words a rank leaves for the operator.

Kubernetes copies the file at a container's terminationMessagePath (at most
4096 bytes) into the pod status when the container exits. The operator sets
``VOLT_TERMINATION_MESSAGE_PATH`` to that path; global rank 0 writes its final
progress document there, so the job's status shows the last step and
checkpoint even though the /progress endpoint is gone.

When a rank raises, the Trainer records the exception in the error file torch's
elastic agent gave that worker (``record_error``); ``volt-run`` then writes the
root cause's line (type, message, file:line, global rank) as the termination
message, and the operator copies it into ``status.lastFailure.message``. A
script that dies outside the Trainer (at import, in module-level data loading)
records nothing; ``volt-run`` then reads the same line from the traceback Python
printed to that worker's stderr (``describe_traceback``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import sysconfig
import time
import traceback
from typing import Any, Dict, List, Mapping, Optional

from volt import exit_codes
from volt.contract import ENV_TERMINATION_MESSAGE_PATH

log = logging.getLogger(__name__)

# Read alone rather than through JobContract.from_env: the exit path that writes the message
# must work even when the process exits because another job variable is malformed.
TERMINATION_ENV = ENV_TERMINATION_MESSAGE_PATH
MAX_BYTES = 4096  # the kubelet truncates longer messages
#: Set by torch's elastic agent for every worker: where the worker leaves its root-cause error.
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
#: Frames under these directories are the library's, not the user's (volt, torch, the stdlib).
_LIBRARY_DIRS = tuple(
    os.path.join(os.path.realpath(path), "")
    for path in (
        os.path.dirname(os.path.abspath(__file__)),
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    )
)


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
    line = f"{getattr(err, 'reason', None) or type(err).__name__}: {err}"
    traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    sys.stderr.write(f"volt: exiting with {code} ({exit_codes.describe(code)}): {err}\n")
    sys.stderr.flush()
    write_termination_text(line, environ)
    # The error file too, with the code: the rank beside this one may see our connections
    # close and exit PEER_LOST before we finish exiting, and torch's agent then stops us
    # with SIGTERM. volt-run still reports our code (``intended_exit_code``).
    _write_error_file(line[:1024], err, os.environ if environ is None else environ, exit_code=code)
    return SystemExit(code)


def _is_user_frame(filename: str) -> bool:
    if filename.startswith("<"):
        return False
    real = os.path.realpath(filename)
    return not any(real.startswith(lib) for lib in _LIBRARY_DIRS)


def _where(path: str, lineno: Any, name: Optional[str]) -> str:
    cwd = os.path.join(os.getcwd(), "")
    if path.startswith(cwd) and cwd != os.sep:  # relative to the working directory, unless that is /
        path = path[len(cwd):]
    return f"{path}:{lineno} in {name}" if name else f"{path}:{lineno}"


def _error_line(type_name: str, text: str, where: Optional[str], rank: Optional[int]) -> str:
    line = f"{type_name}: {text}" if text else type_name
    if where:
        line += f" at {where}"
    if rank is not None:
        line += f" (global rank {rank})"
    return line[:1024]


def describe_error(err: BaseException, rank: Optional[int] = None) -> str:
    """One line that says why a rank failed: ``KeyError: 'label' at train.py:12 in training_step (global rank 1)``.

    The place is the innermost frame of the user's code (outside volt, torch and the
    standard library), else the innermost frame; exceptions chained with ``raise ... from``
    are described by the outermost one (what the user's code raised last).
    """
    frames: List[traceback.FrameSummary] = traceback.extract_tb(err.__traceback__)
    user = [frame for frame in frames if _is_user_frame(frame.filename)]
    text = str(err).splitlines()[0] if str(err) else ""
    chosen = (user or frames)[-1:]
    where = _where(chosen[0].filename, chosen[0].lineno, chosen[0].name) if chosen else None
    return _error_line(type(err).__name__, text, where, rank)


_TRACEBACK_HEAD = "Traceback (most recent call last):"
# '  File "train.py", line 12, in <module>'; a SyntaxError's own place has no ", in ...".
_FRAME_LINE = re.compile(r'^  File "(?P<file>.+)", line (?P<line>[0-9]+)(?:, in (?P<name>.+))?$')
# 'KeyError: 'label'', 'json.decoder.JSONDecodeError: ...', or a bare 'KeyboardInterrupt'.
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][A-Za-z0-9_.]*)(?:: (?P<text>.*))?$")


def describe_traceback(text: str, rank: Optional[int] = None) -> str:
    """``describe_error``'s line for the last traceback Python printed in ``text``, or ``""``.

    ``text`` is what a worker wrote to stderr: an uncaught exception ends it with
    ``Traceback (most recent call last):``, the frames (``  File "...", line N, in f``
    with indented source and caret lines) and ``Type: message``. The place is the
    innermost user frame, as for ``describe_error``; for chained exceptions the last
    traceback printed is the outermost one. A SyntaxError in the script itself has
    no ``Traceback`` head, only its ``File`` line.
    """
    lines = text.splitlines()
    heads = [i for i, line in enumerate(lines) if line.rstrip() == _TRACEBACK_HEAD]
    if heads:
        start = heads[-1] + 1
    else:
        places = [i for i, line in enumerate(lines) if _FRAME_LINE.match(line)]
        if not places:
            return ""
        start = places[-1]
    frames = []
    for line in lines[start:]:
        frame = _FRAME_LINE.match(line)
        if frame:
            frames.append(frame)
        elif line.startswith(" ") or not line.strip():
            continue  # source, carets, or the blank line before a chained traceback
        else:
            exception = _EXCEPTION_LINE.match(line)
            if not exception or not frames:
                return ""
            user = [frame for frame in frames if _is_user_frame(frame["file"])]
            chosen = (user or frames)[-1]
            where = _where(chosen["file"], chosen["line"], chosen["name"])
            type_name = exception["type"].rsplit(".", 1)[-1]
            return _error_line(type_name, (exception["text"] or "").strip(), where, rank)
    return ""


def record_error(err: BaseException, environ: Optional[Mapping[str, str]] = None) -> bool:
    """Leave ``err`` in the error file torch's elastic agent gave this worker, if any.

    The format is torch's (``ErrorHandler.record_exception``), so the agent reads it as
    the worker's failure; ``message`` is ``describe_error``'s line, which ``volt-run``
    copies into the container's termination message for the operator's status.
    """
    env = environ if environ is not None else os.environ
    rank_text = env.get("RANK", "")
    rank = int(rank_text) if rank_text.isdigit() else None
    return _write_error_file(describe_error(err, rank), err, env)


def _write_error_file(message: str, err: BaseException, env: Mapping[str, str],
                      exit_code: Optional[int] = None) -> bool:
    path = env.get(ERROR_FILE_ENV)
    if not path:
        return False
    stack = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    extra: Dict[str, Any] = {"py_callstack": stack[-16000:], "timestamp": str(int(time.time()))}
    if exit_code is not None:
        extra[_EXIT_CODE_KEY] = exit_code
    data = {"message": {"message": message, "extraInfo": extra}}
    try:
        with open(path, "w") as handle:
            json.dump(data, handle)
    except OSError as exc:
        log.warning("could not record the error in %s: %s", path, exc)
        return False
    return True


#: The key under torch's ``extraInfo`` where ``exit_for_error`` leaves the code it exits with.
_EXIT_CODE_KEY = "voltExitCode"
#: What torch's agent puts in ``error_file_data`` for a worker that left no error file.
_NO_ERROR_FILE = "<NONE>"


def intended_exit_code(error_file_data: Any) -> Optional[int]:
    """The exit code a worker recorded before exiting (``exit_for_error``), or None.

    A worker stopped by its agent while it was still exiting dies of a signal;
    this is the code it had chosen first-hand.
    """
    message = error_file_data.get("message") if isinstance(error_file_data, dict) else None
    extra = message.get("extraInfo") if isinstance(message, dict) else None
    code = extra.get(_EXIT_CODE_KEY) if isinstance(extra, dict) else None
    return code if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 128 else None


def recorded_error(error_file_data: Any) -> str:
    """The one-line message a worker's error file holds (torch's format), or ``""``."""
    message = error_file_data.get("message") if isinstance(error_file_data, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str) or not message.strip() or message.strip() == _NO_ERROR_FILE:
        return ""
    return message.strip().splitlines()[0]
