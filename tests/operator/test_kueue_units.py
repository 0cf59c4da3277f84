"""Kueue gang admission on plain data: the Workload built for a job, how a Workload
reads as an admission, what the owner writes back, and the status machine's
Queued / Admitted / Preempted transitions (volt_operator/kueue.py, status.decide)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional

import pytest

from volt_operator import kueue, kueue_gate
from volt_operator.api import TrainingJobSpec, TrainingJobStatus, format_time
from volt_operator.builders import JobRef, build_pod
from volt_operator.cache import ObservedCache
from volt_operator.observed import pod_view
from volt_operator.status import ADMITTED, PREEMPTED, RUNNING, JobMeta, condition, decide

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=timezone.utc)
REF = JobRef("mnist", "team-a", "uid-1")


def spec(**over: Any) -> TrainingJobSpec:
    body: Dict[str, Any] = {
        "image": "volt-trainer:1",
        "command": ["python", "-m", "volt.examples.synthetic"],
        "trainer": {"numNodes": 2, "devices": 2, "accelerator": "cpu"},
        "resources": {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "1"}},
    }
    body.update(over)
    return TrainingJobSpec.model_validate(body)


def job(labels: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    return {"metadata": {"name": REF.name, "namespace": REF.namespace, "uid": REF.uid,
                         "labels": {kueue.QUEUE_LABEL: "team-a-queue", **(labels or {})}}}


def cond(type_: str, status: bool, reason: str, message: str = "") -> Dict[str, Any]:
    return {"type": type_, "status": "True" if status else "False", "reason": reason,
            "message": message, "lastTransitionTime": format_time(NOW - timedelta(minutes=5))}


def workload(*conditions: Dict[str, Any], admission: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    body = kueue.build_workload(job(), spec(), 2, None)
    body["metadata"].update(resourceVersion="7", generation=1)
    body["status"] = {"conditions": list(conditions)}
    if admission is not None:
        body["status"]["admission"] = admission
    return body


ADMITTED_WL = (cond("QuotaReserved", True, "QuotaReserved", "Quota reserved in ClusterQueue cq"),
               cond("Admitted", True, "Admitted", "The workload is admitted"))
PREEMPTED_WL = ADMITTED_WL + (
    cond("Evicted", True, "Preempted", "Preempted to accommodate a workload (UID: u2) due to "
         "prioritization in the ClusterQueue"),
    cond("Preempted", True, "InClusterQueue", "Preempted to accommodate a workload"))


def pod(rank: int, attempt: int = 0, deleting: bool = False, exit_code: Optional[int] = None) -> Any:
    body = build_pod(REF, spec(), rank, attempt, "auto")
    body["metadata"]["creationTimestamp"] = format_time(NOW - timedelta(seconds=60))
    if exit_code is None:
        body["status"] = {"phase": "Running", "podIP": f"198.18.0.{10 + rank}",
                          "conditions": [{"type": "Ready", "status": "True"}]}
    else:
        body["status"] = {"phase": "Failed", "containerStatuses": [{"name": "trainer", "state": {
            "terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": format_time(NOW)}}}]}
    if deleting:
        body["metadata"]["deletionTimestamp"] = format_time(NOW + timedelta(seconds=30))
    return pod_view(body)


# --- the Workload ------------------------------------------------------------

def test_workload_is_one_pod_set_of_the_whole_gang_with_the_trainers_requests() -> None:
    body = kueue.build_workload(job(), spec(), 2, None)
    assert body["apiVersion"] == "kueue.x-k8s.io/v1beta2" and body["kind"] == "Workload"
    assert body["metadata"]["name"] == "trainingjob-mnist"
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert body["metadata"]["ownerReferences"][0]["controller"] is True
    assert body["spec"]["queueName"] == "team-a-queue"
    [pod_set] = body["spec"]["podSets"]
    assert pod_set["name"] == "node" and pod_set["count"] == 2
    [container] = pod_set["template"]["spec"]["containers"]
    # requests default to limits (as the API server defaults a pod's); explicit requests win
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "4Gi"}
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "4Gi"}
    assert "priority" not in body["spec"] and "priorityClassRef" not in body["spec"]


def test_workload_counts_gpus_and_carries_placement_and_priority() -> None:
    gpu = spec(trainer={"numNodes": 3, "devices": 4, "accelerator": "gpu"},
               template={"priorityClassName": "high", "nodeSelector": {"pool": "a100"}})
    body = kueue.build_workload(job(), gpu, 3, 1000)
    [pod_set] = body["spec"]["podSets"]
    assert pod_set["count"] == 3
    assert pod_set["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == 4
    assert pod_set["template"]["spec"]["nodeSelector"] == {"pool": "a100"}
    assert body["spec"]["priority"] == 1000
    assert body["spec"]["priorityClassRef"] == {
        "group": "scheduling.k8s.io", "kind": "PriorityClass", "name": "high"}


def test_workload_priority_class_label_wins_over_the_pods_priority_class() -> None:
    labelled = job({kueue.PRIORITY_CLASS_LABEL: "prod"})
    ref = kueue.priority_class_ref(labelled, spec(template={"priorityClassName": "high"}))
    assert ref == {"group": "kueue.x-k8s.io", "kind": "WorkloadPriorityClass", "name": "prod"}


def test_queue_name_is_the_label_and_nothing_else() -> None:
    assert kueue.queue_name(job()) == "team-a-queue"
    assert kueue.queue_name({"metadata": {"labels": {"other": "x"}}}) is None
    assert kueue.queue_name({"metadata": {"labels": {kueue.QUEUE_LABEL: ""}}}) is None


def test_owned_by_checks_the_uid() -> None:
    body = workload()
    assert kueue.owned_by(body, job())
    other = job()
    other["metadata"]["uid"] = "uid-2"
    assert not kueue.owned_by(body, other)


# --- reading a Workload ------------------------------------------------------

def test_admission_of_each_workload_state() -> None:
    created = kueue.admission(None)
    assert (created.admitted, created.reason) == (False, "WorkloadCreated")
    pending = kueue.admission(workload(cond("QuotaReserved", False, "Pending",
                                            "couldn't assign flavors to pod set node: insufficient "
                                            "unused quota for cpu in flavor default, 4 more needed")))
    assert not pending.admitted and pending.reason == "Pending"
    assert "insufficient unused quota for cpu" in pending.message
    waiting = kueue.admission(workload())
    assert not waiting.admitted and "team-a-queue" in waiting.message
    admitted = kueue.admission(workload(*ADMITTED_WL, admission={"clusterQueue": "cq"}))
    assert admitted.admitted and admitted.reason == "Admitted" and "ClusterQueue cq" in admitted.message
    preempted = kueue.admission(workload(*PREEMPTED_WL))
    assert (preempted.admitted, preempted.preempted, preempted.reason) == (False, True, "InClusterQueue")
    assert "prioritization in the ClusterQueue" in preempted.message
    stopped = kueue.admission(workload(*ADMITTED_WL, cond("Evicted", True, "ClusterQueueStopped", "stopped")))
    assert (stopped.admitted, stopped.preempted, stopped.reason) == (False, False, "ClusterQueueStopped")
    readmitted = kueue.admission(workload(*ADMITTED_WL, cond("Evicted", False, "QuotaReserved", "Previously")))
    assert readmitted.admitted


def assigned(*flavors_per_pod_set: Dict[str, str]) -> Dict[str, Any]:
    """A Workload admitted with these resource -> flavor maps (the first for the gang's pod set)."""
    sets = [{"name": kueue.POD_SET if i == 0 else f"other-{i}", "count": 2, "flavors": f}
            for i, f in enumerate(flavors_per_pod_set)]
    return workload(*ADMITTED_WL, admission={"clusterQueue": "cq", "podSetAssignments": sets})


def flavor(name: str, labels: Optional[Dict[str, str]] = None,
           tolerations: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": name},
            "spec": {**({"nodeLabels": labels} if labels else {}),
                     **({"tolerations": tolerations} if tolerations else {})}}


def test_the_assigned_flavors_are_those_of_the_gangs_pod_set_once_each() -> None:
    admitted = assigned({"cpu": "spot", "memory": "spot", "nvidia.com/gpu": "h100"}, {"cpu": "elsewhere"})
    assert kueue.assigned_flavors(admitted) == ["h100", "spot"]
    assert kueue.assigned_flavors(workload()) == []
    assert kueue.admission(admitted).message == (
        "Kueue admitted Workload trainingjob-mnist in ClusterQueue cq (ResourceFlavors h100, spot)")
    one = kueue.admission(assigned({"cpu": "spot"}))
    assert one.message.endswith("ClusterQueue cq (ResourceFlavor spot)")


GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
NONE = kueue.Placement()


def test_placement_joins_the_flavors_labels_to_the_jobs_selector_and_adds_their_tolerations() -> None:
    flavors = {"h100": flavor("h100", {"accelerator": "h100", "pool": "gpu"}, [GPU_TAINT]),
               "spot": flavor("spot", {"pool": "gpu"}, [GPU_TAINT, {"key": "spot", "value": "yes",
                                                                   "operator": "", "effect": "NoSchedule"}])}
    own = kueue.Placement({"zone": "a", "pool": "gpu"}, (GPU_TAINT,), {"team": "a"}, {"note": "x"})
    placed = kueue.placement(assigned({"cpu": "spot"}), flavors, own)
    assert placed.node_selector == {"zone": "a", "pool": "gpu", "accelerator": "h100"}
    # once each, in the API server's form with its "" fields left out
    assert list(placed.tolerations) == [GPU_TAINT, {"key": "spot", "value": "yes", "effect": "NoSchedule"}]
    assert (placed.labels, placed.annotations) == ({"team": "a"}, {"note": "x"})
    assert kueue.placement(workload(), {"plain": flavor("plain")}, NONE) == NONE


def test_placement_adds_the_admission_checks_pod_set_updates_for_the_gang() -> None:
    admitted = assigned({"cpu": "default"})
    admitted["status"]["admissionChecks"] = [
        {"name": "provisioning", "state": "Ready", "message": "", "podSetUpdates": [
            {"name": kueue.POD_SET, "annotations": {"autoscaling.x-k8s.io/consume-provisioning-request": "pr-1"},
             "labels": {"provisioned": "yes"}, "nodeSelector": {"pool": "burst"},
             "tolerations": [{"key": "burst", "operator": "Exists", "effect": "NoSchedule"}]},
            {"name": "other", "labels": {"not": "ours"}}]},
        {"name": "quiet", "state": "Ready", "message": ""}]
    placed = kueue.placement(admitted, {"default": flavor("default")},
                             kueue.Placement({}, (), {"team": "a"}, {}))
    assert placed.annotations == {"autoscaling.x-k8s.io/consume-provisioning-request": "pr-1"}
    assert placed.labels == {"team": "a", "provisioned": "yes"}
    assert placed.node_selector == {"pool": "burst"}
    assert placed.tolerations == ({"key": "burst", "operator": "Exists", "effect": "NoSchedule"},)


def test_placement_refuses_a_key_set_to_two_values_naming_both() -> None:
    with pytest.raises(kueue.PlacementError, match=r"ResourceFlavor h100 sets nodeSelector accelerator=h100, "
                       r"but spec.template sets accelerator=a100") as err:
        kueue.placement(workload(), {"h100": flavor("h100", {"accelerator": "h100"})},
                        kueue.Placement({"accelerator": "a100"}))
    assert err.value.permanent
    with pytest.raises(kueue.PlacementError, match="ResourceFlavor b sets nodeSelector pool=b, but ResourceFlavor a"):
        kueue.placement(workload(), {"a": flavor("a", {"pool": "a"}), "b": flavor("b", {"pool": "b"})}, NONE)
    checked = workload()
    checked["status"]["admissionChecks"] = [{"name": "prov", "podSetUpdates": [
        {"name": kueue.POD_SET, "labels": {"team": "b"}}]}]
    with pytest.raises(kueue.PlacementError, match="admission check prov sets labels team=b, but spec.template"):
        kueue.placement(checked, {}, kueue.Placement(labels={"team": "a"}))


def test_a_placed_spec_builds_pods_with_its_placement_and_the_operators_labels() -> None:
    own = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    base = spec(template={"nodeSelector": {"zone": "a"}, "tolerations": [own], "labels": {"team": "a"}})
    placed = kueue.placement(assigned({"cpu": "spot"}), {"spot": flavor("spot", {"pool": "gpu"}, [
        own, {"key": "spot", "value": "yes"}])}, kueue.template_placement(base))
    pod = build_pod(REF, base.with_placement(placed.node_selector, placed.tolerations, placed.labels,
                                             {"provisioned-by": "check"}), 0, 0, "auto")
    assert pod["spec"]["nodeSelector"] == {"zone": "a", "pool": "gpu"}
    assert pod["spec"]["tolerations"] == [own, {"key": "spot", "value": "yes"}]
    assert pod["metadata"]["labels"]["team"] == "a" and pod["metadata"]["labels"]["volt.dev/job"] == "mnist"
    assert pod["metadata"]["annotations"]["provisioned-by"] == "check"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    # the job's own spec is unchanged
    assert build_pod(REF, base, 0, 0, "auto")["spec"]["nodeSelector"] == {"zone": "a"}


def test_a_workload_is_outdated_by_the_gangs_size_or_a_pods_requests_only() -> None:
    queued = workload(cond("QuotaReserved", False, "Pending", "insufficient quota"))
    assert kueue.pending(queued) and not kueue.pending(workload(*ADMITTED_WL))
    assert kueue.outdated(queued, kueue.build_workload(job(), spec(), 2, None)) is None
    # the same quantity written otherwise, a new priority or label: nothing the quota counts
    same = kueue.build_workload(job({"team": "b"}), spec(resources={
        "limits": {"cpu": "2000m", "memory": "4096Mi"}, "requests": {"cpu": "1"}}), 2, 500)
    assert kueue.outdated(queued, same) is None
    assert kueue.outdated(queued, kueue.build_workload(job(), spec(), 1, None)) == "numNodes 2 -> 1"
    more = kueue.build_workload(job(), spec(resources={"limits": {"cpu": "2", "memory": "8Gi"},
                                                       "requests": {"cpu": "1"}}), 3, None)
    assert kueue.outdated(queued, more) == "numNodes 2 -> 3, requests.memory 4Gi -> 8Gi"
    fewer = kueue.build_workload(job(), spec(resources={"limits": {"cpu": "2"}}), 2, None)
    assert kueue.outdated(queued, fewer) == "requests.cpu 1 -> 2, requests.memory 4Gi -> none"


def test_release_after_eviction_clears_the_reservation_once() -> None:
    evicted = workload(*PREEMPTED_WL, admission={"clusterQueue": "cq"})
    status = kueue.release_after_eviction(evicted, NOW)
    assert status is not None and status["admission"] is None
    by_type = {c["type"]: c for c in status["conditions"]}
    assert by_type["QuotaReserved"]["status"] == "False" and by_type["QuotaReserved"]["reason"] == "Pending"
    assert by_type["Admitted"]["status"] == "False"
    assert by_type["Requeued"]["status"] == "True" and by_type["Requeued"]["reason"] == "Preempted"
    assert by_type["Evicted"]["status"] == "True"  # Kueue resets it when it admits again
    assert by_type["QuotaReserved"]["lastTransitionTime"] == format_time(NOW)
    released = workload(*[c for c in status["conditions"]])
    assert kueue.release_after_eviction(released, NOW) is None
    assert kueue.release_after_eviction(workload(*ADMITTED_WL), NOW) is None


def test_release_after_a_stopped_queue_does_not_ask_for_a_requeue() -> None:
    stopped = workload(*ADMITTED_WL, cond("Evicted", True, "ClusterQueueStopped", "stopped"))
    status = kueue.release_after_eviction(stopped, NOW)
    assert status is not None
    assert {c["type"]: c["status"] for c in status["conditions"]}["Requeued"] == "False"


def after(wl: Dict[str, Any], status: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """``wl`` with a status patch applied (None: unchanged)."""
    return wl if status is None else workload(*status["conditions"])


def pods_ready_of(wl: Dict[str, Any]) -> Optional[tuple]:
    found = next((c for c in wl["status"]["conditions"] if c["type"] == "PodsReady"), None)
    return None if found is None else (found["status"], found["reason"])


def test_pods_ready_tells_kueue_when_the_gang_is_up_and_when_it_is_back() -> None:
    admitted = workload(*ADMITTED_WL)
    # waiting for the start: Kueue assumes it without the condition, so nothing is written
    assert kueue.pods_ready(admitted, False, NOW) is None
    up = after(admitted, kueue.pods_ready(admitted, True, NOW))
    assert pods_ready_of(up) == ("True", "Started")
    assert kueue.pods_ready(up, True, NOW) is None  # written once
    lost = after(up, kueue.pods_ready(up, False, NOW))
    assert pods_ready_of(lost) == ("False", "WaitForRecovery")
    assert kueue.pods_ready(lost, False, NOW) is None
    back = after(lost, kueue.pods_ready(lost, True, NOW))
    assert pods_ready_of(back) == ("True", "Recovered")
    assert pods_ready_of(after(back, kueue.pods_ready(back, False, NOW))) == ("False", "WaitForRecovery")
    # not admitted, or evicted: Kueue's word, not the gang's
    assert kueue.pods_ready(workload(), True, NOW) is None
    assert kueue.pods_ready(workload(*PREEMPTED_WL), True, NOW) is None


def test_a_released_gangs_workload_waits_for_the_next_start() -> None:
    up = workload(*ADMITTED_WL, cond("PodsReady", True, "Started"),
                  cond("Evicted", True, "PodsReadyTimeout", "Exceeded the PodsReady timeout"))
    released = after(up, kueue.release_after_eviction(up, NOW))
    assert pods_ready_of(released) == ("False", "WaitForStart")
    assert {c["type"]: c["status"] for c in released["status"]["conditions"]}["Requeued"] == "False"
    # a gang that never came up keeps no condition (the timeout counts from the admission)
    never = workload(*PREEMPTED_WL)
    assert pods_ready_of(after(never, kueue.release_after_eviction(never, NOW))) is None


def test_finished_marks_the_workload_once() -> None:
    status = kueue.finished(workload(*ADMITTED_WL), "Succeeded", "all 2 node(s) finished", NOW)
    assert status is not None
    done = {c["type"]: c for c in status["conditions"]}["Finished"]
    assert (done["status"], done["reason"]) == ("True", "Succeeded")
    assert kueue.finished(workload(*status["conditions"]), "Succeeded", "x", NOW) is None
    failed = kueue.finished(workload(), "Failed", "rank 1 failed", NOW)
    assert failed is not None and failed["conditions"][-1]["reason"] == "Failed"


@pytest.mark.parametrize("phase, state, gone, stopping", [
    ("Running", {"terminated": {"exitCode": 0}}, False, True),   # the kubelet has not caught up
    ("Running", {"terminated": {"exitCode": 1}}, False, True),
    ("Succeeded", {"terminated": {"exitCode": 0}}, False, False),
    ("Failed", {"terminated": {"exitCode": 1}}, False, False),
    ("Running", {"running": {}}, False, False),                    # still training: not the settle's to wait on
    ("Running", {"terminated": {"exitCode": 0}}, True, False),     # deleted: it holds nothing
])
def test_a_pod_whose_container_exited_is_stopping_until_its_phase_is_terminal(
        phase: str, state: Dict[str, Any], gone: bool, stopping: bool) -> None:
    """KueueGate.settle keeps the quota while any pod is stopping: the scheduler counts a pod's
    requests until its phase is terminal, which a real kubelet writes after the container's exit."""
    assert trainer_pod(phase, state, gone).stopping is stopping


def trainer_pod(phase: str, state: Dict[str, Any], gone: bool = False) -> Any:
    """Rank 0's pod as the operator sees it, with this phase and trainer container state."""
    body = build_pod(REF, spec(), 0, 0, "auto")
    body["status"] = {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}
    return pod_view(body, gone=gone)


def stopped_pod(phase: str, finished: Optional[str]) -> Any:
    return trainer_pod(phase, {"terminated": {"exitCode": 0, **({"finishedAt": finished} if finished else {})}})


def test_the_quota_waits_for_a_stopping_pod_for_a_bounded_time() -> None:
    """release_wait: the longest of the stopping pods' waits, each until its node counts as
    not reporting; a terminal pod holds nothing; an exit with no time waits a whole grace."""
    at = format_time(NOW - timedelta(seconds=20))
    long_ago = format_time(NOW - timedelta(seconds=kueue_gate.STOPPING_GRACE_SECONDS + 1))
    assert kueue_gate.release_wait([stopped_pod("Succeeded", at)], NOW) is None
    assert kueue_gate.release_wait([stopped_pod("Running", at)], NOW) == pytest.approx(
        kueue_gate.STOPPING_GRACE_SECONDS - 20)
    assert kueue_gate.release_wait([stopped_pod("Running", long_ago)], NOW) is None  # its node does not report
    assert kueue_gate.release_wait([stopped_pod("Running", long_ago), stopped_pod("Running", at)], NOW) == \
        pytest.approx(kueue_gate.STOPPING_GRACE_SECONDS - 20)
    assert kueue_gate.release_wait([stopped_pod("Running", None)], NOW) == kueue_gate.STOPPING_GRACE_SECONDS


# --- the status machine -------------------------------------------------------

QUEUED = kueue.Admission(False, "Pending", "Workload trainingjob-mnist: insufficient quota")
ADMIT = kueue.Admission(True, "Admitted", "Kueue admitted Workload trainingjob-mnist in ClusterQueue cq")
PREEMPT = kueue.Admission(False, "InClusterQueue", "Kueue evicted Workload trainingjob-mnist: Preempted",
                          preempted=True)


def run(status: TrainingJobStatus, pods: List[Any], gate: Optional[kueue.Admission]) -> Any:
    return decide(spec(), JobMeta("mnist"), status, pods, True, NOW, admission=gate)


def test_new_job_waits_queued_with_no_pod_until_admitted() -> None:
    plan = run(TrainingJobStatus(), [], QUEUED)
    assert plan.status.phase == "Queued" and plan.create_ranks == [] and plan.delete_pods == []
    admitted = condition(plan.status, ADMITTED)
    assert (admitted.status, admitted.reason, admitted.message) == ("False", "Pending", QUEUED.message)
    assert condition(plan.status, RUNNING).reason == "Queued"
    assert [e.reason for e in plan.events] == ["Queued"]
    again = run(plan.status, [], QUEUED)
    assert again.events == [] and again.status.phase == "Queued"
    go = run(plan.status, [], ADMIT)
    assert go.status.phase == "Pending" and go.create_ranks == [0, 1] and go.status.attempt == 0
    assert condition(go.status, ADMITTED).status == "True"
    assert go.resume == "auto"
    assert [e.reason for e in go.events] == ["Admitted", "Created"]


def test_a_rebuilt_workload_is_told_once_to_a_queued_job() -> None:
    queued = run(TrainingJobStatus(), [], QUEUED).status
    rebuilt = kueue.Admission(False, kueue.WORKLOAD_RECREATED, "the job changed while queued (numNodes 3 -> 2)")
    plan = run(queued, [], rebuilt)
    assert [(e.reason, e.message) for e in plan.events] == [(kueue.WORKLOAD_RECREATED, rebuilt.message)]
    assert condition(plan.status, ADMITTED).reason == kueue.WORKLOAD_RECREATED
    assert run(plan.status, [], QUEUED).events == []


def test_a_running_job_changed_while_admitted_stops_its_gang_without_a_warning() -> None:
    up = run(run(TrainingJobStatus(), [], ADMIT).status, [pod(0), pod(1)], ADMIT).status
    assert up.phase == "Running"
    changed = kueue.Admission(False, kueue.CHANGED_WHILE_ADMITTED,
                              "the job changed while admitted (numNodes 2 -> 3): Workload w is created again")
    plan = run(up, [pod(0), pod(1)], changed)
    assert plan.status.phase == "Queued" and plan.status.attempt == 1 and plan.status.restarts == 0
    assert sorted(plan.delete_pods) == ["mnist-node-0", "mnist-node-1"]
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", kueue.CHANGED_WHILE_ADMITTED),
                                                         ("Normal", "Queued")]
    assert "checkpoints on SIGTERM" in plan.events[0].message
    assert condition(plan.status, PREEMPTED) is None


def test_job_admitted_at_once_runs_as_without_kueue() -> None:
    plan = run(TrainingJobStatus(), [], ADMIT)
    assert plan.status.phase == "Pending" and plan.create_ranks == [0, 1]
    running = run(plan.status, [pod(0), pod(1)], ADMIT)
    assert running.status.phase == "Running"
    assert [e.reason for e in running.events] == ["Running"]


def test_preemption_deletes_the_gang_spends_no_budget_and_resumes_when_readmitted() -> None:
    first = run(TrainingJobStatus(), [], ADMIT)
    up = run(first.status, [pod(0), pod(1)], ADMIT).status
    assert up.phase == "Running"
    plan = run(up, [pod(0), pod(1)], PREEMPT)
    assert plan.status.phase == "Queued"
    assert sorted(plan.delete_pods) == ["mnist-node-0", "mnist-node-1"]
    assert plan.status.attempt == 1 and plan.status.restarts == 0 and plan.status.restarts_counted == 0
    preempted = condition(plan.status, PREEMPTED)
    assert (preempted.status, preempted.reason) == ("True", "InClusterQueue")
    assert condition(plan.status, ADMITTED).reason == "InClusterQueue"
    assert [e.reason for e in plan.events] == ["Preempted", "Queued"]
    # The old gang checkpoints and exits 75 while still queued: nothing is judged, nothing created.
    stopping = run(plan.status, [pod(0, deleting=True, exit_code=75), pod(1, deleting=True)], PREEMPT)
    assert stopping.status.phase == "Queued" and stopping.create_ranks == []
    assert stopping.status.restarts == 0 and stopping.events == []
    # Readmitted before the old pods are gone: wait for them (same names), then attempt 1 resumes.
    readmitted = run(stopping.status, [pod(0, deleting=True, exit_code=75)], ADMIT)
    assert readmitted.status.phase == "Pending" and readmitted.create_ranks == []
    assert condition(readmitted.status, PREEMPTED).status == "False"
    resumed = run(readmitted.status, [], ADMIT)
    assert resumed.create_ranks == [0, 1] and resumed.status.attempt == 1 and resumed.resume == "auto"
    assert resumed.status.restarts == 0


def test_eviction_other_than_preemption_queues_without_a_preempted_condition() -> None:
    up = run(run(TrainingJobStatus(), [], ADMIT).status, [pod(0), pod(1)], ADMIT).status
    stopped = kueue.Admission(False, "ClusterQueueStopped", "Kueue evicted Workload: stopped")
    plan = run(up, [pod(0), pod(1)], stopped)
    assert plan.status.phase == "Queued" and condition(plan.status, PREEMPTED) is None
    assert [e.reason for e in plan.events] == ["Evicted", "Queued"]


def test_without_kueue_decide_is_unchanged() -> None:
    plan = run(TrainingJobStatus(), [], None)
    assert plan.status.phase == "Pending" and plan.create_ranks == [0, 1]
    assert condition(plan.status, ADMITTED) is None


def test_suspend_wins_over_admission() -> None:
    plan = decide(spec(suspend=True), JobMeta("mnist"), TrainingJobStatus(), [], True, NOW,
                  admission=ADMIT)
    assert plan.status.phase == "Suspended"


def test_a_suspended_jobs_workload_is_inactive_and_resuming_queues_a_new_attempt() -> None:
    assert kueue.build_workload(job(), spec(suspend=True), 2, None)["spec"]["active"] is False
    assert kueue.is_active(kueue.build_workload(job(), spec(), 2, None))
    assert not kueue.is_active({"spec": {"active": False}}) and kueue.is_active({"spec": {}})
    suspended = decide(spec(suspend=True), JobMeta("mnist"), TrainingJobStatus(), [], True, NOW,
                       admission=QUEUED).status
    # resumed while its Workload waits in the queue again (the suspension gave the quota back)
    plan = decide(spec(), JobMeta("mnist"), suspended, [], True, NOW, admission=QUEUED)
    assert plan.status.phase == "Queued" and plan.status.attempt == suspended.attempt + 1
    assert condition(plan.status, "Suspended").status == "False"
    assert [e.reason for e in plan.events] == ["Resumed", "Queued"]
    go = run(plan.status, [], ADMIT)
    assert go.status.phase == "Pending" and go.create_ranks == [0, 1] and go.status.attempt == plan.status.attempt


def test_finished_job_stays_finished_whatever_kueue_says() -> None:
    done = TrainingJobStatus(phase="Succeeded", completion_time=format_time(NOW))
    assert run(done, [], PREEMPT).status.phase == "Succeeded"


def test_an_admitted_workload_is_compared_with_the_spec_once_per_version_and_generation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison builds the whole Workload; a job looked at again with the same Workload
    version, generation and size is not compared again. Its running gang stops once the spec
    changes (a new generation). From the watch cache: nothing is sent."""
    cache = ObservedCache()
    admitted = workload(*ADMITTED_WL)
    cache.put_workload(admitted)
    gate = kueue_gate.KueueGate(client=None, cache=cache)  # type: ignore[arg-type]
    compared: List[str] = []
    outdated = kueue.outdated
    monkeypatch.setattr(kueue, "outdated", lambda wl, wanted: compared.append("x") or outdated(wl, wanted))
    first = {**job(), "metadata": {**job()["metadata"], "generation": 1}}
    gang = [pod(0), pod(1)]
    for _ in range(3):
        assert gate.admission(first, spec(), TrainingJobStatus(), gang, NOW).admitted
    assert len(compared) == 1
    grown = spec(trainer={"numNodes": 3, "devices": 2, "accelerator": "cpu"})
    second = {**first, "metadata": {**first["metadata"], "generation": 2}}
    stop = gate.admission(second, grown, TrainingJobStatus(), gang, NOW)
    assert not stop.admitted and stop.reason == kueue.CHANGED_WHILE_ADMITTED
    assert "numNodes 2 -> 3" in stop.message and len(compared) == 2
    gate.forget((REF.namespace, REF.name))
    assert gate.admission(first, spec(), TrainingJobStatus(), gang, NOW).admitted
    assert len(compared) == 3
