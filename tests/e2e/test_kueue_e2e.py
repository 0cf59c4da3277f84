"""End to end, gang admission with the real Kueue manager (built by `make kueue`) on the
local cluster's real nodes (containers of the trainer image): the operator runs with
--kueue, each TrainingJob names a LocalQueue, and a ClusterQueue has quota for exactly
one 2-node job.

* Two jobs submitted together: one runs, the other is Queued with no pod; when the
  first succeeds the second runs and succeeds.
* A high-priority job preempts a running low-priority one: the low one checkpoints on
  SIGTERM (exit 75), is Queued, resumes from its checkpoint when readmitted (rank 0's
  log says so) and ends with the same weights as an uninterrupted run of it.

No partial gangs: every version of every pod is recorded through a watch while the
jobs run, and at no point do two jobs hold active pods at once (the quota fits one
gang), nor does a job run with fewer than its 2 pods.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ContextManager, Dict, Iterator, List, Optional, Sequence

import pytest
import torch

from job_helpers import RESUMED, apply, diagnosis, events, kubectl_watch, volume_dir
from kueue_jobs import (chart_operator, condition, jobs_path, queue_manifests, queued_job, status,
                        wait_checkpointed, wait_finished, wait_jobs, workload_of)
from operator_process import OperatorProcess, admin_configuration
from real_nodes import namespace, pods  # noqa: F401 (namespace: a fixture)
from volt_operator import kueue as kueue_api
from volt_operator.api import TrainingJobSpec, TrainingJobStatus, format_time
from volt_operator.cache import ObservedCache
from volt_operator.kube import USER_AGENT, KubeClient
from volt_operator.kueue_gate import KueueGate
from volt_operator.testing.cluster import Component, LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow]

TERMINAL = ("Succeeded", "Failed")
NODES = 2


@pytest.fixture(scope="module")
def kueue(real_kube: LocalCluster) -> Iterator[LocalCluster]:
    """Kueue's CRDs and manager on the session's real-node cluster, for this module only (one
    started with the cluster, `up --kueue`, is used and left running)."""
    ours = not any(c.name == "kueue" and c.alive() for c in real_kube.components)
    manager: Component = real_kube.start_kueue()
    try:
        yield real_kube
    finally:
        if ours:
            manager.stop(10)
            real_kube.components.remove(manager)


@pytest.fixture
def queue(kueue: LocalCluster, namespace: str) -> Iterator[str]:
    """A ClusterQueue with quota for one job of 2 pods x (500m CPU, 1Gi) that preempts
    lower priorities, and a LocalQueue for it in the test's namespace; the LocalQueue's name."""
    name = f"cq-{namespace}"[:63]
    manifests = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "volt-default"}},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "volt-e2e-low"},
         "value": 100, "preemptionPolicy": "Never"},
        {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "volt-e2e-high"},
         "value": 1000, "preemptionPolicy": "Never"},
        *queue_manifests(name, "training", namespace, cpu="1", memory="2Gi",
                         preemption={"withinClusterQueue": "LowerPriority"}),
    ]
    kueue.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    try:
        yield "training"
    finally:
        kueue.kubectl("delete", "clusterqueue", name, "--wait=false", check=False)


@pytest.fixture
def kueue_operator(queue: str, kueue: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator with --kueue, holding only the chart's permissions (kueue.enabled)."""
    with chart_operator(kueue, namespace, tmp_path) as proc:
        yield proc


def pod_history(kube: LocalCluster, namespace: str, path: Path) -> ContextManager[List[Dict[str, Any]]]:
    """Every watch event of the namespace's job pods while the block runs (filled at its end)."""
    return kubectl_watch(kube, ["get", "pods", "-n", namespace, "-l", "volt.dev/job", "--output-watch-events"], path)


def active(pod: Dict[str, Any]) -> bool:
    """Holds its node's resources: not yet Succeeded or Failed (a deleted pod counts until it stops)."""
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def running(pod: Dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")


def check_whole_gangs(history: List[Dict[str, Any]], queued: Sequence[str]) -> Dict[str, int]:
    """Replay the pod events: never two of the ``queued`` jobs with active pods at once (the
    quota is one gang), and every gang that ran had all its pods running together. The most
    pods each of them had running at one moment."""
    pods: Dict[str, Dict[str, Any]] = {}
    most: Dict[str, int] = {}
    for event in history:
        obj = event["object"]
        if event["type"] == "DELETED":
            pods.pop(obj["metadata"]["name"], None)
        else:
            pods[obj["metadata"]["name"]] = obj
        holders = sorted({p["metadata"]["labels"]["volt.dev/job"] for p in pods.values() if active(p)} & set(queued))
        assert len(holders) <= 1, f"two jobs hold pods at once (the quota fits one gang): {holders}"
        for job in queued:
            now = sum(running(p) for p in pods.values() if p["metadata"]["labels"]["volt.dev/job"] == job)
            if now:
                most[job] = max(most.get(job, 0), now)
    return most


@pytest.mark.timeout(600)
def test_two_jobs_in_a_queue_for_one_run_one_after_the_other(
        kueue_operator: OperatorProcess, queue: str, namespace: str, tmp_path: Path) -> None:
    kube = kueue_operator.kube
    with pod_history(kube, namespace, tmp_path / "pods.json") as history:
        pvc, one = queued_job("one", queue, samples=512, step_delay=0.0, epochs=1)
        _, two = queued_job("two", queue, samples=512, step_delay=0.0, epochs=1)
        apply(kube, namespace, pvc, one, two)

        def one_runs_one_queued(jobs: Dict[str, Dict[str, Any]]) -> Optional[List[str]]:
            """[the job Kueue admitted, the one it queued] once that is what the statuses say."""
            admitted = [n for n in ("one", "two") if condition(status(jobs, n), "Admitted").get("status") == "True"]
            # Kueue's words: the quota that is missing
            queued = [n for n in ("one", "two") if status(jobs, n).get("phase") == "Queued"
                      and condition(status(jobs, n), "Admitted").get("reason") == "Pending"
                      and "quota" in condition(status(jobs, n), "Admitted").get("message", "")]
            return admitted + queued if len(admitted) == 1 and len(queued) == 1 else None
        first, second = wait_jobs(kube, namespace, "one job admitted, the other Queued", 120, one_runs_one_queued)
        assert not kube.request("GET", f"/api/v1/namespaces/{namespace}/pods?labelSelector=volt.dev/job={second}")["items"]

        def both_done(jobs: Dict[str, Dict[str, Any]]) -> Any:
            return all(status(jobs, n).get("phase") in TERMINAL for n in ("one", "two")) and jobs
        jobs = wait_jobs(kube, namespace, "both jobs to finish", 330, both_done)
    assert [status(jobs, n)["phase"] for n in (first, second)] == ["Succeeded", "Succeeded"], \
        diagnosis(kube, namespace, second)
    # the second started only after the first ended
    assert status(jobs, second)["startTime"] >= status(jobs, first)["completionTime"]
    assert check_whole_gangs(history, (first, second)) == {first: NODES, second: NODES}
    reasons = [e["reason"] for e in events(kube, namespace, second)]
    assert {"Queued", "Admitted", "Created"} <= set(reasons), reasons
    done = kube.request("GET", f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{namespace}/workloads/trainingjob-{first}")
    assert any(c["type"] == "Finished" and c["status"] == "True" for c in done["status"]["conditions"])
    # Each Workload was read at most once, when the operator's cache did not know it yet;
    # every other look at it came from the operator's watch.
    reads = workload_reads(kube, namespace)
    assert len(reads) <= 2, reads


def workload_reads(kube: LocalCluster, namespace: str) -> List[str]:
    """The operator's GETs and LISTs of Workloads in ``namespace`` (the API server's audit log)."""
    found = []
    for event in kube.audit_events():
        ref = event.get("objectRef") or {}
        if (event.get("stage") == "ResponseComplete" and event.get("userAgent") == USER_AGENT
                and ref.get("resource") == "workloads" and ref.get("namespace") == namespace
                and event.get("verb") in ("get", "list")):
            found.append(event["requestURI"])
    return found


def final_weights(volume: Path, name: str) -> Dict[str, torch.Tensor]:
    return torch.load(volume / f"{name}-final.pt", map_location="cpu", weights_only=True)


@pytest.mark.timeout(900)
def test_high_priority_job_preempts_a_low_one_which_resumes_from_its_checkpoint(
        kueue_operator: OperatorProcess, queue: str, namespace: str, tmp_path: Path) -> None:
    kube = kueue_operator.kube
    # 2048 samples / 4 processes / batch 32: 16 steps an epoch, 5 epochs, >= 0.25 s a step:
    # still training when the preemption comes (>= 17 s after the first checkpoint).
    low = dict(samples=2048, step_delay=0.25, epochs=5, priority="volt-e2e-low")
    with pod_history(kube, namespace, tmp_path / "pods.json") as history:
        # The uninterrupted run, beside the queue (Kueue does not count it), at the same time.
        pvc, reference = queued_job("reference", None, **low)
        apply(kube, namespace, pvc, reference, queued_job("low", queue, **low)[1])

        saved = wait_checkpointed(kube, namespace, "low", 240, "it could be preempted")
        apply(kube, namespace, queued_job("high", queue, samples=512, step_delay=0.0, epochs=1,
                                          priority="volt-e2e-high")[1])

        def preempted(jobs: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
            st = status(jobs, "low")
            return st if st.get("phase") == "Queued" and condition(st, "Preempted").get("status") == "True" else None
        st = wait_jobs(kube, namespace, "low preempted and Queued", 120, preempted)
        assert condition(st, "Preempted")["reason"] == "InClusterQueue", condition(st, "Preempted")
        assert condition(st, "Admitted")["status"] == "False"
        assert st["restarts"] == 0 and st.get("restartsCounted", 0) == 0

        def all_done(jobs: Dict[str, Dict[str, Any]]) -> Any:
            return all(status(jobs, n).get("phase") in TERMINAL for n in ("low", "high", "reference")) and jobs
        jobs = wait_jobs(kube, namespace, "high, then low, to finish", 420, all_done)
    assert status(jobs, "reference")["phase"] == "Succeeded", diagnosis(kube, namespace, "reference")
    assert status(jobs, "reference").get("restarts", 0) == 0
    high_st, low_st = status(jobs, "high"), status(jobs, "low")
    assert (high_st["phase"], low_st["phase"]) == ("Succeeded", "Succeeded"), diagnosis(kube, namespace, "low")
    # preemption is not a failure: no restart, no budget; one more attempt
    assert low_st["restarts"] == 0 and low_st.get("restartsCounted", 0) == 0 and low_st["attempt"] == 1
    assert condition(low_st, "Preempted")["status"] == "False"
    assert low_st["startTime"] >= high_st["completionTime"]
    reasons = [e["reason"] for e in events(kube, namespace, "low")]
    assert "Preempted" in reasons and "CheckpointResumed" in reasons and "GangRestart" not in reasons, reasons
    # the preempted gang checkpointed on SIGTERM: its rank 0 exited 75
    exits = [e["object"] for e in history if e["object"]["metadata"]["name"] == "low-node-0"
             and e["object"]["metadata"]["labels"]["volt.dev/attempt"] == "0"]
    codes = {s["state"]["terminated"]["exitCode"] for p in exits
             for s in (p.get("status") or {}).get("containerStatuses") or [] if "terminated" in s["state"]}
    assert codes == {75}, codes
    log = kube.kubectl("logs", "-n", namespace, "low-node-0").stdout
    match = RESUMED.search(log)
    assert match and int(match.group(3)) >= saved, log[-3000:]
    assert check_whole_gangs(history, ("low", "high")) == {"low": NODES, "high": NODES}
    volume = volume_dir(kube, namespace, "volt-checkpoints")
    reference, resumed = final_weights(volume, "reference"), final_weights(volume, "low")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference), "weights differ from the uninterrupted run"


@pytest.mark.timeout(300)
def test_a_job_too_big_for_the_quota_runs_once_its_numnodes_is_lowered_while_queued(
        kueue_operator: OperatorProcess, queue: str, namespace: str) -> None:
    """3 nodes do not fit the quota (one 2-node job): Queued with Kueue's reason. numNodes
    patched to 2 while queued: the operator builds the Workload again, Kueue admits it, and
    the job runs on 2 nodes to Succeeded."""
    kube = kueue_operator.kube
    pvc, job = queued_job("big", queue, samples=128, step_delay=0.0, epochs=1)
    job["spec"]["trainer"]["numNodes"] = 3
    apply(kube, namespace, pvc, job)

    def short_of_quota(jobs: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        admitted = condition(status(jobs, "big"), "Admitted")
        return admitted if "insufficient" in admitted.get("message", "") else None
    wait_jobs(kube, namespace, "big Queued for want of quota", 60, short_of_quota)
    kube.kubectl("patch", "trainingjob", "big", "-n", namespace, "--type=merge",
                 "-p", json.dumps({"spec": {"trainer": {"numNodes": 2}}}))

    st = wait_finished(kube, namespace, "big", 200, "big to finish on 2 nodes")
    assert st["phase"] == "Succeeded" and st["numNodes"] == 2, diagnosis(kube, namespace, "big")
    assert workload_of(kube, namespace, "big")["spec"]["podSets"][0]["count"] == 2
    recreated = [e["message"] for e in events(kube, namespace, "big") if e["reason"] == "WorkloadRecreated"]
    assert len(recreated) == 1 and "numNodes 3 -> 2" in recreated[0], recreated


@pytest.mark.timeout(420)
def test_an_admitted_job_grown_beyond_the_quota_stops_and_queues_until_it_fits_again(
        kueue_operator: OperatorProcess, queue: str, namespace: str, tmp_path: Path) -> None:
    """numNodes 2 -> 3 on a running job: the Workload Kueue admitted no longer matches the job,
    so the gang checkpoints and stops, and the job queues for 3 nodes, which the quota cannot
    hold: no third pod is ever created. Back to 2 while queued: the Workload is rebuilt,
    admitted, and the next attempt resumes from the checkpoint to Succeeded."""
    kube = kueue_operator.kube
    # 1024 samples / 4 processes / batch 32: 8 steps an epoch, 0.5 s a step, 5 epochs
    pvc, job = queued_job("grow", queue, samples=1024, step_delay=0.5, epochs=5)
    with pod_history(kube, namespace, tmp_path / "pods.json") as history:
        apply(kube, namespace, pvc, job)

        saved = wait_checkpointed(kube, namespace, "grow", 180, "it could be resized")
        kube.kubectl("patch", "trainingjob", "grow", "-n", namespace, "--type=merge",
                     "-p", json.dumps({"spec": {"trainer": {"numNodes": 3}}}))

        def short_of_quota(jobs: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
            st = status(jobs, "grow")
            admitted = condition(st, "Admitted")
            return st if st.get("phase") == "Queued" and "insufficient" in admitted.get("message", "") else None
        wait_jobs(kube, namespace, "grow Queued for 3 nodes, short of quota", 120, short_of_quota)
        assert workload_of(kube, namespace, "grow")["spec"]["podSets"][0]["count"] == 3
        kube.kubectl("patch", "trainingjob", "grow", "-n", namespace, "--type=merge",
                     "-p", json.dumps({"spec": {"trainer": {"numNodes": 2}}}))
        st = wait_finished(kube, namespace, "grow", 240, "grow resumed on 2 nodes to the end")
    assert st["phase"] == "Succeeded" and st["numNodes"] == 2, diagnosis(kube, namespace, "grow")
    assert st["attempt"] >= 1 and st["restarts"] == 0
    assert check_whole_gangs(history, ("grow",)) == {"grow": NODES}
    assert not any(e["object"]["metadata"]["name"] == "grow-node-2" for e in history), "a third pod was created"
    told = [(e["reason"], e["message"]) for e in events(kube, namespace, "grow")]
    changed = [m for r, m in told if r == "ChangedWhileAdmitted"]
    assert len(changed) == 1 and "numNodes 2 -> 3" in changed[0], told
    recreated = [m for r, m in told if r == "WorkloadRecreated"]
    assert any("numNodes 3 -> 2" in m for m in recreated), told
    match = RESUMED.search(kube.kubectl("logs", "-n", namespace, "grow-node-0").stdout)
    assert match and int(match.group(3)) >= saved


@pytest.mark.timeout(420)
def test_a_suspended_job_gives_its_quota_to_the_next_and_resumes_from_its_checkpoint_after_it(
        kueue_operator: OperatorProcess, queue: str, namespace: str) -> None:
    kube = kueue_operator.kube
    # 1024 samples / 4 processes / batch 32: 8 steps an epoch, 0.5 s a step, 5 epochs
    pvc, first = queued_job("first", queue, samples=1024, step_delay=0.5, epochs=5)
    _, second = queued_job("second", queue, samples=128, step_delay=0.0, epochs=1)
    apply(kube, namespace, pvc, first)

    saved = wait_checkpointed(kube, namespace, "first", 180, "it could be suspended")
    apply(kube, namespace, second)
    kube.kubectl("patch", "trainingjob", "first", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": true}}')

    def second_done(jobs: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Dict[str, Any]]]:
        if status(jobs, "first").get("phase") in TERMINAL:
            raise AssertionError("first finished before it was suspended")
        return jobs if status(jobs, "second").get("phase") in TERMINAL else None
    jobs = wait_jobs(kube, namespace, "second admitted and finished while first is suspended", 180, second_done)
    assert status(jobs, "second")["phase"] == "Succeeded", diagnosis(kube, namespace, "second")
    assert status(jobs, "first")["phase"] == "Suspended"
    workload = workload_of(kube, namespace, "first")
    assert workload["spec"]["active"] is False
    assert condition(workload["status"], "QuotaReserved").get("status") == "False"
    kube.kubectl("patch", "trainingjob", "first", "-n", namespace, "--type=merge", "-p", '{"spec": {"suspend": false}}')

    st = wait_finished(kube, namespace, "first", 180, "first resumed to the end")
    assert st["phase"] == "Succeeded" and st["attempt"] == 1, diagnosis(kube, namespace, "first")
    assert st["startTime"] >= status(jobs, "second")["completionTime"]
    reasons = [e["reason"] for e in events(kube, namespace, "first")]
    assert {"Suspended", "Resumed", "CheckpointResumed"} <= set(reasons), reasons
    match = RESUMED.search(kube.kubectl("logs", "-n", namespace, "first-node-0").stdout)
    assert match and int(match.group(3)) >= saved


POOL_LABEL = "volt.dev/e2e-pool"


@pytest.fixture
def pool_queue(kueue: LocalCluster, namespace: str) -> Iterator[Dict[str, str]]:
    """The last real node alone labelled and tainted as pool "b" (NoSchedule), and a LocalQueue
    "pool" whose ClusterQueue's only flavor is that pool: its nodeLabels pick the node, its
    tolerations let pods onto it. Yields the node, the LocalQueue and the flavor."""
    node = kueue.node_names[-1]
    flavor, cluster_queue = f"pool-b-{namespace}"[:63], f"cq-pool-{namespace}"[:63]
    toleration = {"key": POOL_LABEL, "operator": "Equal", "value": "b", "effect": "NoSchedule"}
    manifests = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": flavor},
         "spec": {"nodeLabels": {POOL_LABEL: "b"}, "nodeTaints": [{"key": POOL_LABEL, "value": "b", "effect": "NoSchedule"}],
                  "tolerations": [toleration]}},
        *queue_manifests(cluster_queue, "pool", namespace, cpu="1", memory="2Gi", flavor=flavor),
    ]
    kueue.kubectl("label", "node", node, f"{POOL_LABEL}=b", "--overwrite")
    kueue.kubectl("taint", "node", node, f"{POOL_LABEL}=b:NoSchedule", "--overwrite")
    try:
        kueue.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
        yield {"node": node, "queue": "pool", "flavor": flavor}
    finally:
        kueue.kubectl("taint", "node", node, f"{POOL_LABEL}-", check=False)
        kueue.kubectl("label", "node", node, f"{POOL_LABEL}-", check=False)
        kueue.kubectl("delete", "clusterqueue", cluster_queue, "--wait=false", check=False)
        kueue.kubectl("delete", "resourceflavor", flavor, "--wait=false", check=False)


@pytest.mark.timeout(300)
def test_an_admitted_gang_runs_on_the_nodes_of_its_resource_flavor(
        kueue: LocalCluster, pool_queue: Dict[str, str], namespace: str, tmp_path: Path) -> None:
    """Kueue's flavor names the pool: both pods get its node label and its toleration, so they
    run on the tainted pool node only (without either they would run elsewhere or not at all)."""
    with chart_operator(kueue, namespace, tmp_path) as proc:
        kube = proc.kube
        pvc, job = queued_job("pooled", pool_queue["queue"], samples=128, step_delay=0.0, epochs=1)
        apply(kube, namespace, pvc, job)
        st = wait_finished(kube, namespace, "pooled", 240)
    assert st["phase"] == "Succeeded", diagnosis(kube, namespace, "pooled")
    assert condition(st, "Admitted")["message"].endswith(f"(ResourceFlavor {pool_queue['flavor']})")
    placed = pods(kube, namespace, "pooled")
    assert len(placed) == NODES
    for pod in placed:
        assert pod["spec"]["nodeName"] == pool_queue["node"], pod["spec"]
        assert pod["spec"]["nodeSelector"] == {POOL_LABEL: "b"}
        assert {"key": POOL_LABEL, "operator": "Equal", "value": "b", "effect": "NoSchedule"} in pod["spec"]["tolerations"]


@pytest.fixture
def checked_queue(kueue: LocalCluster, namespace: str) -> Iterator[Dict[str, str]]:
    """A LocalQueue "checked" whose ClusterQueue admits only after an AdmissionCheck that this
    test's own code answers (as a provisioning controller would), and the last real node
    labelled as pool "c" for that answer to pick. Yields the check, the node and the queue."""
    node = kueue.node_names[-1]
    check, cluster_queue = f"check-{namespace}"[:63], f"cq-check-{namespace}"[:63]
    manifests = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "volt-default"}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "AdmissionCheck", "metadata": {"name": check},
         "spec": {"controllerName": "volt.dev/e2e-provisioner"}},
        *queue_manifests(cluster_queue, "checked", namespace, cpu="1", memory="2Gi",
                         admissionChecksStrategy={"admissionChecks": [{"name": check}]}),
    ]
    kueue.kubectl("label", "node", node, f"{POOL_LABEL}=c", "--overwrite")
    try:
        kueue.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
        now = format_time(datetime.now(timezone.utc))
        kueue.kubectl("patch", "admissioncheck", check, "--subresource=status", "--type=merge", "-p", json.dumps(
            {"status": {"conditions": [{"type": "Active", "status": "True", "reason": "Active", "message": "e2e",
                                        "lastTransitionTime": now}]}}))
        yield {"check": check, "node": node, "queue": "checked"}
    finally:
        kueue.kubectl("label", "node", node, f"{POOL_LABEL}-", check=False)
        kueue.kubectl("delete", "clusterqueue", cluster_queue, "--wait=false", check=False)
        kueue.kubectl("delete", "admissioncheck", check, "--wait=false", check=False)


@pytest.mark.timeout(300)
def test_an_admission_checks_pod_set_update_reaches_the_gangs_pods(
        kueue_operator: OperatorProcess, checked_queue: Dict[str, str], namespace: str) -> None:
    """Quota reserved, the job still Queued until the check is Ready; the check's podSetUpdates
    (an annotation, a label, a nodeSelector for the pool node) are on both pods, which run there."""
    kube = kueue_operator.kube
    pvc, job = queued_job("checked", checked_queue["queue"], samples=128, step_delay=0.0, epochs=1)
    apply(kube, namespace, pvc, job)

    def reserved_awaiting_the_check(items: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        wl = items.get("trainingjob-checked") or {}
        states = (wl.get("status") or {}).get("admissionChecks") or []
        return wl if condition(wl.get("status") or {}, "QuotaReserved").get("status") == "True" \
            and [c.get("state") for c in states] == ["Pending"] else None
    workload = kube.watch(f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{namespace}/workloads",
                          reserved_awaiting_the_check, 60, "quota reserved, the check pending")
    jobs = {"checked": kube.request("GET", f"{jobs_path(namespace)}/checked")}
    assert status(jobs, "checked")["phase"] == "Queued"
    assert not pods(kube, namespace, "checked")
    now = format_time(datetime.now(timezone.utc))
    kube.kubectl("patch", "workload", workload["metadata"]["name"], "-n", namespace, "--subresource=status",
                 "--type=merge", "-p", json.dumps({
                     "metadata": {"resourceVersion": workload["metadata"]["resourceVersion"]},
                     "status": {"admissionChecks": [{
                         "name": checked_queue["check"], "state": "Ready", "message": "provisioned",
                         "lastTransitionTime": now,
                         "podSetUpdates": [{"name": "node", "annotations": {"volt.dev/e2e-provisioned": "yes"},
                                            "labels": {"volt.dev/e2e-batch": "7"},
                                            "nodeSelector": {POOL_LABEL: "c"}}]}]}}))

    st = wait_finished(kube, namespace, "checked", 200)
    assert st["phase"] == "Succeeded", diagnosis(kube, namespace, "checked")
    checked = pods(kube, namespace, "checked")
    assert len(checked) == NODES
    for pod in checked:
        assert pod["metadata"]["annotations"]["volt.dev/e2e-provisioned"] == "yes"
        assert pod["metadata"]["labels"]["volt.dev/e2e-batch"] == "7"
        assert pod["spec"]["nodeSelector"] == {POOL_LABEL: "c"}
        assert pod["spec"]["nodeName"] == checked_queue["node"]


@pytest.mark.timeout(120)
def test_a_workload_deleted_during_a_watch_gap_is_found_by_the_relist(
        queue: str, kueue: LocalCluster, namespace: str) -> None:
    """No watch runs here, as during a gap: the gate's cache keeps the Workload it created
    until the periodic LIST finds it gone and names its job, whose reconcile creates it again."""
    _, job = queued_job("gap", queue, samples=64, step_delay=0.0, epochs=1)
    kueue.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(job))
    body = kueue.request("GET", f"{jobs_path(namespace)}/gap")
    gate = KueueGate(KubeClient(admin_configuration(kueue)), ObservedCache())
    spec, now = TrainingJobSpec.model_validate(body["spec"]), datetime.now(timezone.utc)
    workload = (namespace, kueue_api.workload_name("gap"))

    gate.admission(body, spec, TrainingJobStatus(), [], now)
    assert gate.cache.workload(workload)[1] is not None
    assert gate.relist(namespace) == []
    kueue.kubectl("delete", "-n", namespace, "workload", workload[1], "--wait=true")
    assert gate.cache.workload(workload)[1] is not None  # no watch told it
    assert gate.relist(namespace) == [(namespace, "gap")]
    assert gate.cache.workload(workload) == (True, None)
    gate.admission(body, spec, TrainingJobStatus(), [], now)  # the job's next reconcile
    assert kueue.request("GET", f"/apis/{kueue_api.WORKLOAD_API_VERSION}/namespaces/{namespace}/"
                                f"{kueue_api.WORKLOADS}/{workload[1]}")["metadata"]["name"] == workload[1]

