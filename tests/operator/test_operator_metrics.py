"""The operator's metrics, scraped over HTTP and checked with promtool."""
from __future__ import annotations

import shutil
import subprocess
import threading
import tomllib
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from volt_operator import metrics as operator_metrics
from volt_operator.metrics import RESTART_REASONS, MetricsServer, OperatorMetrics
from volt_operator.workqueue import WorkQueue

pytestmark = pytest.mark.timeout(60)

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


@pytest.fixture
def served() -> Iterator[Tuple[OperatorMetrics, MetricsServer]]:
    metrics = OperatorMetrics()
    server = MetricsServer(metrics.registry, port=0, addr="127.0.0.1")
    try:
        yield metrics, server
    finally:
        server.stop()


def scrape(server: MetricsServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as response:
        return response.read().decode()


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_jobs_by_phase_follow_transitions_and_deletes(served: Tuple[OperatorMetrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.observe_phase("team-a", "mnist", "Pending")
    metrics.observe_phase("team-a", "bert", "Pending")
    metrics.observe_phase("team-a", "mnist", "Running")
    metrics.observe_phase("team-b", "gpt", "Failed")
    got = samples(scrape(server))
    assert got[("volt_operator_trainingjobs", (("namespace", "team-a"), ("phase", "Running")))] == 1
    assert got[("volt_operator_trainingjobs", (("namespace", "team-a"), ("phase", "Pending")))] == 1
    assert got[("volt_operator_trainingjobs", (("namespace", "team-a"), ("phase", "Failed")))] == 0
    assert got[("volt_operator_trainingjobs", (("namespace", "team-b"), ("phase", "Failed")))] == 1
    key = (("namespace", "team-a"), ("phase", "Running"), ("trainingjob", "mnist"))
    assert got[("volt_operator_trainingjob_phase", key)] == 1
    assert ("volt_operator_trainingjob_phase", (("namespace", "team-a"), ("phase", "Pending"), ("trainingjob", "mnist"))) not in got

    metrics.job_deleted("team-a", "mnist")
    got = samples(scrape(server))
    assert got[("volt_operator_trainingjobs", (("namespace", "team-a"), ("phase", "Running")))] == 0
    assert ("volt_operator_trainingjob_phase", key) not in got


def test_restarts_time_to_running_and_reconciles(served: Tuple[OperatorMetrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.record_restart("ns", "job", "OOMKilled")
    metrics.record_restart("ns", "job", "OOMKilled")
    metrics.record_restart("ns", "job", "Preempted")
    metrics.observe_time_to_running(12.5)
    metrics.observe_reconcile(0.02, error=False, handler="create")
    with pytest.raises(RuntimeError, match="boom"):
        with metrics.reconcile_timer("create"):
            raise RuntimeError("boom")
    with metrics.reconcile_timer("resume"):
        pass

    got = samples(scrape(server))
    restarts = "volt_operator_trainingjob_restarts_total"
    assert got[(restarts, (("namespace", "ns"), ("reason", "OOMKilled"), ("trainingjob", "job")))] == 2
    assert got[(restarts, (("namespace", "ns"), ("reason", "Preempted"), ("trainingjob", "job")))] == 1
    assert got[("volt_operator_time_to_running_seconds_count", ())] == 1
    assert got[("volt_operator_time_to_running_seconds_sum", ())] == 12.5
    assert got[("volt_operator_time_to_running_seconds_bucket", (("le", "10.0"),))] == 0
    assert got[("volt_operator_time_to_running_seconds_bucket", (("le", "20.0"),))] == 1
    assert got[("volt_operator_reconcile_duration_seconds_count", (("handler", "create"),))] == 2
    assert got[("volt_operator_reconcile_duration_seconds_count", (("handler", "resume"),))] == 1
    assert got[("volt_operator_reconcile_errors_total", (("handler", "create"),))] == 1
    assert got[("volt_operator_reconcile_errors_total", (("handler", "resume"),))] == 0

    metrics.job_deleted("ns", "job")
    assert not any(name == restarts for name, _ in samples(scrape(server)))


def test_restart_reasons_start_at_zero(served: Tuple[OperatorMetrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.observe_phase("ns", "fresh", "Pending")
    metrics.record_restart("ns", "fresh", "Preempted")
    got = samples(scrape(server))
    by_reason = {
        dict(labels)["reason"]: value
        for (name, labels), value in got.items()
        if name == "volt_operator_trainingjob_restarts_total" and dict(labels)["trainingjob"] == "fresh"
    }
    assert set(by_reason) == set(RESTART_REASONS)
    assert by_reason["Preempted"] == 1 and by_reason["OOMKilled"] == 0
    metrics.job_deleted("ns", "fresh")
    assert not [name for name, _ in samples(scrape(server)) if name == "volt_operator_trainingjob_restarts_total"]


def test_build_info_names_the_operator_version(served: Tuple[OperatorMetrics, MetricsServer]) -> None:
    _, server = served
    with open(Path(__file__).resolve().parents[2] / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    got = samples(scrape(server))
    build = {key: value for key, value in got.items() if key[0] == "volt_build_info"}
    assert build == {("volt_build_info", (("version", version),)): 1}


def test_bad_arguments_name_the_argument() -> None:
    metrics = OperatorMetrics()
    with pytest.raises(ValueError, match="phase"):
        metrics.observe_phase("ns", "job", "")
    with pytest.raises(ValueError, match="namespace"):
        metrics.record_restart(None, "job", "OOMKilled")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds"):
        metrics.observe_time_to_running(-1)
    with pytest.raises(ValueError, match="port"):
        MetricsServer(metrics.registry, port=70000)


def test_module_functions_update_the_served_registry() -> None:
    server = operator_metrics.start_metrics_server(0, addr="127.0.0.1")
    try:
        operator_metrics.observe_phase("module-ns", "job-x", "Suspended")
        operator_metrics.record_restart("module-ns", "job-x", "Evicted")
        operator_metrics.observe_reconcile(0.1, error=True, handler="timer")
        got = samples(scrape(server))
        assert got[("volt_operator_trainingjobs", (("namespace", "module-ns"), ("phase", "Suspended")))] == 1
        assert got[("volt_operator_reconcile_errors_total", (("handler", "timer"),))] >= 1
    finally:
        operator_metrics.job_deleted("module-ns", "job-x")
        server.stop()


def test_work_queue_depth_is_the_jobs_waiting_for_a_worker(served: Tuple[OperatorMetrics, MetricsServer]) -> None:
    metrics, server = served
    inside, release = threading.Event(), threading.Event()

    def work(key: Tuple[str, str], gone: List[Dict[str, object]]) -> None:
        inside.set()
        assert release.wait(10)

    queue = WorkQueue(work, workers=1)
    try:
        metrics.work_queue_depth.set_function(queue.__len__)
        queue.add(("ns", "running"))
        assert inside.wait(10)
        for name in ("a", "b", "a"):  # asked twice, waits once
            queue.add(("ns", name))
        assert samples(scrape(server))[("volt_operator_work_queue_depth", ())] == 2
    finally:
        release.set()
        queue.stop()


def test_promtool_accepts_the_exposition(served: Tuple[OperatorMetrics, MetricsServer]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make prometheus` installs Debian's prometheus package"
    metrics, server = served
    metrics.observe_phase("ns", "job", "Running")
    metrics.record_restart("ns", "job", "Error")
    metrics.observe_time_to_running(3)
    metrics.observe_reconcile(0.01, error=True, handler="create")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=scrape(server), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
