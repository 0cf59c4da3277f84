"""The operator's reads and writes of Kueue objects (the decisions are in ``kueue.py``).

``KueueGate.admission`` is called by the reconciler for a job that names a
LocalQueue: it creates the job's Workload when there is none, hands back its
``Admission`` for ``status.decide``, and, once an evicted job has no pod left,
clears the Workload's reservation. ``KueueGate.placement`` gives the pods of an
admitted gang the node labels and tolerations of their ResourceFlavors.
``KueueGate.settle`` runs after the status is written: the Workload of a
running job says whether its gang is up (PodsReady), a finished job's is
marked Finished. Workloads are read from the watch cache (the operator watches
them with --kueue), so a reconcile of a job whose Workload has not changed
reads nothing.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote

from . import kueue
from .api import TERMINAL_PHASES, TrainingJobSpec, TrainingJobStatus, parse_time
from .builders import LABEL_JOB
from .cache import JobKey, ObservedCache, resource_version
from .kube import ApiError, KubeClient
from .observed import PodView
from .status import target_num_nodes

log = logging.getLogger("volt_operator.kueue")

# A kubelet makes a pod's phase terminal seconds after its container exits; a pod still
# not terminal this long after has a node that does not report (see release_wait).
STOPPING_GRACE_SECONDS = 60.0


def workload_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/apis/{kueue.WORKLOAD_API_VERSION}/namespaces/{quote(namespace)}/{kueue.WORKLOADS}"
    return path + (f"/{quote(name)}" if name else "") + (f"/{sub}" if sub else "")


class KueueGate:
    """Kueue's Workloads for the TrainingJobs that ask for a queue (operator flag --kueue)."""

    def __init__(self, client: KubeClient, cache: Optional[ObservedCache] = None) -> None:
        self.client = client
        self.cache = cache or ObservedCache()
        # Job -> (Workload resourceVersion, job generation, gang size) last found to match:
        # comparing builds the whole Workload, and most looks at a job change none of these.
        self._matching: Dict[JobKey, Tuple[str, int, int]] = {}

    def forget(self, key: JobKey) -> None:
        """The job is gone."""
        self._matching.pop(key, None)

    def _workload(self, namespace: str, name: str) -> Optional[Dict[str, Any]]:
        """The job's Workload from the watch cache, read (once) when the cache does not know it."""
        known, workload = self.cache.workload((namespace, name))
        if known:
            return workload
        workload = self._get(workload_path(namespace, name))
        if workload is None:
            self.cache.put_workload({"metadata": {"namespace": namespace, "name": name}}, exists=False)
        else:
            self.cache.put_workload(workload)
        return workload

    def _get(self, path: str) -> Optional[Dict[str, Any]]:
        try:
            return self.client.request("GET", path)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def _priority_class(self, ref: Dict[str, str]) -> Optional[Dict[str, Any]]:
        if ref["kind"] == "WorkloadPriorityClass":
            return self._get(f"/apis/{kueue.GROUP}/v1beta2/workloadpriorityclasses/{quote(ref['name'])}")
        return self._get(f"/apis/scheduling.k8s.io/v1/priorityclasses/{quote(ref['name'])}")

    def admission(
        self, job: Dict[str, Any], spec: TrainingJobSpec, status: TrainingJobStatus,
        pods: List[PodView], now: datetime,
    ) -> kueue.Admission:
        meta = job["metadata"]
        namespace, name = meta["namespace"], kueue.workload_name(meta["name"])
        workload = self._workload(namespace, name)
        if workload is not None and not kueue.owned_by(workload, job):
            return kueue.Admission(False, "WorkloadConflict",
                                   f"Workload {name} belongs to another object; delete it")
        if workload is None:
            if status.phase in TERMINAL_PHASES:
                return kueue.Admission(True, "Finished", "the job has finished")
            return self._create(job, spec, status) or kueue.admission(None)
        if status.phase not in TERMINAL_PHASES and kueue.is_active(workload) == spec.suspend:
            # spec.suspend deactivates the Workload: Kueue evicts it, and the quota is
            # released below once the pods are gone; resuming activates it (queued again).
            workload = self._patch(workload, {"spec": {"active": not spec.suspend}})
            log.info("%s/%s: Workload %s %s", namespace, meta["name"], name,
                     "deactivated (suspended)" if spec.suspend else "activated (resumed)")
        gang_up = any(p.active or p.deleting for p in pods if not p.gone)
        if status.phase not in TERMINAL_PHASES:
            rebuilt = self._follow_spec(job, spec, status, workload, gang_up)
            if rebuilt is not None:
                return rebuilt
        if not gang_up:
            released = kueue.release_after_eviction(workload, now)
            if released is not None:
                self._patch_status(workload, released)
                log.info("%s/%s: gang stopped after eviction; released Workload %s", namespace,
                         meta["name"], name)
        return kueue.admission(workload)

    def _follow_spec(self, job: Dict[str, Any], spec: TrainingJobSpec, status: TrainingJobStatus,
                     workload: Dict[str, Any], gang_up: bool) -> Optional[kueue.Admission]:
        """Rebuild a Workload whose size or requests no longer match the job's spec, so the
        quota Kueue holds is the job's: a queued one at once (it queues again at the back),
        an admitted one once its gang has stopped (Kueue's own integrations stop a job that
        no longer matches its Workload too). The Admission that keeps the gang stopped
        meanwhile; None when the Workload matches."""
        key = (job["metadata"]["namespace"], job["metadata"]["name"])
        size = target_num_nodes(spec, status)
        seen = (str(workload["metadata"].get("resourceVersion")), int(job["metadata"].get("generation") or 0), size)
        if self._matching.get(key) == seen:
            return None
        change = kueue.outdated(workload, kueue.build_workload(job, spec, size, None))
        if change is None:
            self._matching[key] = seen
            return None
        name = workload["metadata"]["name"]
        queued = kueue.pending(workload)
        when = "queued" if queued else "admitted"
        if not queued and gang_up:
            return kueue.Admission(False, kueue.CHANGED_WHILE_ADMITTED, (
                f"the job changed while admitted ({change}): Workload {name} is created again "
                "once the gang has stopped, and the job queues for its new size"))
        if not self._delete(workload):
            # Changed since read (Kueue admitted or evicted it): decide again on its next version.
            return None if queued else kueue.Admission(False, kueue.CHANGED_WHILE_ADMITTED, (
                f"the job changed while admitted ({change}): Workload {name} is created again"))
        log.info("%s/%s: %s while %s: Workload %s created again", job["metadata"]["namespace"],
                 job["metadata"]["name"], change, when, name)
        return self._create(job, spec, status) or kueue.Admission(
            False, kueue.WORKLOAD_RECREATED, f"the job changed while {when} ({change}): Workload "
            f"{name} was created again, and waits for Kueue to queue it")

    def _create(self, job: Dict[str, Any], spec: TrainingJobSpec,
                status: TrainingJobStatus) -> Optional[kueue.Admission]:
        """Create the job's Workload; an Admission that says why it could not be, or None."""
        meta = job["metadata"]
        namespace, name = meta["namespace"], kueue.workload_name(meta["name"])
        # Kueue's webhook would resolve the priority; without webhooks the owner does.
        priority = None
        ref = kueue.priority_class_ref(job, spec)
        if ref is not None:
            found = self._priority_class(ref)
            if found is None:
                return kueue.Admission(False, "PriorityClassNotFound",
                                       f"{ref['kind']} {ref['name']} does not exist")
            priority = int(found.get("value", 0))
        body = kueue.build_workload(job, spec, target_num_nodes(spec, status), priority)
        try:
            created = self.client.request("POST", workload_path(namespace), body)
            if isinstance(created, dict) and created.get("metadata"):
                self.cache.put_workload(created)
            log.info("%s/%s: created Workload %s in LocalQueue %s", namespace, meta["name"],
                     name, kueue.queue_name(job))
        except ApiError as exc:
            if exc.not_found:  # the resource itself: Kueue's CRDs are not installed
                return kueue.Admission(False, "KueueNotInstalled", (
                    f"the API server does not serve {kueue.WORKLOAD_API_VERSION} Workloads: install "
                    "Kueue, or run the operator without --kueue"))
            if exc.refused:  # e.g. a queue name that is not a valid object name
                return kueue.Admission(False, "WorkloadRefused", f"creating Workload {name}: {exc}")
            if not exc.already_exists:
                raise
        return None

    def _delete(self, workload: Dict[str, Any]) -> bool:
        """Delete this version of the Workload; False when it has changed since it was read
        (Kueue may just have admitted it: the watch brings that version)."""
        meta = workload["metadata"]
        try:
            self.client.request("DELETE", workload_path(meta["namespace"], meta["name"]), {
                "kind": "DeleteOptions", "apiVersion": "v1",
                "preconditions": {"uid": meta["uid"], "resourceVersion": meta["resourceVersion"]}})
        except ApiError as exc:
            if exc.conflict:
                return False
            if not exc.not_found:
                raise
        self.cache.put_workload({"metadata": {"namespace": meta["namespace"], "name": meta["name"]}},
                                exists=False)
        return True

    def placement(self, namespace: str, job_name: str, spec: TrainingJobSpec) -> TrainingJobSpec:
        """``spec`` for pods that run where Kueue admitted the job: the ResourceFlavors assigned
        to its Workload add their node labels and tolerations to ``spec.template``, its admission
        checks their podSetUpdates (``kueue.placement``). Read when a gang's pods are created,
        not at every reconcile. Raises ``kueue.PlacementError``."""
        workload = self._workload(namespace, kueue.workload_name(job_name)) or {}
        names = kueue.assigned_flavors(workload)
        flavors = {}
        for name in names:
            flavor = self._get(f"/apis/{kueue.GROUP}/v1beta2/{kueue.RESOURCE_FLAVORS}/{quote(name)}")
            if flavor is None:
                raise kueue.PlacementError(
                    f"ResourceFlavor {name}, which Kueue admitted the job to, does not exist", permanent=False)
            flavors[name] = flavor
        placed = kueue.placement(workload, flavors, kueue.template_placement(spec))
        return spec.with_placement(placed.node_selector, placed.tolerations, placed.labels, placed.annotations)

    def relist(self, namespace: Optional[str]) -> List[JobKey]:
        """One LIST of the jobs' Workloads in ``namespace`` (None: all) merged into the cache;
        returns the jobs whose Workload was deleted while the watch was down. Without Kueue's
        CRDs there is nothing to re-list (the jobs already say KueueNotInstalled)."""
        path = workload_path(namespace) if namespace else f"/apis/{kueue.WORKLOAD_API_VERSION}/{kueue.WORKLOADS}"
        try:
            body = self.client.request("GET", path, query={"labelSelector": LABEL_JOB})
        except ApiError as exc:
            if exc.not_found:
                return []
            raise
        return self.cache.relist_workloads(body.get("items") or [], resource_version(body), namespace)

    def settle(self, job: Dict[str, Any], status: TrainingJobStatus, pods: List[PodView],
               now: datetime) -> Optional[float]:
        """After the job's status is written: an admitted job's Workload says whether its gang
        is up (``kueue.pods_ready``, for Kueue's waitForPodsReady); a finished job releases its
        quota: its Workload is marked Finished, once none of its pods is still stopping
        (`release_wait`). Returns the seconds after which to look again while one is (None:
        nothing to wait for)."""
        if status.phase not in TERMINAL_PHASES:
            self._report_pods_ready(job, status, now)
            return None
        wait = release_wait(pods, now)
        if wait is not None:
            return wait
        meta = job["metadata"]
        workload = self._workload(meta["namespace"], kueue.workload_name(meta["name"]))
        if workload is None or not kueue.owned_by(workload, job):
            return None
        done = kueue.finished(workload, status.phase, f"TrainingJob {meta['name']} {status.phase}", now)
        if done is not None:
            self._patch_status(workload, done)
            overdue = [f"{p.name} (node {p.node})" for p in pods if p.stopping]
            if overdue:
                log.warning("%s/%s: released Workload %s although %s still stopping: their nodes "
                            "do not report", meta["namespace"], meta["name"], workload["metadata"]["name"],
                            ", ".join(overdue) + (" is" if len(overdue) == 1 else " are"))
        return None

    def _report_pods_ready(self, job: Dict[str, Any], status: TrainingJobStatus, now: datetime) -> None:
        meta = job["metadata"]
        workload = self._workload(meta["namespace"], kueue.workload_name(meta["name"]))
        if workload is None or not kueue.owned_by(workload, job):
            return
        up = status.phase == "Running" and status.nodes.ready >= status.nodes.desired > 0
        patch = kueue.pods_ready(workload, up, now)
        if patch is not None:
            self._patch_status(workload, patch)

    def _patch(self, workload: Dict[str, Any], change: Dict[str, Any], subresource: str = "") -> Dict[str, Any]:
        """Merge-patch the Workload (or its ``subresource``), only if nobody changed it since it
        was read (409 otherwise: the next reconcile reads it again); the patched Workload."""
        meta = workload["metadata"]
        patched = self.client.request(
            "PATCH", workload_path(meta["namespace"], meta["name"], subresource),
            {"metadata": {"resourceVersion": meta["resourceVersion"]}, **change},
            content_type="application/merge-patch+json",
        )
        if isinstance(patched, dict) and patched.get("metadata"):
            self.cache.put_workload(patched)
            return patched
        return workload

    def _patch_status(self, workload: Dict[str, Any], status: Dict[str, Any]) -> None:
        self._patch(workload, {"status": status}, "status")


def release_wait(pods: List[PodView], now: datetime) -> Optional[float]:
    """How long a finished job's quota must still be held for its stopping pods; None: not at all.

    A real kubelet reports a container's exit before it makes the pod's phase terminal, and
    the scheduler counts the pod's requests until then: released earlier, the quota would
    admit the next gang onto resources that are not free yet. The phase change is a pod
    event, which reconciles the job again. A pod still stopping `STOPPING_GRACE_SECONDS`
    after its container finished has a node that does not report (NotReady, kubelet gone);
    the scheduler places nothing on such a node, so its quota protects nothing and is released.
    """
    waits = []
    for pod in pods:
        if not pod.stopping:
            continue
        finished = parse_time(pod.finished_at)
        if finished is None:  # an exit without its time: wait a whole grace from now
            waits.append(STOPPING_GRACE_SECONDS)
            continue
        left = STOPPING_GRACE_SECONDS - (now - finished).total_seconds()
        if left > 0:
            waits.append(left)
    return max(waits) if waits else None
