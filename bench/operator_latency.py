"""Operator latency: apply -> all pods Running, and apply -> first training step.

    python bench/operator_latency.py [--jobs 1,20] [--out bench/results/operator_latency.json]

Runs against the local control plane (etcd, kube-apiserver, controller
manager, scheduler, the node agent) that the tests use, with the real
operator as a subprocess and the real engine in the pods. For each batch
size N it applies N TrainingJobs at once (--nodes nodes x 1 CPU process each,
training `volt.examples.synthetic`) and measures, per job:

  * running_s:    apply -> every node pod of the job reports phase Running
                  (pods watched directly, not through the operator's status);
  * first_step_s: apply -> rank 0's /progress reports step >= 1 (polled
                  directly on the pod every 0.2 s);
  * status_running_s: apply -> the TrainingJob's status.phase is Running.

It reports medians (and max) per batch. The baseline printed beside it is the
same cluster creating one bare pod (apply -> Running) with no operator
involved, so the operator's own share is visible.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "operator"), str(REPO / "trainer_image"), str(REPO / "tests")]

from operator_process import OperatorProcess, apply_crd  # noqa: E402
from volt_operator.testing.cluster import LocalCluster  # noqa: E402

POLL_S = 0.2


def job_manifest(name: str, steps: int, nodes: int, ckpt_dir: str) -> Dict[str, Any]:
    return {
        "apiVersion": "volt.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "image": "volt-trainer:bench",
            "command": ["python", "-m", "volt.examples.synthetic"],
            # Fresh training in a directory of its own: no volume, nothing to resume.
            "args": ["--samples", "2048", "--batch-size", "16", "--ckpt-dir", ckpt_dir],
            "resume": "Never",
            "trainer": {"numNodes": nodes, "devices": 1, "accelerator": "cpu", "maxSteps": steps},
            "terminationGracePeriodSeconds": 5,
            "cleanPodPolicy": "Running",
        },
    }


def bare_pod(name: str) -> Dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": "volt-trainer:bench",
                            "command": ["python", "-c", "import time; time.sleep(30)"]}],
        },
    }


class Observer(threading.Thread):
    """Polls pods, statuses and rank 0 /progress; records first times per job."""

    def __init__(self, kube: LocalCluster, namespace: str, names: List[str], nodes: int,
                 start: float, timeout: float) -> None:
        super().__init__(daemon=True)
        self.kube, self.namespace, self.names, self.nodes = kube, namespace, names, nodes
        self.start_time, self.timeout = start, timeout
        self.running: Dict[str, float] = {}
        self.status_running: Dict[str, float] = {}
        self.first_step: Dict[str, float] = {}
        self.phases: Dict[str, str] = {}
        self.failures: Dict[str, str] = {}

    def _get(self, path: str) -> Dict[str, Any]:
        return self.kube.request("GET", path)

    def run(self) -> None:
        deadline = self.start_time + self.timeout
        while time.monotonic() < deadline and len(self.first_step) < len(self.names):
            now = time.monotonic() - self.start_time
            pods = self._get(f"/api/v1/namespaces/{self.namespace}/pods")["items"]
            by_job: Dict[str, List[Dict[str, Any]]] = {}
            for pod in pods:
                job = (pod["metadata"].get("labels") or {}).get("volt.dev/job")
                if job:
                    by_job.setdefault(job, []).append(pod)
            jobs = self._get(f"/apis/volt.dev/v1alpha1/namespaces/{self.namespace}/trainingjobs")
            for job in jobs["items"]:
                name = job["metadata"]["name"]
                self.phases[name] = (job.get("status") or {}).get("phase") or ""
                failure = (job.get("status") or {}).get("lastFailure")
                if failure:
                    self.failures[name] = failure.get("message", "")
                if self.phases[name] == "Running":
                    self.status_running.setdefault(name, now)
            for name in self.names:
                group = by_job.get(name, [])
                if (name not in self.running and len(group) == self.nodes
                        and all(p.get("status", {}).get("phase") == "Running" for p in group)):
                    self.running[name] = now
                if name in self.first_step:
                    continue
                rank0 = next((p for p in group if p["metadata"]["labels"].get(
                    "volt.dev/node-rank") == "0"), None)
                ip = rank0 and rank0.get("status", {}).get("podIP")
                if ip and self._step(ip) >= 1:
                    self.first_step[name] = time.monotonic() - self.start_time
            time.sleep(POLL_S)

    @staticmethod
    def _step(ip: str) -> int:
        try:
            with urllib.request.urlopen(f"http://{ip}:9090/progress", timeout=0.5) as resp:
                return int(json.loads(resp.read()).get("step") or 0)
        except (OSError, ValueError):
            return 0


def summarize(values: Dict[str, float], expected: int) -> Dict[str, Optional[float]]:
    data = sorted(values.values())
    return {
        "median_s": round(statistics.median(data), 3) if data else None,
        "max_s": round(data[-1], 3) if data else None,
        "completed": len(data),
        "expected": expected,
    }


def new_namespace(kube: LocalCluster, prefix: str, timeout: float = 60) -> str:
    """A fresh namespace whose default service account exists (pods need it)."""
    name = f"{prefix}-{int(time.time() * 1000) % 10**8}"
    kube.kubectl("create", "namespace", name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kube.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            return name
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
        time.sleep(0.5)
    raise RuntimeError(f"no default service account in namespace {name} after {timeout}s")


def run_batch(kube: LocalCluster, jobs: int, nodes: int, steps: int,
              timeout: float) -> Dict[str, Any]:
    namespace = new_namespace(kube, f"bench-{jobs}")
    names = [f"lat-{i}" for i in range(jobs)]
    with tempfile.TemporaryDirectory(prefix="volt-bench-") as workdir:
        operator = OperatorProcess(kube, [namespace], Path(workdir)).start()
        try:
            docs = yaml.safe_dump_all(
                [job_manifest(n, steps, nodes, f"{workdir}/ckpt/{n}") for n in names]
            )
            start = time.monotonic()
            observer = Observer(kube, namespace, names, nodes, start, timeout)
            observer.start()
            kube.kubectl("apply", "-n", namespace, "-f", "-", input=docs, timeout=120)
            observer.join()
            failed_logs = ""
            if observer.failures:
                pod = next(iter(observer.failures.values())).split(" ")[0]
                failed_logs = kube.kubectl("logs", "-n", namespace, pod, check=False).stdout[-2000:]
        finally:
            operator.stop()
            # Pods checkpoint on SIGTERM into workdir: let them finish before it goes.
            kube.kubectl("delete", "namespace", namespace, "--wait=true", check=False,
                         timeout=300)
    return {
        "jobs": jobs,
        "nodes_per_job": nodes,
        "pods_running": summarize(observer.running, jobs),
        "status_running": summarize(observer.status_running, jobs),
        "first_step": summarize(observer.first_step, jobs),
        "phases_at_end": sorted(observer.phases.values()),
        "failures": sorted(set(observer.failures.values()))[:5],
        "first_failed_pod_log_tail": failed_logs,
    }


def baseline_pod(kube: LocalCluster, timeout: float = 120) -> Optional[float]:
    namespace = new_namespace(kube, "bench-base")
    start = time.monotonic()
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(bare_pod("bare")))
    result = None
    while time.monotonic() - start < timeout:
        pod = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/bare")
        if pod.get("status", {}).get("phase") == "Running":
            result = round(time.monotonic() - start, 3)
            break
        time.sleep(POLL_S)
    kube.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
    return result


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1,20", help="comma-separated batch sizes")
    parser.add_argument("--nodes", type=int, default=2, help="numNodes of each job")
    parser.add_argument("--steps", type=int, default=300,
                        help="maxSteps of each job (long enough to be seen training)")
    parser.add_argument("--timeout", type=float, default=600, help="per batch, seconds")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "operator_latency.json"))
    args = parser.parse_args(argv)
    batches = [int(x) for x in args.jobs.split(",") if x.strip()]
    if not batches or min(batches) < 1:
        parser.error(f"--jobs must list positive integers, got {args.jobs!r}")
    if args.nodes < 1:
        parser.error(f"--nodes must be >= 1, got {args.nodes}")

    with tempfile.TemporaryDirectory(prefix="volt-bench-kube-") as workdir:
        kube = LocalCluster(workdir, nodes=2)
        kube.up()
        try:
            apply_crd(kube)
            results = {
                "baseline_bare_pod_running_s": baseline_pod(kube),
                "batches": [run_batch(kube, n, args.nodes, args.steps, args.timeout)
                            for n in batches],
            }
        finally:
            kube.down()
    results["note"] = (f"medians over the jobs of one batch applied at once; {args.nodes} "
                       "node(s) x 1 CPU process per job; local control plane and node agent "
                       "on this machine")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
