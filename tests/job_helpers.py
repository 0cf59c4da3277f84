"""The example TrainingJob on the test cluster: apply it, watch it, explain it.

Shared by tests/e2e and tests/chaos (pytest puts tests/ on sys.path because
tests/conftest.py lives there).
"""
from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import time
import urllib.error
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
import yaml

from operator_process import OperatorProcess, get_json, get_tj_rows, job_status
from volt_operator.testing.cluster import LocalCluster, kube_bin_dir, wait_for

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "trainingjob.yaml"
# What rank 0 prints when fit restores a checkpoint (volt/trainer/fit_loop.py):
# groups are the checkpoint's path, its epoch and its global step.
RESUMED = re.compile(r"resumed from checkpoint (\S+) at epoch (\d+), global step (\d+)")


def example(**spec: Any) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The example's PVC and TrainingJob, with ``spec`` keys replaced."""
    pvc, job = list(yaml.safe_load_all(EXAMPLE.read_text()))
    job["spec"].update(spec)
    return pvc, job


# A job whose "training" idles: for tests about the operator, not the engine.
IDLE = ["python", "-c", "import time; time.sleep(3600)"]


def idle_job_manifest(name: str, **spec: Any) -> str:
    """A 2-node CPU TrainingJob running ``IDLE`` (5 s grace), ``spec`` keys replaced, as YAML."""
    body: Dict[str, Any] = {
        "image": "volt-trainer:test",
        "command": IDLE,
        "trainer": {"numNodes": 2, "devices": 1, "accelerator": "cpu", "maxEpochs": 1},
        "terminationGracePeriodSeconds": 5,
    }
    body.update(spec)
    return yaml.safe_dump(
        {"apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body})


def apply(kube: Any, namespace: str, *docs: Dict[str, Any]) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))


def watch_table(kube: Any, namespace: str, name: str, until: Tuple[str, ...],
                timeout: float) -> List[Dict[str, str]]:
    """Rows of `kubectl get tj <name>` every second until PHASE is in ``until``."""
    rows: List[Dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in get_tj_rows(kube, namespace, name):
            rows.append(row)
            if row["PHASE"] in until:
                return rows
        time.sleep(1.0)
    raise AssertionError(f"{name} did not reach {until} in {timeout:.0f}s; rows: {rows[-5:]}")


@contextlib.contextmanager
def recorded_history(kube: Any, namespace: str, name: str, path: Path) -> Iterator[List[Dict[str, Any]]]:
    """Every version of TrainingJob ``name`` the API server sends a watch while the block runs.

    Unlike polling `kubectl get`, the watch misses no status write, however fast
    the job or slow the machine. The list is filled when the block ends.
    """
    with kubectl_watch(kube, ["get", "trainingjob", name, "-n", namespace], path) as history:
        yield history


@contextlib.contextmanager
def kubectl_watch(kube: Any, args: List[str], path: Path) -> Iterator[List[Dict[str, Any]]]:
    """What `kubectl <args> --watch -o json` prints while the block runs, one dict per object or
    event (filled when the block ends; the raw output stays in ``path``)."""
    history: List[Dict[str, Any]] = []
    with open(path, "wb") as out:
        watch = subprocess.Popen(
            [str(kube_bin_dir() / "kubectl"), "--kubeconfig", str(kube.kubeconfig), *args, "--watch", "-o", "json"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        yield history
    finally:
        watch.terminate()
        watch.wait(10)
    text, decoder, at = path.read_text(), json.JSONDecoder(), 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        obj, at = decoder.raw_decode(text, at)
        history.append(obj)


def events(kube: Any, namespace: str, name: str) -> List[Dict[str, Any]]:
    """The events about object ``name`` (the TrainingJob, or a pod)."""
    return get_json(kube, "-n", namespace, "events",
                    "--field-selector", f"involvedObject.name={name}")["items"]


def diagnosis(kube: Any, namespace: str, name: str) -> str:
    """What a user would look at after a surprise: status, events, each pod's container
    states, events (a pull error, a failed mount) and logs."""
    parts = [yaml.safe_dump({"status": job_status(kube, namespace, name)})]
    parts += [f"event {e['reason']}: {e.get('message', '')}" for e in events(kube, namespace, name)]
    pods = get_json(kube, "-n", namespace, "pods", "-l", f"volt.dev/job={name}")["items"]
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        parts.append(f"--- {pod_name} on {pod['spec'].get('nodeName')}: "
                     f"{json.dumps(pod.get('status', {}).get('containerStatuses'))}")
        parts += [f"event {e['reason']}: {e.get('message', '')}" for e in events(kube, namespace, pod_name)]
        for previous in (True, False):
            out = kube.kubectl("logs", "-n", namespace, pod_name, *(["--previous"] if previous else []),
                               check=False)
            if out.returncode == 0:
                parts.append(f"--- {pod_name} logs{' (previous)' if previous else ''} ---\n"
                             f"{out.stdout[-4000:]}")
    return "\n".join(parts)


@pytest.fixture
def explain(operator: OperatorProcess, namespace: str) -> Iterator[List[str]]:
    """Name jobs in the list; if the test fails, print their diagnosis."""
    jobs: List[str] = []
    yield jobs
    for name in jobs:
        try:
            print(f"===== diagnosis of {name} =====\n{diagnosis(operator.kube, namespace, name)}")
        except Exception as err:  # the cluster may be half gone; the test's own error matters
            print(f"no diagnosis for {name}: {err}")


def volume_dir(kube: Any, namespace: str, claim: str) -> Path:
    """The host directory behind PVC ``claim`` (the provisioner's hostPath or local PV)."""
    pvc = get_json(kube, "-n", namespace, "pvc", claim)
    pv = get_json(kube, "pv", pvc["spec"]["volumeName"])
    source = pv["spec"].get("hostPath") or pv["spec"].get("local")
    return Path(source["path"])


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{slug or 't'}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def fresh_namespace(kube: LocalCluster, test_name: str) -> Iterator[str]:
    """A new namespace named after ``test_name`` whose `default` service account exists; deleted afterwards."""
    name = _namespace_name(test_name)
    kube.kubectl("create", "namespace", name)

    def default_sa_exists() -> bool:
        try:
            kube.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    wait_for(default_sa_exists, 60, f"service account default in namespace {name}")
    try:
        yield name
    finally:
        # The namespace controller finishes the deletion in the background.
        kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)
