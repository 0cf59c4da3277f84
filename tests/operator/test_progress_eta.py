"""Throughput and ETA from rank 0's /progress: pure functions, table tests."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Optional

import pytest

from volt_operator import progress
from volt_operator.api import TrainingProgress, format_time

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=timezone.utc)


def unix(seconds_ago: float) -> float:
    return (NOW - timedelta(seconds=seconds_ago)).timestamp()


@pytest.mark.parametrize("seconds, shown", [
    (0, "0s"), (59.4, "59s"), (95, "1m35s"), (3600, "1h00m"), (3900, "1h05m"), (200000, "2d07h"), (-5, "0s"),
])
def test_durations_are_short(seconds: float, shown: str) -> None:
    assert progress.format_duration(seconds) == shown


def previous(step: Optional[int], seconds_ago: float, rate: Optional[float] = None) -> TrainingProgress:
    return TrainingProgress(step=step, last_step_time=format_time(NOW - timedelta(seconds=seconds_ago)),
                            steps_per_second=rate)


@pytest.mark.parametrize("before, step, step_seconds_ago, rate", [
    (None, 100, 0, None),  # the first read has nothing to compare with
    (previous(100, 20), 140, 0, 2.0),  # 40 steps in 20 s
    (previous(100, 20, rate=1.5), 100, 0, 1.5),  # no new step: the last rate stands
    (previous(500, 20, rate=3.0), 120, 0, None),  # resumed from an earlier checkpoint
    (TrainingProgress(step=100), 140, 0, None),  # no step time to measure with
])
def test_steps_per_second_from_consecutive_reads(before: Optional[TrainingProgress], step: int,
                                                 step_seconds_ago: float, rate: Optional[float]) -> None:
    after = format_time(NOW - timedelta(seconds=step_seconds_ago))
    assert progress.steps_per_second(before, step, after) == rate


@pytest.mark.parametrize("step, fraction, max_steps, rate, left", [
    (100, 0.25, 400, 2.0, 150.0),  # max_steps: 300 steps left at 2/s
    (100, 0.25, None, 2.0, 150.0),  # epochs only: 100 steps made a quarter, 300 to go
    (100, 0.25, -1, 4.0, 75.0),  # max_steps=-1 means none
    (100, 1.0, None, None, 0.0),  # done
    (100, 0.25, 400, None, None),  # no rate yet
    (0, 0.0, None, 2.0, None),  # nothing to extrapolate from
])
def test_remaining_seconds(step: int, fraction: float, max_steps: Optional[int], rate: Optional[float],
                           left: Optional[float]) -> None:
    assert progress.remaining_seconds(step, fraction, max_steps, rate) == left


def test_two_reads_give_throughput_eta_and_percent() -> None:
    payload: Dict[str, Any] = {"epoch": 0, "step": 100, "max_steps": 1000, "progress": 0.1,
                               "samples_per_second": 256.0, "last_step_time": unix(30)}
    first, _ = progress.to_status(payload, NOW)
    assert first.steps_per_second is None and first.eta is None and first.percent == "10%"
    assert first.samples_per_second == 256.0
    second, _ = progress.to_status({**payload, "step": 160, "progress": 0.16, "last_step_time": unix(0)}, NOW, first)
    assert second.steps_per_second == pytest.approx(2.0)
    assert second.remaining_seconds == 420 and second.eta == "7m00s"  # 840 steps at 2/s
    assert second.percent == "16%"
    # The final progress (the termination message) reads as done.
    final, _ = progress.to_status({**payload, "step": 1000, "progress": 1.0, "last_step_time": unix(0)}, NOW,
                                  second)
    assert final.eta == "0s" and final.percent == "100%" and final.remaining_seconds == 0


def test_percent_reaches_100_only_at_the_end() -> None:
    almost, _ = progress.to_status({"step": 995, "progress": 0.9996}, NOW)
    assert almost.percent == "99%"
