"""The operator at scale, small: 50 TrainingJobs of 8 nodes on KWOK's simulated nodes.

Runs `bench/operator_scale.py kwok` against the session's cluster: 400 pods
driven to Running, one pod of every tenth job killed, every pod finished. The
script itself checks that no pod was created twice in an attempt and that
every kill restarted its gang (it exits non-zero otherwise); this test also
holds the operator to its steady-state cost: no read, and under one request
per second, while nothing changes.

The run also waits for every job's first /progress read (the ProgressPolled
condition; KWOK's pods serve none, so each read fails after its timeout): the
poller's budget must reach every job, not only those a sweep asks for first.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from volt_operator.testing.kwok import kwok_binary

REPO = Path(__file__).resolve().parents[2]
# 100 nodes, not the benchmark's 1,000: registering them is most of the run's time, and
# 400 pods fit either way (docs/benchmarks.md has the 1,000-node figures).
JOBS, NODES = 50, 100


@pytest.mark.timeout(600)
def test_fifty_jobs_on_simulated_nodes(kube: Any, tmp_path: Path) -> None:
    if not kwok_binary().exists():
        pytest.fail(f"{kwok_binary()} is missing: run `make kwok`", pytrace=False)
    out = tmp_path / "scale.json"
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "operator_scale.py"), "kwok", "--jobs", str(JOBS),
         "--nodes", str(NODES), "--window", "10", "--timeout", "480", "--cluster-dir", str(kube.dir),
         "--out", str(out)],
        capture_output=True, text=True, timeout=560)
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    [figures] = json.loads(out.read_text())["runs"]
    print(json.dumps(figures, indent=2))
    assert figures["problems"] == []
    assert figures["steady_reads_per_s"] == 0
    assert figures["steady_requests_per_s"] < 1.0
    assert figures["restarts"] == JOBS // 10
