"""bench/checkpoint.py still runs: its quick mode (a 10 MB state, 4 real writer processes), every row printed.

Not a measurement: the ratios of a 10 MB state on a shared machine mean little; the
test catches a bench left behind by a change to volt's checkpoint code.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddp_support import REPO, child_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # 4 processes import torch: minutes under load

ROWS = ("torch.save + fsync", "file (volt, SHA-256)", "file (volt, no checksum)", "sharded sync, 1 writer",
        "sharded async, 1 writer", "sharded sync, 4 writers", "sharded async, 4 writers")


def test_quick_bench_prints_every_row_and_cleans_up(tmp_path: Path) -> None:
    out, work = tmp_path / "checkpoint.json", tmp_path / "volume"
    work.mkdir()
    result = subprocess.run([sys.executable, str(REPO / "bench" / "checkpoint.py"), "--quick", "--dir", str(work),
                             "--out", str(out)], env=child_env(), capture_output=True, text=True, timeout=870)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = {line.split("|")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert set(ROWS) <= set(lines), result.stdout
    report = json.loads(out.read_text())
    assert 9 < report["state_mb"] < 12 and report["dd_mb_per_s"] > 0, report
    for name in ROWS:
        row = report["rows"][name]
        assert row["blocked_over_staging"] > 0 and row["throughput_over_dd"] > 0, (name, row)
        assert row["bytes"] >= report["state_bytes"], (name, row)  # the whole state was written
        if name != "file (volt, no checksum)":
            assert row["load_over_torch_load"] > 0, (name, row)
    assert list(work.iterdir()) == []  # the temp dir and every checkpoint in it are gone
