"""A real Prometheus scraping real training processes, and the Grafana dashboard's queries against it.

1. `volt-run` launches two ranks of `volt.examples.synthetic` on this machine;
   Prometheus (Debian's package) scrapes both ranks through file-based targets.
   The series must carry the expected labels, and every dashboard query over
   engine metrics must return data.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "volt" / "dashboards" / "volt.json"
METRICS_BASE_PORT = 35010  # H7's range is 35000-35099; ranks use 35010 and 35011
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval would be for a 1 s scrape interval, rounded up


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError, KeyError) as err:
            last_error = err
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})")


class Prometheus:
    """A real Prometheus server on 127.0.0.1 with file-based scrape targets."""

    def __init__(self, workdir: Path, jobs: Sequence[str]) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: `make prometheus` installs Debian's package"
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.target_files = {job: workdir / f"targets-{job}.json" for job in jobs}
        for path in self.target_files.values():
            path.write_text("[]")
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [
                {"job_name": job, "file_sd_configs": [{"files": [str(path)], "refresh_interval": "1s"}]}
                for job, path in self.target_files.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = open(workdir / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until("Prometheus to be ready", self._ready, timeout=60)
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}: {self.logs()}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
            return response.status == 200

    def logs(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")[-4000:]

    def set_targets(self, job: str, targets: List[str], labels: Dict[str, str]) -> None:
        tmp = self.target_files[job].with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": targets, "labels": labels}]))
        tmp.replace(self.target_files[job])  # atomic: Prometheus never reads half a file

    def api(self, endpoint: str, **params: Any) -> Any:
        url = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as err:
            body = json.load(err)
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus {endpoint} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> List[Dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), f"{expr}: unexpected {data['resultType']}"
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def active_targets(self, job: str) -> List[Dict[str, Any]]:
        return [t for t in self.api("targets", state="active")["activeTargets"] if t["labels"].get("job") == job]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.close()


def dashboard_queries() -> List[Tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel of the shipped dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    assert len(queries) >= 10, "the dashboard lost its panels"
    return queries


def grafana_render(expr: str, trainingjob: str) -> str:
    """Substitute the dashboard's variables as Grafana would for one selected job."""
    return expr.replace("$trainingjob", trainingjob).replace("$__rate_interval", RATE_INTERVAL)


def values(result: List[Dict[str, Any]]) -> List[float]:
    return [float(sample["value"][1]) for sample in result]


def assert_dashboard_has_data(
    prometheus: Prometheus, trainingjob: str, skip: Callable[[str], bool], timeout: float
) -> List[str]:
    """Every dashboard query (except those `skip` excludes) returns at least one finite value."""
    checked, missing = [], {}
    deadline = time.monotonic() + timeout
    pending = [(title, expr) for title, expr in dashboard_queries() if not skip(expr)]
    while pending and time.monotonic() < deadline:
        still = []
        for title, expr in pending:
            rendered = grafana_render(expr, trainingjob)
            found = [v for v in values(prometheus.query(rendered)) if math.isfinite(v)]
            if found:
                checked.append(title)
            else:
                missing[title] = rendered
                still.append((title, expr))
        pending = still
        if pending:
            time.sleep(1)
    assert not pending, f"dashboard queries without data: {json.dumps({t: missing[t] for t, _ in pending}, indent=1)}"
    return checked


# --- 1. two local ranks under volt-run, no operator ---------------------------------------


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    server = Prometheus(workdir, jobs=["volt-trainer", "volt-operator"])
    try:
        yield server
    finally:
        server.stop()


def volt_run_env(tmp_path: Path, job: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "trainer_image"), str(REPO / "operator")]),
        VOLT_METRICS_PORT=str(METRICS_BASE_PORT),
        VOLT_JOB_NAME=job,
        VOLT_ATTEMPT="1",
        VOLT_CHECKPOINT_DIR=str(tmp_path / "checkpoints"),
        VOLT_RESUME="never",
        VOLT_TRAINER=json.dumps({"accelerator": "cpu", "devices": 2, "strategy": "ddp"}),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        OMP_NUM_THREADS="1",
    )
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "NUM_NODES"):
        env.pop(name, None)
    return env


def volt_run_command() -> List[str]:
    launcher = shutil.which("volt-run", path=str(Path(sys.executable).parent)) or shutil.which("volt-run")
    prefix = [launcher] if launcher else [sys.executable, "-m", "volt.launch"]
    return prefix + [
        "--nproc-per-node", "2",
        sys.executable, "-m", "volt.examples.synthetic",
        "--max-steps", "100000", "--max-epochs", "1000",
        "--samples", "256", "--batch-size", "16", "--every-n-steps", "100",
    ]


def stop_run(process: subprocess.Popen, log: Path) -> int:
    """SIGTERM the launcher (the engine checkpoints and exits), SIGKILL the group if it hangs."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    return process.returncode


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_prometheus_scrapes_two_local_ranks_and_dashboard_has_data(tmp_path: Path, prometheus: Prometheus) -> None:
    job = "h7-local"
    log_path = tmp_path / "volt-run.log"
    with open(log_path, "wb") as log:
        run = subprocess.Popen(
            volt_run_command(), env=volt_run_env(tmp_path, job), cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        ports = [METRICS_BASE_PORT, METRICS_BASE_PORT + 1]
        prometheus.set_targets("volt-trainer", [f"127.0.0.1:{port}" for port in ports], {"source": "volt-run"})

        def both_ranks_up() -> bool:
            if run.poll() is not None:
                raise AssertionError(f"volt-run exited with {run.returncode}:\n{log_path.read_text()[-4000:]}")
            targets = prometheus.active_targets("volt-trainer")
            return len(targets) == 2 and all(t["health"] == "up" for t in targets)

        wait_until("both ranks to be scraped", both_ranks_up, timeout=120)

        # Labels: one series per rank, carrying rank, trainingjob and the scrape labels.
        def steps_by_rank() -> Dict[str, float]:
            result = prometheus.query(f'volt_train_global_step{{trainingjob="{job}"}}')
            return {sample["metric"]["rank"]: float(sample["value"][1]) for sample in result}

        def both_ranks_stepping() -> Dict[str, float]:
            steps = steps_by_rank()
            return steps if len(steps) == 2 and min(steps.values()) > 0 else {}

        assert set(wait_until("both ranks to report steps", both_ranks_stepping, timeout=60)) == {"0", "1"}
        for sample in prometheus.query(f'volt_train_global_step{{trainingjob="{job}"}}'):
            labels = sample["metric"]
            assert labels["job"] == "volt-trainer" and labels["source"] == "volt-run"
            assert labels["instance"] == f"127.0.0.1:{METRICS_BASE_PORT + int(labels['rank'])}"
        restarts = prometheus.query(f'volt_job_restarts{{trainingjob="{job}"}}')
        assert sorted(values(restarts)) == [1.0, 1.0]
        world = prometheus.query(f'volt_world_size{{trainingjob="{job}"}}')
        assert values(world) == [2.0, 2.0]
        logged = {s["metric"]["metric"] for s in prometheus.query(f'volt_logged_metric{{trainingjob="{job}",rank="0"}}')}
        assert any("loss" in name for name in logged), logged

        checked = assert_dashboard_has_data(
            prometheus,
            job,
            # Operator panels need the operator (test 2); GPU panels a GPU.
            skip=lambda expr: "volt_operator_" in expr or "volt_gpu_" in expr,
            timeout=90,
        )
        assert "Checkpoint age" in checked and "Step time by rank" in checked
    finally:
        code = stop_run(run, log_path)
    assert code in (0, 75), f"volt-run exited {code} after SIGTERM:\n{log_path.read_text()[-4000:]}"
