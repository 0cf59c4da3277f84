"""Why a job failed: the failing rank's exception reaches the container's termination message."""
import json
from pathlib import Path

import pytest

from ddp_support import SCRIPTS, logs, script, start_nodes, wait_all
from volt import termination
from volt.launch import root_cause_message


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
