"""The failure policy for the engine's checkpoint exit codes: a full or failing volume restarts, with the engine's words."""
from __future__ import annotations

from typing import Optional

import pytest

from volt import exit_codes
from volt_operator import failures
from volt_operator.api import FailurePolicy
from volt_operator.observed import PodView


def failed_pod(code: int, message: str = "", rank: int = 0) -> PodView:
    return PodView(name=f"job-node-{rank}", rank=rank, attempt=0, phase="Failed", ready=False, deleting=False,
                   gone=False, exit_code=code, reason="Error", message=message, disrupted=False,
                   finished_at=None, ip=None)


VOLUME_FULL = ("CheckpointVolumeFull: the checkpoint volume is full: writing /ckpt/epoch=0-step=40.ckpt failed "
               "with ENOSPC (No space left on device). The previous checkpoint and latest.json are unchanged")


@pytest.mark.parametrize("code, reason, message", [
    (exit_codes.CHECKPOINT_VOLUME_FULL, "CheckpointVolumeFull", VOLUME_FULL),
    (exit_codes.CHECKPOINT_VOLUME_ERROR, "CheckpointVolumeError", "CheckpointVolumeError: the checkpoint volume "
                                                                  "is failing: writing /ckpt/a.ckpt failed with EIO"),
])
def test_a_full_or_failing_volume_restarts_and_says_why(code: int, reason: str, message: str) -> None:
    assert code in failures.RETRYABLE and code not in failures.FREE_RESTART_CODES
    verdict = failures.judge(failed_pod(code, message), FailurePolicy())
    assert verdict.action == failures.RESTART and verdict.reason == reason
    assert reason in failures.REASONS  # a metric label the operator pre-declares
    assert f"exit code {code}" in verdict.message and message in verdict.message


def test_the_volume_is_the_cause_its_peers_lost_a_peer() -> None:
    full = failed_pod(exit_codes.CHECKPOINT_VOLUME_FULL, VOLUME_FULL, rank=0)
    peer = failed_pod(exit_codes.PEER_LOST, rank=1)
    verdict = failures.worst([peer, full], FailurePolicy())
    assert verdict is not None and verdict.reason == "CheckpointVolumeFull" and verdict.pod.rank == 0


@pytest.mark.parametrize("message, shown", [
    ("CheckpointOfAnotherJob: The checkpoint directory /ckpt was written by job uid a, but this is job uid b",
     "written by job uid a"),
    ('{"step": 3, "epoch": 0}', None),  # a progress document is not an explanation
    ("", None),
])
def test_config_errors_carry_the_engines_message(message: str, shown: Optional[str]) -> None:
    verdict = failures.judge(failed_pod(exit_codes.CONFIG_ERROR, message), FailurePolicy())
    assert verdict.action == failures.FAIL and verdict.reason == "ConfigError"
    if shown is None:
        assert verdict.message == "job-node-0 (rank 0): exit code 78 (configuration error), reason Error"
    else:
        assert shown in verdict.message
