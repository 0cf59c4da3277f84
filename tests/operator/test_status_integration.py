"""The status explains itself, on the real control plane and node agent: why the gang
waits (PodsReady and a Warning event) and why it failed (the rank's exception)."""
from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from operator_process import OperatorProcess, free_port, get_json, job_status, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

IDLE = ["python", "-c", "import time; time.sleep(3600)"]
RAISE_ON_RANK = Path(__file__).resolve().parents[1] / "engine" / "ddp_scripts" / "raise_on_rank.py"


def apply(kube: Any, namespace: str, name: str, **spec: Any) -> None:
    body: Dict[str, Any] = {
        "image": "volt-trainer:test",
        "command": IDLE,
        "trainer": {"numNodes": 2, "devices": 1, "accelerator": "cpu", "maxEpochs": 1},
        "terminationGracePeriodSeconds": 5,
    }
    body.update(spec)
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}))


def events(kube: Any, namespace: str, name: str) -> List[Dict[str, Any]]:
    return get_json(kube, "-n", namespace, "events", "--field-selector", f"involvedObject.name={name}")["items"]


def pods_ready(kube: Any, namespace: str, name: str) -> Any:
    return next((c for c in job_status(kube, namespace, name).get("conditions") or []
                 if c["type"] == "PodsReady"), None)


def resyncs(port: int) -> float:
    """How many resync reconciles the operator has finished (its own metric)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    match = re.search(r'^volt_operator_reconcile_duration_seconds_count\{handler="resync"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_an_unschedulable_gang_says_why_in_a_condition_and_one_warning(crd: Any, namespace: str,
                                                                       tmp_path: Path) -> None:
    kube = crd
    port = free_port()
    operator = OperatorProcess(kube, [namespace], tmp_path, metrics_port=port).start()
    try:
        apply(kube, namespace, "huge", resources={"requests": {"cpu": "500"}})
        ready = wait_until("PodsReady=False Unschedulable", lambda: (
            (c := pods_ready(kube, namespace, "huge")) and c["reason"] == "Unschedulable" and c), 90)
        assert ready["status"] == "False"
        assert "huge-node-0 (Unschedulable: 0/" in ready["message"] and "Insufficient cpu" in ready["message"]
        running = next(c for c in job_status(kube, namespace, "huge")["conditions"] if c["type"] == "Running")
        assert running["status"] == "False" and "Insufficient cpu" in running["message"]
        warning = wait_until("the Unschedulable event", lambda: [
            e for e in events(kube, namespace, "huge") if e["reason"] == "Unschedulable"], 30)
        assert warning[0]["type"] == "Warning" and "Insufficient cpu" in warning[0]["message"]
        # The operator keeps looking at the job (a resync every 2 s) but says it once.
        seen = resyncs(port)
        wait_until("three more resyncs", lambda: resyncs(port) >= seen + 3, 60)
        assert len([e for e in events(kube, namespace, "huge") if e["reason"] == "Unschedulable"]) == 1
    finally:
        operator.stop()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_failing_ranks_exception_stays_in_last_failure_after_the_gang_restart(
        operator: OperatorProcess, namespace: str) -> None:
    """Real volt-run and engine in the pod: attempt 0 raises KeyError('label') on rank 0,
    the failure policy restarts the gang, attempt 1 trains to the end."""
    kube = operator.kube
    line = next(i for i, text in enumerate(RAISE_ON_RANK.read_text().splitlines(), 1) if '{}["label"]' in text)
    apply(kube, namespace, "keyerror",
          command=["python", str(RAISE_ON_RANK), "--max-steps", "4", "--samples", "64"],
          trainer={"numNodes": 1, "devices": 1, "accelerator": "cpu", "maxSteps": 4},
          env=[{"name": "FAIL_RANK", "value": "0"}, {"name": "FAIL_STEP", "value": "1"},
               {"name": "FAIL_KEY_ERROR", "value": "1"}, {"name": "FAIL_ATTEMPT", "value": "0"}],
          failurePolicy={"maxRestarts": 1, "backoffSeconds": 0,
                         "rules": [{"action": "RestartGang", "onExitCodes": {"operator": "In", "values": [1]}}]})
    wait_until("Succeeded", lambda: job_status(kube, namespace, "keyerror").get("phase") in ("Succeeded", "Failed"),
               360)
    status = job_status(kube, namespace, "keyerror")
    assert status["phase"] == "Succeeded" and status["attempt"] == 1, status
    failure = status["lastFailure"]
    assert failure["attempt"] == 0 and failure["exitCode"] == 1
    assert "KeyError: 'label' at " in failure["message"], failure
    assert f"raise_on_rank.py:{line} in training_step (global rank 0)" in failure["message"], failure
    restart = next(e for e in events(kube, namespace, "keyerror") if e["reason"] == "GangRestart")
    assert "KeyError: 'label'" in restart["message"]
