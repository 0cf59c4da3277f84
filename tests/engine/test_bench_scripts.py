"""The benchmarks still run: each in its smallest configuration, its JSON report read back.

Not a measurement (numbers on a shared CI machine mean little); it catches a bench
script left behind by a change to the engine or to the helpers it shares.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddp_support import REPO, child_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def run_bench(script: str, *args: str) -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], env=child_env(),
                            capture_output=True, text=True, timeout=220)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_engine_overhead_reports_paired_ratios(tmp_path: Path) -> None:
    out = tmp_path / "engine_overhead.json"
    run_bench("engine_overhead.py", "--models", "tiny_mlp", "--epochs", "2", "--repeats", "1", "--out", str(out))
    result = json.loads(out.read_text())["results"]["tiny_mlp"]
    assert result["epochs_measured"]["volt"] == 1
    for key in ("ratio_vs_raw", "ratio_vs_raw_median", "ratio_vs_raw_paired"):
        assert 0.2 < result[key]["volt"] < 5, result


def test_prometheus_overhead_reports_on_and_off(tmp_path: Path) -> None:
    out = tmp_path / "prometheus_overhead.json"
    run_bench("prometheus_overhead.py", "--models", "tiny_mlp", "--epochs", "2", "--repeats", "1",
              "--scrape-interval", "0.2", "--out", str(out))
    result = json.loads(out.read_text())["results"]["tiny_mlp"]
    assert result["epochs_measured"] == {"volt_off": 1, "volt_on": 1}
    assert 0.2 < result["ratio_on"] < 5 and result["hook_us_per_step"] > 0, result
