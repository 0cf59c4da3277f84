"""A real Prometheus scraping real training processes, and the Grafana dashboard's queries against it.

1. `volt-run` launches two ranks of `volt.examples.synthetic` on this machine;
   Prometheus (Debian's package) scrapes both ranks through file-based targets.
   The series must carry the expected labels, and every dashboard query over
   engine metrics must return data.
2. The operator runs a 2-node x 2-process TrainingJob on the session's real
   nodes (containers of the trainer image, `real_kube`). Debian's Prometheus
   is built without Kubernetes service discovery, so the test lists the pods
   through the API and writes them as file-based targets carrying the same
   `__meta_kubernetes_pod_*` labels the pod role gives; Prometheus, on the
   host, scrapes them at their pod IPs and applies the relabeling the
   Prometheus Operator generates from the chart's PodMonitor. It also scrapes
   the operator.
   Every rank's series arrive with the pod, namespace and node_rank labels,
   and every dashboard query (operator panels included, GPU panels excepted
   on CPU) returns data.
0. Without a server: promtool parses every dashboard query, and each names
   only metrics that docs/metrics.md documents.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import yaml

from helm_util import CHART, helm_binary, run_helm
from helpers import free_port, free_port_run
from operator_process import OperatorProcess, job_status
from real_nodes import example, namespace  # noqa: F401 (namespace: a fixture)
from volt_operator.testing.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "charts" / "volt" / "dashboards" / "volt.json"
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval would be for a 1 s scrape interval, rounded up


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

    def __init__(self, workdir: Path, jobs: Sequence[str], relabel: Optional[Dict[str, List[Dict[str, Any]]]] = None,
                 metrics_path: str = "/metrics") -> None:
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
                {
                    "job_name": job,
                    "metrics_path": metrics_path,
                    "file_sd_configs": [{"files": [str(path)], "refresh_interval": "1s"}],
                    "relabel_configs": (relabel or {}).get(job, []),
                }
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
        self.set_target_groups(job, [{"targets": targets, "labels": labels}])

    def set_target_groups(self, job: str, groups: List[Dict[str, Any]]) -> None:
        text = json.dumps(groups)
        path = self.target_files[job]
        if path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(path)  # atomic: Prometheus never reads half a file

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
        return [t for t in self.api("targets", state="active")["activeTargets"] if t["scrapePool"] == job]

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
    """Substitute the dashboard's variables as Grafana would for one selected job (every namespace)."""
    return (expr.replace("$trainingjob", trainingjob).replace("$namespace", ".*")
            .replace("$__rate_interval", RATE_INTERVAL))


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
    if pending:
        # Name what the failing queries' metrics hold, so a failure says why.
        raw = {}
        for _, expr in pending:
            for metric in sorted(set(re.findall(r"volt_[a-z_]+", expr))):
                raw[metric] = [(s["metric"], s["value"][1]) for s in prometheus.query(metric)][:6]
        raise AssertionError(
            f"dashboard queries without data: {json.dumps({t: missing[t] for t, _ in pending}, indent=1)}\n"
            f"their metrics now: {json.dumps(raw, indent=1)[:6000]}"
        )
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


def volt_run_env(tmp_path: Path, job: str, metrics_port: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "trainer_image"), str(REPO / "operator")]),
        VOLT_METRICS_PORT=str(metrics_port),
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
        "--samples", "256", "--batch-size", "16", "--every-n-steps", "50",
        "--step-delay", "0.02",  # ~40 steps/s per rank: plenty for 1 s scrapes, light on a shared CPU
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
    metrics_port = free_port_run(2)  # ranks serve on the base port + local rank
    with open(log_path, "wb") as log:
        run = subprocess.Popen(
            volt_run_command(), env=volt_run_env(tmp_path, job, metrics_port), cwd=tmp_path,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        ports = [metrics_port, metrics_port + 1]
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
            assert labels["instance"] == f"127.0.0.1:{metrics_port + int(labels['rank'])}"
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


# --- 2. a TrainingJob run by the operator on the local control plane ----------------------


def _meta(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)


def pod_role_targets(pods: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Target groups as Prometheus' Kubernetes pod role builds them: one per declared container port."""
    groups = []
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            continue
        pod_labels = {"__meta_kubernetes_namespace": pod["metadata"]["namespace"],
                      "__meta_kubernetes_pod_name": pod["metadata"]["name"],
                      "__meta_kubernetes_pod_ip": ip,
                      "__meta_kubernetes_pod_phase": pod["status"].get("phase", "")}
        for key, value in (pod["metadata"].get("labels") or {}).items():
            pod_labels[f"__meta_kubernetes_pod_label_{_meta(key)}"] = value
            pod_labels[f"__meta_kubernetes_pod_labelpresent_{_meta(key)}"] = "true"
        for container in pod["spec"]["containers"]:
            for port in container.get("ports") or []:
                groups.append({
                    "targets": [f"{ip}:{port['containerPort']}"],
                    "labels": {**pod_labels,
                               "__meta_kubernetes_pod_container_name": container["name"],
                               "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                               "__meta_kubernetes_pod_container_port_number": str(port["containerPort"])},
                })
    return groups


def podmonitor_relabel_configs(podmonitor: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The relabeling the Prometheus Operator generates for a PodMonitor with one endpoint.

    Covers what our PodMonitor uses: a label selector (matchLabels, matchExpressions
    Exists/In), the operator's standard target labels (namespace, container, pod,
    job) and the endpoint's own relabelings.
    """
    meta, spec = podmonitor["metadata"], podmonitor["spec"]
    (endpoint,) = spec["podMetricsEndpoints"]
    relabel: List[Dict[str, Any]] = [
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)", "action": "drop"}
    ]
    for label, value in (spec["selector"].get("matchLabels") or {}).items():
        relabel.append({"source_labels": [f"__meta_kubernetes_pod_label_{_meta(label)}", f"__meta_kubernetes_pod_labelpresent_{_meta(label)}"],
                        "regex": f"({value});true", "action": "keep"})
    for expression in spec["selector"].get("matchExpressions") or []:
        label, op = expression["key"], expression["operator"]
        if op == "Exists":
            relabel.append({"source_labels": [f"__meta_kubernetes_pod_labelpresent_{_meta(label)}"], "regex": "true", "action": "keep"})
        elif op == "In":
            relabel.append({"source_labels": [f"__meta_kubernetes_pod_label_{_meta(label)}", f"__meta_kubernetes_pod_labelpresent_{_meta(label)}"],
                            "regex": f"({'|'.join(expression['values'])});true", "action": "keep"})
        else:
            raise AssertionError(f"matchExpressions operator {op} is not translated by this test")
    relabel += [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
    ]
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label", "regex": "regex",
            "action": "action", "replacement": "replacement", "separator": "separator"}
    for rule in endpoint.get("relabelings") or []:
        relabel.append({keys[key]: value for key, value in rule.items()})
    return relabel


def rendered_podmonitor() -> Dict[str, Any]:
    out = run_helm(
        helm_binary(), "template", "volt", str(CHART), "--api-versions", "monitoring.coreos.com/v1",
        "--set", "metrics.podMonitor.enabled=true", "--show-only", "templates/podmonitor.yaml",
    ).stdout
    (podmonitor,) = [doc for doc in yaml.safe_load_all(out) if doc]
    assert podmonitor["kind"] == "PodMonitor"
    return podmonitor


@pytest.mark.slow
@pytest.mark.docker
@pytest.mark.timeout(600)
def test_prometheus_scrapes_a_trainingjob_and_the_operator(real_kube: LocalCluster, namespace: str,
                                                           tmp_path: Path) -> None:
    """The job's four ranks run as containers of the trainer image on the real nodes; Prometheus,
    on the host, scrapes them at their pod IPs as it would in a cluster."""
    kube = real_kube
    podmonitor = rendered_podmonitor()
    operator = OperatorProcess(kube, [namespace], tmp_path, metrics_port=free_port()).start()
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    prometheus = Prometheus(
        workdir, jobs=["volt-operator", "podmonitor"], relabel={"podmonitor": podmonitor_relabel_configs(podmonitor)},
        metrics_path=podmonitor["spec"]["podMetricsEndpoints"][0].get("path", "/metrics"),
    )
    name = "metrics-e2e"
    try:
        prometheus.set_targets("volt-operator", [f"127.0.0.1:{operator.metrics_port}"], {})
        # As in a cluster, monitoring runs before the job: rate() over the operator's histograms
        # needs a sample from before the job's first Running.
        wait_until("Prometheus to scrape the operator", lambda: prometheus.query(
            "volt_operator_time_to_running_seconds_count == 0"), timeout=60)
        # Long enough to be scraped for a while; the test deletes it when done.
        pvc, job = example(args=["--samples", "65536", "--batch-size", "32", "--step-delay", "0.02"])
        job["metadata"]["name"] = name
        job["spec"]["trainer"]["maxEpochs"] = 100
        job["spec"]["checkpoint"]["everyNSteps"] = 20
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([pvc, job]))

        def list_pods() -> List[Dict[str, Any]]:
            return json.loads(kube.kubectl("get", "-n", namespace, "pods", "-o", "json").stdout)["items"]

        def all_ranks_up() -> bool:
            prometheus.set_target_groups("podmonitor", pod_role_targets(list_pods()))  # our stand-in for pod discovery
            status = job_status(kube, namespace, name)
            if status.get("phase") in ("Failed", "Succeeded"):
                raise AssertionError(f"job ended early: {status}\n{operator.logs()[-4000:]}")
            targets = prometheus.active_targets("podmonitor")
            return len(targets) == 4 and all(t["health"] == "up" for t in targets)

        wait_until("4 ranks discovered through the PodMonitor config and scraped", all_ranks_up, timeout=300, interval=1)

        pods = {pod["metadata"]["name"]: pod for pod in list_pods()}
        series = prometheus.query(f'volt_train_global_step{{trainingjob="{name}"}}')
        by_rank = {s["metric"]["rank"]: s["metric"] for s in series}
        assert set(by_rank) == {"0", "1", "2", "3"}, series
        for rank, labels in by_rank.items():
            node, local_rank = divmod(int(rank), 2)  # 2 processes per node, ranks node-major
            pod = pods[f"{name}-node-{node}"]
            port = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            assert labels["namespace"] == namespace and labels["pod"] == f"{name}-node-{node}"
            assert labels["node_rank"] == str(node)
            assert labels["instance"] == f"{pod['status']['podIP']}:{port[f'metrics-{local_rank}']}"
            assert labels["job"] == f"{podmonitor['metadata']['namespace']}/{podmonitor['metadata']['name']}"

        wait_until("the operator to report the job Running", lambda: [
            s for s in prometheus.query(f'volt_operator_trainingjob_phase{{trainingjob="{name}",namespace="{namespace}"}}')
            if s["metric"]["phase"] == "Running"
        ], timeout=60)

        checked = assert_dashboard_has_data(prometheus, name, skip=lambda expr: "volt_gpu_" in expr, timeout=180)
        assert {"Jobs by phase", "Restarts by reason", "Time to Running p90", "Checkpoint age"} <= set(checked)
    finally:
        kube.kubectl("delete", "-n", namespace, "trainingjob", name, "--wait=false", check=False)
        prometheus.stop()
        operator.stop()


# --- 0. static checks (no server) ------------------------------------------------------------


@pytest.mark.timeout(60)
def test_dashboard_queries_parse_and_use_documented_metrics(tmp_path: Path) -> None:
    """Every panel query is valid PromQL (promtool) and names only metrics docs/metrics.md documents."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make prometheus` installs Debian's prometheus package"
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{index}", "expr": grafana_render(expr, ".+")} for index, (_, expr) in enumerate(queries)
    ]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr

    documented = set(re.findall(r"`(volt_[a-z_]+)`", (REPO / "docs" / "metrics.md").read_text()))
    for title, expr in queries:
        for name in set(re.findall(r"\bvolt_[a-z_]+", expr)):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in documented or base in documented, f"panel {title!r} uses undocumented {name}"
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
