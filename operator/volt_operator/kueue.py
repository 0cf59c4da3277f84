"""Gang admission through Kueue: pure builders and decisions (docs/kueue.md).

A TrainingJob labelled ``kueue.x-k8s.io/queue-name`` (with the operator's
``--kueue``) is admitted as one unit: the operator creates one Workload for it
(one podSet of ``numNodes`` pods with the trainer's requests) and creates no pod
until Kueue admits that Workload. When Kueue evicts it (preemption, a stopped
queue), the job goes back to Queued: its pods are deleted (SIGTERM: the engine
checkpoints and exits 75), and once they are all gone the operator clears the
Workload's quota reservation, which is what tells Kueue the capacity is free.
That last step is the owner's in Kueue (its own job integrations do the same);
Kueue's controllers do not act for a Workload whose owner kind they do not
manage. A finished job marks its Workload Finished, which releases the quota.
An admitted gang runs where Kueue put it: the node labels and tolerations of
the ResourceFlavors assigned to its pod set, and what its admission checks ask
for, are added to each pod (``placement``), as Kueue's own integrations do.

Nothing here talks to the API server; ``kueue_gate.py`` does the reads and writes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from kubernetes.utils.quantity import parse_quantity

from .api import TrainingJobSpec, format_time
from .builders import LABEL_JOB, JobRef, build_pod, controller_uid

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# A WorkloadPriorityClass, as Kueue's own integrations read it (it wins over the pod's).
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
GROUP = "kueue.x-k8s.io"
WORKLOAD_API_VERSION = f"{GROUP}/v1beta2"
WORKLOADS = "workloads"
RESOURCE_FLAVORS = "resourceflavors"
POD_SET = "node"

# Workload condition types (kueue.x-k8s.io/v1beta2).
QUOTA_RESERVED = "QuotaReserved"
ADMITTED = "Admitted"
EVICTED = "Evicted"
PREEMPTED = "Preempted"
REQUEUED = "Requeued"
FINISHED = "Finished"
# The job's Admitted reason when its pending Workload was rebuilt for a changed spec.
WORKLOAD_RECREATED = "WorkloadRecreated"
# ... and while the gang of an admitted job whose spec changed stops, before the rebuild.
CHANGED_WHILE_ADMITTED = "ChangedWhileAdmitted"
# Whether the admitted gang is up; Kueue's waitForPodsReady evicts a Workload that does
# not say so within its timeout. The reasons are Kueue's (a missing condition: WaitForStart).
PODS_READY = "PodsReady"
STARTED, RECOVERED = "Started", "Recovered"
WAIT_FOR_START, WAIT_FOR_RECOVERY = "WaitForStart", "WaitForRecovery"


@dataclass(frozen=True)
class Admission:
    """What the job's Workload says, for ``status.decide``: may the gang run?

    ``admitted``: Kueue admitted the Workload and has not asked for it back.
    ``preempted``: Kueue evicted it to make room for another (the job's Preempted
    condition). ``reason``/``message``: Kueue's own words for the current state.
    """

    admitted: bool
    reason: str
    message: str
    preempted: bool = False


@dataclass(frozen=True)
class Placement:
    """Where and as what an admitted gang's pods run: the job's own ``spec.template`` fields
    joined by what Kueue's admission adds (``placement``)."""

    node_selector: Dict[str, str] = field(default_factory=dict)
    tolerations: Tuple[Dict[str, Any], ...] = ()
    labels: Dict[str, str] = field(default_factory=dict)
    annotations: Dict[str, str] = field(default_factory=dict)


class PlacementError(Exception):
    """The gang cannot be placed as admitted. ``permanent``: asking again gives the same
    answer (two of the job, its flavors and its admission checks set one key differently)."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


def queue_name(job: Dict[str, Any]) -> Optional[str]:
    """The LocalQueue a TrainingJob asks for, or None: not queued through Kueue."""
    return ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL) or None


def workload_name(job_name: str) -> str:
    """The Workload of TrainingJob ``job_name`` (same namespace; one per job)."""
    return f"trainingjob-{job_name}"[:253]


def priority_class_ref(job: Dict[str, Any], spec: TrainingJobSpec) -> Optional[Dict[str, str]]:
    """Which priority class sets the Workload's priority: the job's
    ``kueue.x-k8s.io/priority-class`` label (a WorkloadPriorityClass), else the
    pods' ``spec.template.priorityClassName``; None: priority 0."""
    labels = (job.get("metadata") or {}).get("labels") or {}
    if labels.get(PRIORITY_CLASS_LABEL):
        return {"group": GROUP, "kind": "WorkloadPriorityClass", "name": labels[PRIORITY_CLASS_LABEL]}
    if spec.template.priority_class_name:
        return {"group": "scheduling.k8s.io", "kind": "PriorityClass",
                "name": spec.template.priority_class_name}
    return None


def _pod_set_template(ref: JobRef, spec: TrainingJobSpec) -> Dict[str, Any]:
    """What Kueue needs of a node pod: the trainer's requests and where it may run.

    Requests default to limits, as the API server defaults a pod's, so that a job
    that sets only limits is counted at what its pods will request."""
    pod = build_pod(ref, spec, 0, 0, "auto")["spec"]
    container = pod["containers"][0]
    resources = container.get("resources") or {}
    requests = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    template: Dict[str, Any] = {
        "containers": [{"name": container["name"], "image": container["image"],
                        "resources": {**resources, **({"requests": requests} if requests else {})}}],
    }
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        if key in pod:
            template[key] = pod[key]
    return {"spec": template}


def build_workload(
    job: Dict[str, Any], spec: TrainingJobSpec, num_nodes: int, priority: Optional[int]
) -> Dict[str, Any]:
    """The Workload that stands for the whole gang in Kueue's queue.

    ``priority``: the value of the priority class (Kueue's webhook would fill it
    in; the local setup runs Kueue without webhooks, so the operator does)."""
    meta = job["metadata"]
    ref = JobRef(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
    workload_spec: Dict[str, Any] = {
        # A suspended job waits outside the queue (and holds no quota) until it is resumed.
        "active": not spec.suspend,
        "queueName": queue_name(job),
        "podSets": [{"name": POD_SET, "count": num_nodes, "template": _pod_set_template(ref, spec)}],
    }
    priority_ref = priority_class_ref(job, spec)
    if priority_ref is not None:
        workload_spec["priorityClassRef"] = priority_ref
    if priority is not None:
        workload_spec["priority"] = priority
    return {
        "apiVersion": WORKLOAD_API_VERSION,
        "kind": "Workload",
        "metadata": {
            "name": workload_name(ref.name),
            "namespace": ref.namespace,
            "labels": {LABEL_JOB: ref.name},
            "ownerReferences": [ref.owner_reference()],
        },
        "spec": workload_spec,
    }


def _requests(pod_set: Dict[str, Any]) -> Dict[str, str]:
    containers = ((pod_set.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    return dict((containers[0].get("resources") or {}).get("requests") or {})


def outdated(workload: Dict[str, Any], wanted: Dict[str, Any]) -> Optional[str]:
    """What the queue counts that differs between the job's Workload and the one its spec
    builds now (``wanted``): the gang's size or a pod's requests, e.g. "numNodes 4 -> 2";
    None when they agree. A pending Workload is rebuilt for it at once, an admitted one
    once the gang has stopped (``KueueGate``)."""
    old_set = ((workload.get("spec") or {}).get("podSets") or [{}])[0]
    new_set = wanted["spec"]["podSets"][0]
    changes = []
    if old_set.get("count") != new_set["count"]:
        changes.append(f"numNodes {old_set.get('count')} -> {new_set['count']}")
    old, new = _requests(old_set), _requests(new_set)
    for name in sorted(set(old) | set(new)):
        if name not in old or name not in new or parse_quantity(old[name]) != parse_quantity(new[name]):
            changes.append(f"requests.{name} {old.get(name, 'none')} -> {new.get(name, 'none')}")
    return ", ".join(changes) or None


def is_active(workload: Dict[str, Any]) -> bool:
    """Kueue may queue and admit the Workload (``spec.active``, true unless set false)."""
    return (workload.get("spec") or {}).get("active", True) is not False


def pending(workload: Dict[str, Any]) -> bool:
    """Kueue holds no quota for the Workload: it waits in its queue."""
    return not _is_true(workload, QUOTA_RESERVED)


def _condition(workload: Dict[str, Any], type_: str) -> Optional[Dict[str, Any]]:
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def _is_true(workload: Dict[str, Any], type_: str) -> bool:
    cond = _condition(workload, type_)
    return cond is not None and cond.get("status") == "True"


def admission(workload: Optional[Dict[str, Any]]) -> Admission:
    """Read a Workload (None: not created yet) as the gate in front of the gang."""
    if workload is None:
        return Admission(False, "WorkloadCreated", "the job's Workload was just created; "
                         "waiting for Kueue to queue it")
    name = workload["metadata"]["name"]
    evicted = _condition(workload, EVICTED)
    if evicted is not None and evicted.get("status") == "True":
        preempted = _condition(workload, PREEMPTED)
        is_preemption = evicted.get("reason") == "Preempted"
        reason = (preempted or {}).get("reason") if is_preemption and preempted else evicted.get("reason")
        return Admission(False, reason or "Evicted",
                         f"Kueue evicted Workload {name}: {evicted.get('message', '')}",
                         preempted=is_preemption)
    if _is_true(workload, ADMITTED):
        queue = ((workload.get("status") or {}).get("admission") or {}).get("clusterQueue", "")
        return Admission(True, "Admitted", f"Kueue admitted Workload {name}"
                         + (f" in ClusterQueue {queue}" if queue else "")
                         + describe_flavors(assigned_flavors(workload)))
    reserved = _condition(workload, QUOTA_RESERVED)
    if reserved is not None:
        return Admission(False, reserved.get("reason") or "Pending",
                         f"Workload {name}: {reserved.get('message', '')}")
    return Admission(False, "Pending", f"Workload {name} waits in LocalQueue "
                     f"{(workload.get('spec') or {}).get('queueName', '')}")


def _set(conditions: List[Dict[str, Any]], type_: str, status: bool, reason: str, message: str,
         now: datetime, generation: Optional[int]) -> List[Dict[str, Any]]:
    """``conditions`` with one upserted (metav1.Condition: the time moves when the status flips)."""
    text = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type_), None)
    new = {"type": type_, "status": text, "reason": reason, "message": message[:32768],
           "lastTransitionTime": (old["lastTransitionTime"] if old and old.get("status") == text
                                  and old.get("lastTransitionTime") else format_time(now))}
    if generation is not None:
        new["observedGeneration"] = generation
    return [c for c in conditions if c.get("type") != type_] + [new]


def release_after_eviction(workload: Dict[str, Any], now: datetime) -> Optional[Dict[str, Any]]:
    """The status to write once an evicted job has no pod left: quota reservation and
    admission cleared (Kueue then frees the capacity and queues the Workload again),
    Requeued=True after a preemption. None when there is nothing to release."""
    evicted = _condition(workload, EVICTED)
    if evicted is None or evicted.get("status") != "True" or not _is_true(workload, QUOTA_RESERVED):
        return None
    status = workload.get("status") or {}
    generation = workload["metadata"].get("generation")
    message = evicted.get("message", "")
    conditions = list(status.get("conditions") or [])
    requeue = evicted.get("reason") in ("Preempted", "NodeFailures")
    conditions = _set(conditions, REQUEUED, requeue, evicted.get("reason") or "Evicted", message,
                      now, generation)
    conditions = _set(conditions, QUOTA_RESERVED, False, "Pending", message, now, generation)
    if _condition(workload, PODS_READY) is not None:  # the next admission waits for a new gang
        conditions = _set(conditions, PODS_READY, False, WAIT_FOR_START,
                          "the gang was stopped; waiting for the next admission", now, generation)
    if _condition(workload, ADMITTED) is not None:
        conditions = _set(conditions, ADMITTED, False, "NoReservation",
                          "The workload has no reservation", now, generation)
    return {"conditions": conditions, "admission": None}


def pods_ready(workload: Dict[str, Any], ready: bool, now: datetime) -> Optional[Dict[str, Any]]:
    """The status that tells Kueue whether the admitted gang is up (``ready``: every pod of
    the current attempt running), or None when the Workload says so already or is not
    admitted. Kueue's ``waitForPodsReady`` reads it: a gang not up within its timeout
    after admission, or not back within its recoveryTimeout after it was up, is evicted.
    Up again after a restart reads Recovered, as for Kueue's own jobs."""
    if not _is_true(workload, ADMITTED) or _is_true(workload, EVICTED):
        return None
    old = _condition(workload, PODS_READY)
    was_up = old is not None and (old.get("status") == "True" or old.get("reason") == WAIT_FOR_RECOVERY)
    if ready:
        status = True
        reason = RECOVERED if old is not None and old.get("reason") in (WAIT_FOR_RECOVERY, RECOVERED) else STARTED
        message = "all the gang's pods are running"
    elif old is None:
        return None  # the start is awaited, which Kueue assumes without the condition
    else:
        status = False
        reason = WAIT_FOR_RECOVERY if was_up else WAIT_FOR_START
        message = ("a pod of the running gang stopped; waiting for the gang to be up again" if was_up
                   else "waiting for the gang's pods to run")
    if old is not None and old.get("status") == ("True" if status else "False") and old.get("reason") == reason:
        return None
    return {"conditions": _set(list((workload.get("status") or {}).get("conditions") or []), PODS_READY,
                               status, reason, message, now, workload["metadata"].get("generation"))}


def finished(workload: Dict[str, Any], phase: str, message: str, now: datetime) -> Optional[Dict[str, Any]]:
    """The status that marks the Workload Finished (its quota is released), or None if it is."""
    if _is_true(workload, FINISHED):
        return None
    conditions = _set(list((workload.get("status") or {}).get("conditions") or []), FINISHED, True,
                      "Succeeded" if phase == "Succeeded" else "Failed", message, now,
                      workload["metadata"].get("generation"))
    return {"conditions": conditions}


def owned_by(workload: Dict[str, Any], job: Dict[str, Any]) -> bool:
    """The Workload is this job's (not a leftover of a deleted job of the same name)."""
    return controller_uid(workload) == job["metadata"]["uid"]


def assigned_flavors(workload: Dict[str, Any]) -> List[str]:
    """The ResourceFlavors Kueue's admission assigned to the gang's pod set (sorted, once each);
    [] while the Workload is not admitted."""
    assignment = ((workload.get("status") or {}).get("admission") or {}).get("podSetAssignments") or []
    names = {flavor for pod_set in assignment if pod_set.get("name") == POD_SET
             for flavor in (pod_set.get("flavors") or {}).values()}
    return sorted(names)


def template_placement(spec: TrainingJobSpec) -> Placement:
    """The job's own placement fields (spec.template), where ``placement`` starts."""
    template = spec.template
    return Placement(dict(template.node_selector), tuple(t.to_api() for t in template.tolerations),
                     dict(template.labels), dict(template.annotations))


def placement(workload: Dict[str, Any], flavors: Mapping[str, Dict[str, Any]], own: Placement) -> Placement:
    """The gang's placement, as Kueue's own integrations build it: the job's ``own`` (its
    spec.template), the ``nodeLabels`` and ``tolerations`` of the ResourceFlavors assigned to
    its pod set (name -> object), and the ``podSetUpdates`` of the Workload's admission checks
    (labels, annotations, nodeSelector, tolerations; a ProvisioningRequest check's annotations
    that tie the pods to the provisioned nodes, say). A key two of them set to different values
    cannot be met: ``PlacementError`` naming both (Kueue refuses the same)."""
    sources: List[Tuple[str, Dict[str, Any]]] = [
        ("spec.template", {"nodeSelector": own.node_selector, "tolerations": list(own.tolerations),
                           "labels": own.labels, "annotations": own.annotations})]
    for name in sorted(flavors):
        spec = flavors[name].get("spec") or {}
        sources.append((f"ResourceFlavor {name}", {"nodeSelector": spec.get("nodeLabels") or {},
                                                   "tolerations": spec.get("tolerations") or []}))
    for check in (workload.get("status") or {}).get("admissionChecks") or []:
        for update in check.get("podSetUpdates") or []:
            if update.get("name") == POD_SET:
                sources.append((f"admission check {check.get('name', '')}", update))
    merged: Dict[str, Dict[str, str]] = {"nodeSelector": {}, "labels": {}, "annotations": {}}
    set_by: Dict[Tuple[str, str], str] = {}
    tolerations: List[Dict[str, Any]] = []
    for source, fields in sources:
        for kind, values in merged.items():
            for key, value in sorted((fields.get(kind) or {}).items()):
                if key in values and values[key] != value:
                    raise PlacementError(
                        f"{source} sets {kind} {key}={value}, but {set_by[(kind, key)]} sets "
                        f"{key}={values[key]}: the gang cannot be placed", permanent=True)
                values[key] = value
                set_by.setdefault((kind, key), source)
        for toleration in fields.get("tolerations") or []:
            # The API server's form keeps "" for unset fields (operator "": Equal, effect "": all).
            toleration = {k: v for k, v in toleration.items() if v not in ("", None)}
            if toleration not in tolerations:
                tolerations.append(toleration)
    return Placement(node_selector=merged["nodeSelector"], tolerations=tuple(tolerations),
                     labels=merged["labels"], annotations=merged["annotations"])


def describe_flavors(names: Sequence[str]) -> str:
    """The flavors for an admission message: ' (ResourceFlavor a)', ' (ResourceFlavors a, b)';
    '' for none."""
    if not names:
        return ""
    return f" (ResourceFlavor{'s' if len(names) > 1 else ''} {', '.join(names)})"
