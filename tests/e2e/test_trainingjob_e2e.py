"""End to end: the example TrainingJob trains with DDP across pods on the node agent.

kubectl as a user, the real operator, the real engine (2 nodes x 2 gloo
processes): success with progress in `kubectl get tj`, checkpoints on the
volume, a gang restart that resumes from the checkpoint, and a user error.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Optional

import pytest

from job_helpers import apply, events as _events, example, explain, recorded_history, watch_table  # noqa: F401
from job_helpers import volume_dir as _volume_dir
from operator_process import OperatorProcess, get_json, job_status, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

RESUMED = re.compile(r"resumed from checkpoint (\S+) at epoch (\d+), global step (\d+)")


@pytest.mark.timeout(600)
def test_example_trains_to_success(operator: OperatorProcess, namespace: str,
                                   explain: List[str], tmp_path: Path) -> None:
    kube = operator.kube
    explain.append("synthetic")
    pvc, job = example()
    # 128 steps of >= 0.1 s: the run lasts several of the operator's 2 s progress polls
    # on any machine, so the status must show the step moving while Running.
    job["spec"]["args"] = [*job["spec"]["args"], "--step-delay", "0.1"]
    apply(kube, namespace, pvc, job)
    with recorded_history(kube, namespace, "synthetic", tmp_path / "watch.json") as history:
        rows = watch_table(kube, namespace, "synthetic", ("Succeeded", "Failed"), 480)
        status = job_status(kube, namespace, "synthetic")
    assert status["phase"] == "Succeeded", (status, rows[-3:])

    # While it ran, the status (what `kubectl get tj` shows) was Running with the step moving.
    running = [h["status"] for h in history if (h.get("status") or {}).get("phase") == "Running"]
    assert running, [h.get("status") for h in history]
    training = [st.get("training") or {} for st in running]
    steps = {t["step"] for t in training if isinstance(t.get("step"), int)}
    assert len(steps) >= 2, f"the step never moved while Running: {training}"
    assert any(isinstance(t.get("epoch"), int) for t in training) and any(t.get("loss") for t in training)
    assert any(st.get("readyNodes") == "2/2" for st in running), running
    assert status["training"]["step"] > 0 and status["restarts"] == 0
    assert status["completionTime"] and status["startTime"]

    # Checkpoints are on the volume, in the job's directory.
    assert status["checkpoint"]["path"].startswith("/checkpoints/synthetic/")
    volume = _volume_dir(kube, namespace, "volt-checkpoints")
    written = sorted(p.name for p in (volume / "synthetic").rglob("*.ckpt"))
    assert written, (f"no checkpoint under {volume}/synthetic; status {status['checkpoint']}; "
                     f"volume holds {sorted(str(p) for p in volume.rglob('*'))}")
    reasons = {e["reason"] for e in _events(kube, namespace, "synthetic")}
    assert {"Created", "Running", "Succeeded"} <= reasons


@pytest.mark.timeout(600)
def test_killed_pod_restarts_the_gang_which_resumes(operator: OperatorProcess, namespace: str,
                                                   explain: List[str]) -> None:
    kube = operator.kube
    explain.append("synthetic")
    # >= 0.05 s per step, 384 steps: the run outlasts the wait for its first checkpoints on any machine.
    pvc, job = example(args=["--samples", "16384", "--batch-size", "32", "--step-delay", "0.05"],
                       failurePolicy={"maxRestarts": 2, "backoffSeconds": 1},
                       cleanPodPolicy="None")  # keep every pod's logs for the diagnosis
    job["spec"]["trainer"]["maxEpochs"] = 3
    apply(kube, namespace, pvc, job)

    def checkpointed() -> Optional[int]:
        st = job_status(kube, namespace, "synthetic")
        step = (st.get("checkpoint") or {}).get("step") or 0
        return step if st.get("phase") == "Running" and step >= 20 else None

    saved_step = wait_until("a checkpoint while Running", checkpointed, 300, every=1.0)
    kube.kubectl("delete", "-n", namespace, "pod", "synthetic-node-1", "--wait=false")
    wait_until("a gang restart", lambda: job_status(kube, namespace, "synthetic")
               .get("restarts", 0) >= 1, 120)
    rows = watch_table(kube, namespace, "synthetic", ("Succeeded", "Failed"), 420)
    status = job_status(kube, namespace, "synthetic")
    assert status["phase"] == "Succeeded", (status, rows[-3:])
    restarts = [e["message"] for e in _events(kube, namespace, "synthetic")
                if e["reason"] == "GangRestart"]
    assert status["restarts"] == 1 and status["attempt"] == 1, (restarts, status)
    failure = status["lastFailure"]
    assert failure["pod"] == "synthetic-node-1" and failure["rank"] == 1
    # A deleted pod restarts for free: it checkpointed (75), or the deletion stopped it (PodDeleted).
    expected_counted = 0 if failure["reason"] in ("Checkpointed", "PodDeleted", "Evicted", "Preempted") else 1
    assert status["restartsCounted"] == expected_counted, failure

    pods = get_json(kube, "-n", namespace, "pods", "-l", "volt.dev/job=synthetic")["items"]
    assert {p["metadata"]["labels"]["volt.dev/attempt"] for p in pods} == {"1"}
    reasons = [e["reason"] for e in _events(kube, namespace, "synthetic")]
    assert "GangRestart" in reasons and "CheckpointResumed" in reasons

    # The new gang continued from the checkpoint: global step did not restart at 0.
    logs = kube.kubectl("logs", "-n", namespace, "synthetic-node-0").stdout
    logs += kube.kubectl("logs", "-n", namespace, "synthetic-node-0", check=False).stderr
    match = RESUMED.search(logs)
    assert match, f"rank 0 of attempt 1 did not resume from a checkpoint:\n{logs[-3000:]}"
    assert int(match.group(3)) >= saved_step
    assert match.group(1).startswith("/checkpoints/synthetic/")


@pytest.mark.timeout(300)
def test_user_error_fails_fast_naming_rank_and_exit_code(operator: OperatorProcess, namespace: str,
                                                        explain: List[str]) -> None:
    kube = operator.kube
    explain.append("crashy")
    crash = ("import os, time\n"
             "if os.environ['NODE_RANK'] == '1':\n"
             "    time.sleep(2)\n"
             "    raise ValueError('bad hyperparameter in rank 1')\n"
             "time.sleep(600)\n")
    pvc, job = example(command=["python", "-c", crash], args=[])
    job["metadata"]["name"] = "crashy"
    apply(kube, namespace, pvc, job)
    watch_table(kube, namespace, "crashy", ("Failed", "Succeeded"), 240)
    status = job_status(kube, namespace, "crashy")
    assert status["phase"] == "Failed"
    failure = status["lastFailure"]
    assert failure["rank"] == 1 and failure["pod"] == "crashy-node-1"
    assert failure["exitCode"] == 1 and failure["reason"] == "UserError"
    assert status["restarts"] == 0
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "rank 1" in failed["message"]
    # cleanPodPolicy Running: nothing keeps running, the failed pod is kept for its logs.
    # Rank 0 either was still running when the job failed (the operator deletes it) or
    # had already stopped on its own: volt-run ends a node whose peer failed (exit 76).
    def rank0_gone_or_stopped() -> bool:
        out = kube.kubectl("get", "-n", namespace, "pod", "crashy-node-0", "-o", "json", check=False)
        if out.returncode != 0:
            return True
        state = json.loads(out.stdout)["status"]["containerStatuses"][0]["state"]
        return state.get("terminated", {}).get("exitCode") == 76

    wait_until("rank 0 cleaned up or stopped for its lost peer", rank0_gone_or_stopped, 90)
    assert kube.kubectl("get", "-n", namespace, "pod", "crashy-node-1").returncode == 0
