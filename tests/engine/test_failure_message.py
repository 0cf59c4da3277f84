"""Why a job failed: the failing rank's exception reaches the container's termination message."""
import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from ddp_support import SCRIPTS, logs, script, start_nodes, wait_all
from volt import termination
from volt.checkpoint import CheckpointVolumeError
from volt.launch import describe_uncaught_errors, root_cause_message


def _raising_line() -> int:
    lines = (SCRIPTS / "raise_on_rank.py").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if '{}["label"]' in line)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_rank_raising_key_error_leaves_type_message_place_and_rank(tmp_path):
    message_file = tmp_path / "termination-log"
    procs = start_nodes(1, 2, script("raise_on_rank.py", "--max-steps", "100000", "--samples", "256"), tmp_path,
                        FAIL_RANK="1", FAIL_STEP="3", FAIL_KEY_ERROR="1",
                        VOLT_TERMINATION_MESSAGE_PATH=str(message_file))
    assert wait_all(procs, 120) == [1], logs(tmp_path)
    text = message_file.read_text()
    assert text.startswith("KeyError: 'label' at "), text
    assert text.endswith(f"raise_on_rank.py:{_raising_line()} in training_step (global rank 1)"), text
    assert "\n" not in text
    assert f"root cause: {text}" in (tmp_path / "node0.log").read_text()


def _frame_in(path: Path) -> BaseException:
    code = compile("def training_step():\n    return {}['label']\ntraining_step()\n", str(path), "exec")
    try:
        exec(code, {})
    except KeyError as err:
        return err
    raise AssertionError("no error")


@pytest.mark.timeout(30)
def test_describe_error_names_the_innermost_user_frame_not_library_frames(tmp_path):
    user_file = tmp_path / "train.py"
    err = _frame_in(user_file)
    assert termination.describe_error(err, rank=3) == f"KeyError: 'label' at {user_file}:2 in training_step (global rank 3)"
    # Raised inside json (the standard library) from user code: the place is still the user's line.
    try:
        exec(compile("import json\njson.loads('{')\n", str(user_file), "exec"), {})
    except ValueError as err:
        described = termination.describe_error(err)
    assert described.startswith("JSONDecodeError: Expecting property name"), described
    assert described.endswith(f"at {user_file}:2 in <module>"), described


@pytest.mark.timeout(30)
def test_record_error_writes_torch_error_file_that_volt_run_reads(tmp_path):
    error_file = tmp_path / "error.json"
    err = _frame_in(tmp_path / "train.py")
    assert not termination.record_error(err, environ={})  # no launcher: nothing to write
    assert termination.record_error(err, environ={"TORCHELASTIC_ERROR_FILE": str(error_file), "RANK": "1"})
    data = json.loads(error_file.read_text())
    assert data["message"]["message"].endswith("in training_step (global rank 1)")
    assert "Traceback" in data["message"]["extraInfo"]["py_callstack"]
    assert termination.recorded_error(data) == data["message"]["message"]
    assert termination.recorded_error({"message": ""}) == ""
    assert termination.recorded_error(None) == ""


class _Failure:
    def __init__(self, exitcode, timestamp, message):
        self.exitcode, self.timestamp = exitcode, timestamp
        self.error_file_data = {"message": {"message": message, "extraInfo": {"timestamp": str(timestamp)}}}


class _Result:
    def __init__(self, *failures):
        self.failures = dict(enumerate(failures))


@pytest.mark.timeout(30)
def test_root_cause_prefers_the_rank_that_raised_over_ranks_that_reacted():
    peer = _Failure(76, 10, "RuntimeError: Connection closed by peer (rank 0)")
    cause = _Failure(1, 11, "KeyError: 'label' at train.py:2 in training_step (global rank 1)")
    assert root_cause_message(_Result(peer, cause)) == cause.error_file_data["message"]["message"]
    assert root_cause_message(_Result(_Failure(1, 5, ""))) == ""
    assert root_cause_message(None) == ""


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_plain_script_raising_at_module_level_leaves_the_same_line(tmp_path):
    """No Trainer, no error file: volt-run reads the rank's printed traceback instead of torch's "<NONE>"."""
    message_file = tmp_path / "termination-log"
    raising = SCRIPTS / "raise_at_import.py"
    procs = start_nodes(1, 2, script("raise_at_import.py"), tmp_path, FAIL_RANK="1",
                        VOLT_TERMINATION_MESSAGE_PATH=str(message_file))
    assert wait_all(procs, 100) == [1], logs(tmp_path)
    text = message_file.read_text()
    line = _line_of(raising, 'RECORDS[1]["label"]')
    assert text == f"KeyError: 'label' at {raising}:{line} in <module> (global rank 1)", text
    assert f"root cause: {text}" in (tmp_path / "node0.log").read_text()


def _stderr_of(tmp_path: Path, source: str, name: str = "train.py") -> "tuple[Path, str]":
    """What Python prints to stderr when ``source``, run as a script, dies (a real traceback)."""
    path = tmp_path / name
    path.write_text(source)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=30)
    assert done.returncode != 0, done
    return path, "some output before\n" + done.stderr + "a line printed at exit\n"


@pytest.mark.timeout(60)
def test_describe_traceback_reads_what_python_printed(tmp_path, monkeypatch):
    path, stderr = _stderr_of(tmp_path, "rows = [{'text': 'a'}]\n\nlabel = rows[0]['label']\n")
    assert termination.describe_traceback(stderr, 1) == f"KeyError: 'label' at {path}:3 in <module> (global rank 1)"
    # Raised in the standard library from user code: the user's line, and the class without its module.
    path, stderr = _stderr_of(tmp_path, "import json\n\ndef load():\n    return json.loads('{')\n\nload()\n")
    described = termination.describe_traceback(stderr)
    assert described.startswith("JSONDecodeError: Expecting property name"), described
    assert described.endswith(f"at {path}:4 in load"), described
    # Chained: the exception raised last (printed last) is the one described.
    path, stderr = _stderr_of(tmp_path, "try:\n    {}['label']\nexcept KeyError as err:\n"
                                        "    raise ValueError('no label in the record') from err\n")
    assert termination.describe_traceback(stderr, 0) == (
        f"ValueError: no label in the record at {path}:4 in <module> (global rank 0)")
    # A SyntaxError in the script itself has no Traceback head, only its place.
    path, stderr = _stderr_of(tmp_path, "x = 1\ny = (\n")
    assert termination.describe_traceback(stderr).startswith(f"SyntaxError: '(' was never closed at {path}:2")
    # A message that spans lines keeps its first; sys.exit("...") prints no traceback: nothing to say.
    path, stderr = _stderr_of(tmp_path, "raise RuntimeError('first\\nsecond')\n")
    assert termination.describe_traceback(stderr) == f"RuntimeError: first at {path}:1 in <module>"
    path, stderr = _stderr_of(tmp_path, "import sys\nsys.exit('bad config')\n")
    assert termination.describe_traceback(stderr) == ""
    assert termination.describe_traceback("") == ""
    # Paths are relative to the working directory, except when that is / (a container's default).
    path, stderr = _stderr_of(tmp_path, "x = 1\n{}['label']\n")
    monkeypatch.chdir(tmp_path)
    assert termination.describe_traceback(stderr).endswith("at train.py:2 in <module>")
    monkeypatch.chdir("/")
    assert termination.describe_traceback(stderr).endswith(f"at {path}:2 in <module>")


@pytest.mark.timeout(60)
def test_describe_uncaught_errors_fills_in_workers_without_an_error_file(tmp_path):
    path, stderr = _stderr_of(tmp_path, "{}['label']\n")
    (tmp_path / "stderr.log").write_text(stderr)
    raised = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(tmp_path / "missing.json"))
    killed = ProcessFailure(local_rank=1, pid=2, exitcode=-9, error_file=str(tmp_path / "missing.json"))
    assert termination.recorded_error(raised.error_file_data) == ""  # torch's "<NONE>" placeholder says nothing
    describe_uncaught_errors({4: raised, 5: killed}, {0: str(tmp_path / "stderr.log"), 1: str(tmp_path / "none")})
    assert root_cause_message(_Result(raised)) == f"KeyError: 'label' at {path}:1 in <module> (global rank 4)"
    assert termination.recorded_error(killed.error_file_data) == ""  # a signal: no traceback to read


def test_an_error_that_names_its_exit_code_leaves_it_in_the_error_file(tmp_path):
    # What volt-run reads when the agent stopped the rank before it exited with that code.
    error_file = tmp_path / "error.json"
    env = {termination.ERROR_FILE_ENV: str(error_file), termination.TERMINATION_ENV: str(tmp_path / "msg")}
    err = CheckpointVolumeError(errno.ENOSPC, "checkpoints/step=1.ckpt", "")
    assert termination.exit_for_error(err, env).code == 79
    data = json.loads(error_file.read_text())
    assert termination.intended_exit_code(data) == 79
    assert termination.recorded_error(data).startswith("CheckpointVolumeFull: the checkpoint volume is full")
    assert termination.recorded_error(data) == (tmp_path / "msg").read_text()[:1024]
    for extra in ({"voltExitCode": True}, {"voltExitCode": 143}, {"voltExitCode": "79"}, {}):
        assert termination.intended_exit_code({"message": {"message": "x", "extraInfo": extra}}) is None
    assert termination.intended_exit_code({"message": "<NONE>"}) is None  # torch's "no error file"
