"""volt-run helpers that need no processes: overrides, resume policy, exit codes."""
import logging

import pytest

from volt import exit_codes
from volt.overrides import apply_env_overrides, resume_ckpt_path, trainer_settings

pytestmark = pytest.mark.timeout(30)


def test_volt_trainer_overrides_and_logs_each(caplog):
    caplog.set_level(logging.INFO, logger="volt.overrides")
    env = {"VOLT_TRAINER": '{"max_epochs": 3, "devices": 2, "accelerator": "cpu"}'}
    out = apply_env_overrides({"max_epochs": 10, "accelerator": "cpu", "logger": False}, env)
    assert out == {"max_epochs": 3, "devices": 2, "accelerator": "cpu", "logger": False}
    text = caplog.text
    assert "overrides Trainer(max_epochs=10) with 3" in text
    assert "sets Trainer(devices=2)" in text
    assert "accelerator" not in text  # same value: nothing to report


@pytest.mark.parametrize(
    "raw, message",
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ('{"maxEpochs": 3}', "snake_case")],
)
def test_bad_volt_trainer_is_a_clear_error(raw, message):
    with pytest.raises(ValueError, match=message):
        trainer_settings({"VOLT_TRAINER": raw})


def test_resume_policy():
    assert resume_ckpt_path(None, {}) is None
    assert resume_ckpt_path("x.ckpt", {}) == "x.ckpt"
    assert resume_ckpt_path(None, {"VOLT_RESUME": "Auto"}) == "last"
    assert resume_ckpt_path("last", {"VOLT_RESUME": "never"}) is None
    assert resume_ckpt_path(None, {"VOLT_RESUME": "/ckpt/a.ckpt"}) == "/ckpt/a.ckpt"


def test_exit_codes_are_distinct_and_described():
    codes = [exit_codes.SUCCESS, exit_codes.USER_ERROR, exit_codes.CHECKPOINTED, exit_codes.PEER_LOST,
             exit_codes.RENDEZVOUS_TIMEOUT, exit_codes.CONFIG_ERROR]
    assert len(set(codes)) == len(codes) and all(0 <= c < 128 for c in codes)
    assert exit_codes.is_retryable(exit_codes.CHECKPOINTED) and not exit_codes.is_retryable(exit_codes.CONFIG_ERROR)
    assert exit_codes.describe(137) == "killed by SIGKILL"
    assert exit_codes.describe(-15) == "killed by SIGTERM"
    assert "restart me" in exit_codes.describe(75)
