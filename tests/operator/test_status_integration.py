"""The status explains itself, on the real control plane and node agent: why the gang
waits (PodsReady and a Warning event) and why it failed (the rank's exception)."""
from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import pytest

from job_helpers import events, idle_job_manifest
from operator_process import (
    OperatorProcess, free_port, get_tj_rows, job_status, parse_table, queued_reconciles, wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

RAISE_ON_RANK = Path(__file__).resolve().parents[1] / "engine" / "ddp_scripts" / "raise_on_rank.py"
RAISE_AT_IMPORT = Path(__file__).resolve().parents[1] / "engine" / "ddp_scripts" / "raise_at_import.py"


def apply(kube: Any, namespace: str, name: str, **spec: Any) -> None:
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest(name, **spec))


def pods_ready(kube: Any, namespace: str, name: str) -> Any:
    return next((c for c in job_status(kube, namespace, name).get("conditions") or []
                 if c["type"] == "PodsReady"), None)


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
        seen = queued_reconciles(port)
        wait_until("three more resyncs", lambda: queued_reconciles(port) >= seen + 3, 60)
        assert len([e for e in events(kube, namespace, "huge") if e["reason"] == "Unschedulable"]) == 1
    finally:
        operator.stop()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_failing_ranks_exception_stays_in_last_failure_after_the_gang_restart(
        operator: OperatorProcess, namespace: str, tmp_path: Path) -> None:
    """Real volt-run and engine in the pod: attempt 0 raises KeyError('label') on rank 0,
    the failure policy restarts the gang, attempt 1 trains to the end."""
    kube = operator.kube
    line = next(i for i, text in enumerate(RAISE_ON_RANK.read_text().splitlines(), 1) if '{}["label"]' in text)
    # A checkpoint directory of its own: the node agent's pods share the host's disk, and another
    # run's checkpoints (another job uid) in the same place would be refused as a foreign run.
    name = f"keyerror-{secrets.token_hex(3)}"
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir(mode=0o777)
    ckpt_dir.chmod(0o777)  # the pods run as uid 1000
    apply(kube, namespace, name,
          command=["python", str(RAISE_ON_RANK), "--max-steps", "4", "--samples", "64", "--ckpt-dir", str(ckpt_dir)],
          trainer={"numNodes": 1, "devices": 1, "accelerator": "cpu", "maxSteps": 4},
          env=[{"name": "FAIL_RANK", "value": "0"}, {"name": "FAIL_STEP", "value": "1"},
               {"name": "FAIL_KEY_ERROR", "value": "1"}, {"name": "FAIL_ATTEMPT", "value": "0"}],
          failurePolicy={"maxRestarts": 1, "backoffSeconds": 0,
                         "rules": [{"action": "RestartGang", "onExitCodes": {"operator": "In", "values": [1]}}]})
    wait_until("Succeeded", lambda: job_status(kube, namespace, name).get("phase") in ("Succeeded", "Failed"),
               360)
    status = job_status(kube, namespace, name)
    assert status["phase"] == "Succeeded" and status["attempt"] == 1, [c["message"] for c in status["conditions"]]
    failure = status["lastFailure"]
    assert failure["attempt"] == 0 and failure["exitCode"] == 1
    assert "KeyError: 'label' at " in failure["message"], failure
    assert f"raise_on_rank.py:{line} in training_step (global rank 0)" in failure["message"], failure
    restart = next(e for e in events(kube, namespace, name) if e["reason"] == "GangRestart")
    assert "KeyError: 'label'" in restart["message"]


def test_a_script_that_raises_outside_the_trainer_fails_with_its_line(
        operator: OperatorProcess, namespace: str) -> None:
    """A plain script raises KeyError('label') at module level (no Trainer, no error file):
    the job fails with the same line, read by volt-run from the rank's traceback."""
    kube = operator.kube
    line = next(i for i, text in enumerate(RAISE_AT_IMPORT.read_text().splitlines(), 1)
                if 'RECORDS[1]["label"]' in text)
    name = f"import-error-{secrets.token_hex(3)}"
    apply(kube, namespace, name, command=["python", str(RAISE_AT_IMPORT)],
          trainer={"numNodes": 1, "devices": 1, "accelerator": "cpu"},
          env=[{"name": "FAIL_RANK", "value": "0"}])
    wait_until("Failed", lambda: job_status(kube, namespace, name).get("phase") in ("Succeeded", "Failed"), 240)
    status = job_status(kube, namespace, name)
    assert status["phase"] == "Failed", status
    failure = status["lastFailure"]
    assert failure["reason"] == "UserError" and failure["exitCode"] == 1, failure
    assert failure["message"].endswith(
        f"KeyError: 'label' at {RAISE_AT_IMPORT}:{line} in <module> (global rank 0)"), failure


# Rank 0's /progress as the engine serves it, stepping twice a second towards max_steps=10000.
STEPPING_RANK = ["python", "-c", """
import http.server, json, os, time
start = time.time()
class Progress(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        step = int((time.time() - start) * 2)
        body = json.dumps({"epoch": 0, "step": step, "max_steps": 10000, "progress": step / 10000,
                           "attempt": int(os.environ["VOLT_ATTEMPT"]), "last_step_time": start + step / 2,
                           "checkpoint": {"path": "/checkpoints/eta/last.ckpt", "step": 0}}).encode()
        self.send_response(200 if self.path == "/progress" else 404)
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("", int(os.environ["VOLT_METRICS_PORT"])), Progress).serve_forever()
"""]


def test_kubectl_get_shows_progress_and_eta_and_a_silent_rank_is_a_condition(operator: OperatorProcess,
                                                                             namespace: str) -> None:
    kube = operator.kube
    apply(kube, namespace, "eta", command=STEPPING_RANK)
    apply(kube, namespace, "silent")  # rank 0 serves no progress
    try:
        row = wait_until("PROGRESS and ETA in kubectl get", lambda: next(
            (r for r in get_tj_rows(kube, namespace, "eta")
             if r["PHASE"] == "Running" and r.get("ETA")), None), 120)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; rows {get_tj_rows(kube, namespace, 'eta')}; "
                             f"status {job_status(kube, namespace, 'eta')}") from None
    assert row["PROGRESS"].endswith("%"), row
    assert re.fullmatch(r"(\d+h\d\dm|\d+m\d\ds)", row["ETA"]), row  # ~10000 steps at 2/s: over an hour
    training = job_status(kube, namespace, "eta")["training"]
    assert training["stepsPerSecond"] == pytest.approx(2.0, rel=0.3)
    wide = parse_table(kube.kubectl("get", "-n", namespace, "tj", "eta", "-o", "wide").stdout)[0]
    assert wide["CHECKPOINT"] == "/checkpoints/eta/last.ckpt" and wide["REASON"] == "AllNodesReady", wide
    polled = next(c for c in job_status(kube, namespace, "eta")["conditions"] if c["type"] == "ProgressPolled")
    assert polled["status"] == "True"
    silent = wait_until("ProgressPolled=False", lambda: next(
        (c for c in job_status(kube, namespace, "silent").get("conditions") or []
         if c["type"] == "ProgressPolled" and c["status"] == "False"), None), 120)
    assert silent["reason"] == "ProgressUnavailable"
    assert "cannot read silent-node-0's progress" in silent["message"] and "/progress" in silent["message"]
