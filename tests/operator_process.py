"""Run the real operator (`python -m volt_operator`) against the test cluster.

Shared by tests/operator and tests/e2e (pytest puts tests/ on sys.path because
tests/conftest.py lives there). The operator runs as a subprocess exactly as
a user runs it, namespaced and standalone, and its log is kept for failures.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from kubernetes import config as kube_config
from kubernetes.client import Configuration

from helpers import free_port, wait_for  # noqa: F401 - free_port: the operator tests import it from here

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "crds" / "trainingjob.yaml"


def wait_until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """``helpers.wait_for`` in the operator tests' argument order."""
    return wait_for(check, timeout, what, every)


def apply_crd(kube: Any) -> None:
    """Install (or update) the committed CRD and wait until it is served."""
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))

    def established() -> bool:
        crd = get_json(kube, "crd", "trainingjobs.volt.dev")
        return any(c["type"] == "Established" and c["status"] == "True"
                   for c in (crd.get("status") or {}).get("conditions") or [])

    wait_until("the CRD to be Established", established, 60)
    # Discovery (short name tj) follows a moment after Established.
    wait_until("`kubectl get tj` to know the resource", lambda: kube.kubectl(
        "get", "tj", "-A", check=False).returncode == 0, 60)


def admin_configuration(kube: Any) -> Configuration:
    """A kubernetes client configuration for the local cluster's admin kubeconfig (what
    the operator's own classes take when a test runs them in-process)."""
    configuration = Configuration()
    kube_config.load_kube_config(config_file=str(kube.kubeconfig), client_configuration=configuration)
    return configuration


class OperatorProcess:
    """``python -m volt_operator --standalone --namespace NS`` as a subprocess."""

    def __init__(
        self,
        kube: Any,
        namespaces: List[str],
        log_dir: Path,
        metrics_port: int = -1,
        extra_args: Optional[List[str]] = None,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.kube = kube
        self.namespaces = namespaces
        self.health_port = free_port()
        self.metrics_port = metrics_port
        self.log_path = Path(log_dir) / "operator.log"
        self.extra_args = extra_args or []
        self.extra_env = env or {}
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 60.0) -> "OperatorProcess":
        argv = [sys.executable, "-m", "volt_operator", "--standalone",
                "--health-port", str(self.health_port),
                "--metrics-port", str(self.metrics_port), "--progress-interval", "2",
                *self.extra_args]
        for ns in self.namespaces:
            argv += ["--namespace", ns]
        env = self.kube.env()
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO / "operator"), str(REPO / "trainer_image"), env.get("PYTHONPATH", "")]
        )
        env.setdefault("VOLT_OPERATOR_RESYNC_SECONDS", "2")
        env.update(self.extra_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        wait_until("the operator's liveness endpoint", self._healthy, timeout)
        return self

    @contextmanager
    def running(self) -> Iterator["OperatorProcess"]:
        """Started for the block, stopped after it; the tail of its log is printed then
        (pytest shows it when the test failed). What the `operator` fixtures yield."""
        self.start()
        try:
            yield self
        finally:
            self.stop()
            print(self.logs()[-6000:])

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def parse_table(text: str) -> List[Dict[str, str]]:
    """kubectl's table output as dicts, cut at the header's column offsets
    (empty cells, such as LOSS before the first poll, stay empty)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [len(line) + 1])]
        rows.append(dict(zip(names, cells)))
    return rows


def get_tj_rows(kube: Any, namespace: str, *names: str) -> List[Dict[str, str]]:
    """`kubectl get tj [names]` as a user sees it, parsed."""
    out = kube.kubectl("get", "-n", namespace, "tj", *names, check=False)
    return parse_table(out.stdout) if out.returncode == 0 else []


def get_json(kube: Any, *args: str) -> Dict[str, Any]:
    return json.loads(kube.kubectl("get", *args, "-o", "json").stdout)


def job_status(kube: Any, namespace: str, name: str) -> Dict[str, Any]:
    return get_json(kube, "-n", namespace, "trainingjob", name).get("status") or {}


def queued_reconciles(port: int) -> float:
    """How many reconciles the operator's work queue has finished (its own metric, served on
    ``port``): the sweeps' looks, pod and Workload events, finished progress reads."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r'^volt_operator_reconcile_duration_seconds_count\{handler="queued"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0
