"""End to end: the example TrainingJob trains with DDP across real nodes.

kubectl as a user, the real operator, the real engine in the trainer image (2 nodes x 2
gloo processes), run by kubelet + containerd as the image's non-root user: success
with progress in `kubectl get tj`, checkpoints on the volume, a gang restart that
resumes from the checkpoint, and a user error that names its rank through the
container's termination message. The cluster is the session's `real_kube`
(tests/e2e/conftest.py); the `namespace` and `operator` fixtures are real_nodes.py's.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, List, Optional

import pytest

from job_helpers import RESUMED, apply, events, explain, recorded_history, volume_dir  # noqa: F401 (explain: fixture)
from operator_process import OperatorProcess, get_json, job_status, wait_until
from real_nodes import example, namespace, operator, pods, wait_phase  # noqa: F401 (fixtures)
from volt_operator.testing.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow]


@pytest.mark.timeout(900)
def test_example_trains_to_success(real_kube: LocalCluster, operator: OperatorProcess, namespace: str,
                                   explain: List[str], tmp_path: Path) -> None:
    """The pods find each other through CoreDNS; the status shows the step moving while
    Running; checkpoints land on the PVC written as uid 1000; exec and logs go through the kubelet."""
    kube = real_kube
    explain.append("synthetic")
    pvc, job = example()
    # 128 steps of >= 0.1 s: the run lasts several of the operator's 2 s progress polls
    # on any machine, so the status must show the step moving while Running.
    job["spec"]["args"] = [*job["spec"]["args"], "--step-delay", "0.1"]
    started = time.monotonic()
    apply(kube, namespace, pvc, job)  # first: `kubectl get --watch` of a job that does not exist fails
    with recorded_history(kube, namespace, "synthetic", tmp_path / "watch.json") as history:
        def all_running() -> bool:
            found = pods(kube, namespace, "synthetic")
            return len(found) == 2 and all(p["status"].get("phase") == "Running" for p in found)

        wait_until("both pods Running", all_running, 300, every=0.5)
        print(f"apply -> 2 pods Running: {time.monotonic() - started:.1f}s")
        placed = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in pods(kube, namespace, "synthetic")}
        # A running container of the image answers `kubectl exec` as the image's non-root user.
        exec_id = kube.kubectl("exec", "-n", namespace, "synthetic-node-1", "--", "id", "-u", check=False)
        assert exec_id.returncode == 0 and exec_id.stdout.strip() == "1000", exec_id
        assert wait_phase(kube, namespace, "synthetic", ("Succeeded", "Failed"), 600) == "Succeeded"
        print(f"apply -> Succeeded: {time.monotonic() - started:.1f}s; pods on {placed}")
    status = job_status(kube, namespace, "synthetic")

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

    # kubectl logs of a finished pod goes through the kubelet (cluster CA serving certificate).
    assert kube.kubectl("logs", "-n", namespace, "synthetic-node-0").stdout.strip()

    # Checkpoints are on the volume, in the job's directory, owned by the image's user.
    assert status["checkpoint"]["path"].startswith("/checkpoints/synthetic/")
    volume = volume_dir(kube, namespace, "volt-checkpoints")
    written = sorted((volume / "synthetic").rglob("*.ckpt"))
    assert written, (f"no checkpoint under {volume}/synthetic; status {status['checkpoint']}; "
                     f"volume holds {sorted(str(p) for p in volume.rglob('*'))}")
    assert {p.stat().st_uid for p in written} == {1000}, [(p, p.stat().st_uid) for p in written]
    reasons = {e["reason"] for e in events(kube, namespace, "synthetic")}
    assert {"Created", "Running", "Succeeded"} <= reasons


@pytest.mark.timeout(900)
def test_killed_pod_restarts_the_gang_which_resumes(real_kube: LocalCluster, operator: OperatorProcess,
                                                   namespace: str, explain: List[str]) -> None:
    """The non-root gang of attempt 1 reads from the PVC what attempt 0 wrote."""
    kube = real_kube
    explain.append("synthetic")
    # 384 steps of at least 0.1 s: an idle machine must not finish before the pod is deleted.
    # The gang of attempt 1 runs at full speed.
    pvc, job = example(args=["--samples", "16384", "--batch-size", "32", "--step-delay", "0.1",
                             "--restart-step-delay", "0"],
                       failurePolicy={"maxRestarts": 2, "backoffSeconds": 1},
                       cleanPodPolicy="None")  # keep every pod's logs for the diagnosis
    job["spec"]["trainer"]["maxEpochs"] = 3
    apply(kube, namespace, pvc, job)

    def checkpointed() -> Optional[int]:
        st = job_status(kube, namespace, "synthetic")
        step = (st.get("checkpoint") or {}).get("step") or 0
        return step if st.get("phase") == "Running" and step >= 20 else None

    saved_step = wait_until("a checkpoint while Running", checkpointed, 300, every=1.0)
    # kubectl logs of a running pod.
    assert kube.kubectl("logs", "-n", namespace, "synthetic-node-1").stdout.strip()
    kube.kubectl("delete", "-n", namespace, "pod", "synthetic-node-1", "--wait=false")
    assert wait_phase(kube, namespace, "synthetic", ("Succeeded", "Failed"), 600) == "Succeeded"
    status = job_status(kube, namespace, "synthetic")
    restarts = [e["message"] for e in events(kube, namespace, "synthetic") if e["reason"] == "GangRestart"]
    assert status["restarts"] == 1 and status["attempt"] == 1, (restarts, status)
    failure = status["lastFailure"]
    assert failure["pod"] == "synthetic-node-1" and failure["rank"] == 1
    # A deleted pod restarts for free: it checkpointed (75), or the deletion stopped it (PodDeleted).
    expected_counted = 0 if failure["reason"] in ("Checkpointed", "PodDeleted", "Evicted", "Preempted") else 1
    assert status["restartsCounted"] == expected_counted, failure

    assert {p["metadata"]["labels"]["volt.dev/attempt"] for p in pods(kube, namespace, "synthetic")} == {"1"}
    reasons = [e["reason"] for e in events(kube, namespace, "synthetic")]
    assert "GangRestart" in reasons and "CheckpointResumed" in reasons

    # The new gang continued from the checkpoint: global step did not restart at 0.
    logs = kube.kubectl("logs", "-n", namespace, "synthetic-node-0").stdout
    match = RESUMED.search(logs)
    assert match, f"rank 0 of attempt 1 did not resume from a checkpoint:\n{logs[-3000:]}"
    assert int(match.group(3)) >= saved_step and match.group(1).startswith("/checkpoints/synthetic/")


@pytest.mark.timeout(600)
def test_user_error_fails_fast_naming_rank_and_exit_code(real_kube: LocalCluster, operator: OperatorProcess,
                                                        namespace: str, explain: List[str]) -> None:
    """Rank 1 raises: volt-run, as the image's non-root user, writes the error to
    /dev/termination-log; the kubelet reads it into the container's state and the job
    fails at once naming the rank, the exit code and the exception's own words."""
    kube = real_kube
    explain.append("crashy")
    crash = ("import os, time\n"
             "if os.environ['NODE_RANK'] == '1':\n"
             "    time.sleep(2)\n"
             "    raise ValueError('bad hyperparameter in rank 1')\n"
             "time.sleep(600)\n")
    pvc, job = example(command=["python", "-c", crash], args=[])
    job["metadata"]["name"] = "crashy"
    apply(kube, namespace, pvc, job)
    assert wait_phase(kube, namespace, "crashy", ("Failed", "Succeeded"), 300) == "Failed"
    status = job_status(kube, namespace, "crashy")
    failure = status["lastFailure"]
    assert (failure["pod"], failure["rank"], failure["exitCode"], failure["reason"]) == (
        "crashy-node-1", 1, 1, "UserError"), failure
    assert "ValueError: bad hyperparameter in rank 1" in failure["message"], failure
    assert status["restarts"] == 0, status
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "rank 1" in failed["message"]
    # The words came through the kubelet: they are the container's termination message.
    (container,) = get_json(kube, "-n", namespace, "pod", "crashy-node-1")["status"]["containerStatuses"]
    terminated = container["state"]["terminated"]
    assert terminated["exitCode"] == 1 and "bad hyperparameter in rank 1" in terminated.get("message", ""), terminated

    # cleanPodPolicy Running: nothing keeps running, the failed pod is kept for its logs.
    # Rank 0 either was still running when the job failed (the operator deletes it) or
    # had already stopped on its own: volt-run ends a node whose peer failed (exit 76).
    def rank0_gone_or_stopped() -> bool:
        found = {p["metadata"]["name"]: p for p in pods(kube, namespace, "crashy")}
        if "crashy-node-0" not in found:
            return True
        state: Any = (found["crashy-node-0"]["status"].get("containerStatuses") or [{}])[0].get("state", {})
        return state.get("terminated", {}).get("exitCode") == 76

    wait_until("rank 0 cleaned up or stopped for its lost peer", rank0_gone_or_stopped, 90)
    assert "crashy-node-1" in {p["metadata"]["name"] for p in pods(kube, namespace, "crashy")}
