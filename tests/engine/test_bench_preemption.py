"""bench/preemption_latency.py still runs: one 2x2 DDP run, SIGTERM to one node, every node exits 75.

Not a measurement (one run on a shared machine): the test catches a bench left behind
by a change to volt-run, the SIGTERM agreement or the checkpoint manifest.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddp_support import REPO, child_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # 4 processes import torch: minutes under load


def test_one_run_checkpoints_and_exits_75_inside_the_grace_period(tmp_path: Path) -> None:
    out = tmp_path / "preemption.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "preemption_latency.py"),
                             "--step-delays", "0.1", "--repeats", "1", "--out", str(out)],
                            env=child_env(), capture_output=True, text=True, timeout=570)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    [row] = report["rows"]
    [run] = row["runs"]
    # The bench itself raises unless every node exited 75; here: saved first, all inside the grace period.
    assert 0 < run["signal_to_checkpoint_s"] <= run["signal_to_exit_s"] < report["grace_period_s"], report
