"""What the operator knows of its objects, fed by its watches.

The reconciler reads each TrainingJob, its pods and its Service from here
instead of asking the API server: kopf's watch events (``handlers.py``) put
every version they see, the reconciler puts what its own writes returned, and
only what the cache does not know yet is read (once per job: a LIST of its
pods, a GET of its Service or of the job itself). A warm cache therefore
costs the API server nothing per reconcile.

Staleness is safe by construction:

* every object is kept at the newest ``resourceVersion`` seen, so a late
  event never overwrites a newer state, and a deletion leaves a tombstone so
  that an older listing cannot bring the pod back;
* the status write carries the job's resourceVersion: a stale job makes it
  fail (409), and the reconciler decides again when the watch brings the
  newer version (the write that made ours stale sends one);
* pods have deterministic names and creating an existing one is a no-op, so a
  cache that has not seen a pod yet costs one refused create, never a
  duplicate; the reconciler also puts every pod it created or deleted here at
  once, so the next reconcile does not have to wait for the watch.
* every attempt reuses the pod names, so a deletion carries the uid of the pod
  it was decided on (a precondition): a stale view of an old pod can never
  delete the next attempt's pod of that name;
* a watch that breaks and comes back sends no DELETED for what went meanwhile:
  a full LIST now and then (``relist_*``) drops it.

Bookkeeping per job is O(its pods); nothing here walks other jobs.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

JobKey = Tuple[str, str]  # (namespace, name)

LABEL_JOB = "volt.dev/job"


def resource_version(obj: Dict[str, Any]) -> int:
    """``metadata.resourceVersion`` as an int (etcd's revision), -1 when absent.

    The API server documents it as opaque; every object here comes from one
    kube-apiserver backed by etcd, whose revisions increase, so comparing them
    orders two versions of one object.
    """
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or -1)
    except (TypeError, ValueError):
        return -1


def job_key_of_child(obj: Dict[str, Any]) -> Optional[JobKey]:
    """The job a pod belongs to, by its ``volt.dev/job`` label."""
    meta = obj.get("metadata") or {}
    job = (meta.get("labels") or {}).get(LABEL_JOB)
    namespace = meta.get("namespace")
    return (namespace, job) if job and namespace else None


# What the reconciler reads of a pod (observed.pod_view, the owner check). Keeping only
# this, not managedFields, the spec's containers and env, makes a pod about a tenth of
# its size: 4,000 cached pods were most of a 600 MiB operator.
_POD_METADATA = ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences",
                 "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds")
_POD_STATUS = ("phase", "reason", "message", "podIP", "conditions", "containerStatuses")


def slim_pod(pod: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``pod`` with only what the operator reads of it."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    slim: Dict[str, Any] = {
        "metadata": {k: copy.deepcopy(meta[k]) for k in _POD_METADATA if k in meta},
        "status": {k: copy.deepcopy(status[k]) for k in _POD_STATUS if k in status},
    }
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        slim["spec"] = {"nodeName": node}
    return slim


@dataclass
class _Pods:
    """One job's pods by name, with tombstones (name -> resourceVersion of the deletion)."""

    seeded: bool = False
    live: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    gone: Dict[str, int] = field(default_factory=dict)

    def put(self, pod: Dict[str, Any]) -> bool:
        name = pod["metadata"]["name"]
        rv = resource_version(pod)
        if rv <= self.gone.get(name, -1):
            return False  # an older version of a pod already deleted
        old = self.live.get(name)
        if old is not None and resource_version(old) >= rv:
            return False
        self.live[name] = pod
        return True

    def delete(self, name: str, rv: int) -> bool:
        old = self.live.get(name)
        if old is not None and resource_version(old) > rv:
            return False  # the deletion of an older pod of that name
        self.live.pop(name, None)
        self.gone[name] = max(rv, self.gone.get(name, -1))
        return old is not None


class ObservedCache:
    """TrainingJobs, their pods and their Services as last seen; safe from many threads.

    Bodies are stored as given and handed out as they are: callers must not
    mutate them (``put_*`` copies what the watch hands in, which kopf may reuse).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: Dict[JobKey, Dict[str, Any]] = {}
        self._deleted_jobs: Dict[JobKey, int] = {}
        self._pods: Dict[JobKey, _Pods] = {}
        # Service (named after its job) -> (exists, resourceVersion of that news).
        self._services: Dict[JobKey, Tuple[bool, int]] = {}
        # Kueue Workloads by (namespace, name), with --kueue: the body, or None once deleted.
        self._workloads: Dict[JobKey, Tuple[Optional[Dict[str, Any]], int]] = {}

    # -- TrainingJobs ----------------------------------------------------------

    def put_job(self, job: Dict[str, Any]) -> None:
        meta = job["metadata"]
        key = (meta["namespace"], meta["name"])
        rv = resource_version(job)
        with self._lock:
            if rv <= self._deleted_jobs.get(key, -1):
                return
            old = self._jobs.get(key)
            if old is None or resource_version(old) < rv:
                self._jobs[key] = copy.deepcopy(job)
                self._deleted_jobs.pop(key, None)

    def delete_job(self, key: JobKey, rv: int) -> None:
        """The job is gone (its DELETED event): drop it and what hangs off it."""
        with self._lock:
            old = self._jobs.get(key)
            if old is not None and resource_version(old) > rv:
                return  # a job of that name created again since
            self._jobs.pop(key, None)
            self._pods.pop(key, None)
            self._services.pop(key, None)
            self._deleted_jobs[key] = rv

    def job(self, key: JobKey) -> Tuple[bool, Optional[Dict[str, Any]]]:
        """(known, body): (True, None) for a job the watch saw deleted; (False, None) unknown."""
        with self._lock:
            body = self._jobs.get(key)
            if body is not None:
                return True, body
            return key in self._deleted_jobs, None

    def relist_jobs(self, jobs: Iterable[Dict[str, Any]], list_rv: int,
                    namespace: Optional[str] = None) -> List[JobKey]:
        """Merge a LIST of the TrainingJobs in ``namespace`` (None: all) taken at ``list_rv``;
        returns the jobs found deleted (a DELETED event missed during a watch gap)."""
        listed = set()
        for job in jobs:
            self.put_job(job)
            listed.add((job["metadata"]["namespace"], job["metadata"]["name"]))
        gone = []
        with self._lock:
            for key, job in list(self._jobs.items()):
                if namespace is not None and key[0] != namespace:
                    continue
                if key not in listed and resource_version(job) <= list_rv:
                    gone.append(key)
        for key in gone:
            self.delete_job(key, list_rv)
        return gone

    def jobs(self) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self._jobs.values())

    # -- pods ------------------------------------------------------------------

    def put_pod(self, pod: Dict[str, Any]) -> None:
        key = job_key_of_child(pod)
        if key is None:
            return
        pod = slim_pod(pod)
        with self._lock:
            self._pods.setdefault(key, _Pods()).put(pod)

    def delete_pod(self, pod: Dict[str, Any]) -> None:
        key = job_key_of_child(pod)
        if key is None:
            return
        with self._lock:
            self._pods.setdefault(key, _Pods()).delete(pod["metadata"]["name"], resource_version(pod))

    def seed_pods(self, key: JobKey, pods: Iterable[Dict[str, Any]], list_rv: int) -> None:
        """Merge a LIST of the job's pods taken at ``list_rv``: pods it lacks that the cache
        holds at an older version were deleted meanwhile."""
        with self._lock:
            self._merge_pods(self._pods.setdefault(key, _Pods()), pods, list_rv)

    def relist_pods(self, pods: Iterable[Dict[str, Any]], list_rv: int,
                    namespace: Optional[str] = None) -> Dict[JobKey, List[Dict[str, Any]]]:
        """Merge a LIST of every job's pods in ``namespace`` (None: all) taken at ``list_rv``.

        A watch that broke and came back re-lists, but sends no DELETED for a pod
        deleted while it was down, so the cache would keep that pod forever; a full
        LIST now and then drops it. Returns, per job, the pods found gone (their last
        state as the cache knew it), for the job to be looked at again.
        """
        by_job: Dict[JobKey, List[Dict[str, Any]]] = {}
        for pod in pods:
            key = job_key_of_child(pod)
            if key is not None:
                by_job.setdefault(key, []).append(pod)
        gone: Dict[JobKey, List[Dict[str, Any]]] = {}
        with self._lock:
            for key in set(by_job) | set(self._pods):
                if namespace is not None and key[0] != namespace:
                    continue
                entry = self._pods.get(key)
                if entry is None or not entry.seeded:
                    continue  # not looked at yet: its first reconcile lists it
                removed = self._merge_pods(entry, by_job.get(key, []), list_rv)
                if removed:
                    gone[key] = removed
        return gone

    @staticmethod
    def _merge_pods(entry: _Pods, pods: Iterable[Dict[str, Any]], list_rv: int) -> List[Dict[str, Any]]:
        listed = set()
        for pod in pods:
            listed.add(pod["metadata"]["name"])
            entry.put(slim_pod(pod))
        removed = []
        for name, pod in list(entry.live.items()):
            if name not in listed and resource_version(pod) <= list_rv:
                entry.delete(name, list_rv)
                removed.append(pod)
        entry.seeded = True
        return removed

    def pods(self, key: JobKey) -> Optional[List[Dict[str, Any]]]:
        """The job's pods, or None until a LIST has seeded them (the watch alone may not
        have delivered every pod yet after a start)."""
        with self._lock:
            entry = self._pods.get(key)
            if entry is None or not entry.seeded:
                return None
            return list(entry.live.values())

    # -- Services --------------------------------------------------------------

    def put_service(self, service: Dict[str, Any], exists: bool = True) -> None:
        """A Service as an event or our own create saw it (``exists=False``: its deletion)."""
        self._put_newest(self._services, service, exists)

    def service_exists(self, key: JobKey) -> Optional[bool]:
        """Whether the job's Service exists; None when no event or read has said."""
        with self._lock:
            known = self._services.get(key)
            return None if known is None else known[0]

    # -- Kueue Workloads (--kueue) -------------------------------------------------

    def put_workload(self, workload: Dict[str, Any], exists: bool = True) -> None:
        """A Workload as an event or our own write saw it (``exists=False``: its deletion)."""
        self._put_newest(self._workloads, workload, copy.deepcopy(workload) if exists else None)

    def workload(self, key: JobKey) -> Tuple[bool, Optional[Dict[str, Any]]]:
        """(known, body): (True, None) for a Workload known not to exist; (False, None) unknown."""
        with self._lock:
            known = self._workloads.get(key)
            return (False, None) if known is None else (True, known[0])

    def relist_services(self, services: Iterable[Dict[str, Any]], list_rv: int,
                        namespace: Optional[str] = None) -> List[JobKey]:
        """Merge a LIST of the jobs' Services in ``namespace`` (None: all) taken at ``list_rv``;
        returns the jobs whose Service was deleted during a watch gap (it is named after
        its job), for them to be looked at again: their next reconcile creates it."""
        gone = self._relist(self._services, services, list_rv, namespace, absent=False,
                            present=lambda service: True)
        return [key for key, _ in gone]

    def relist_workloads(self, workloads: Iterable[Dict[str, Any]], list_rv: int,
                         namespace: Optional[str] = None) -> List[JobKey]:
        """The same for Kueue Workloads (--kueue); returns the jobs whose Workload was deleted
        during a watch gap, found through its ``volt.dev/job`` label."""
        gone = self._relist(self._workloads, workloads, list_rv, namespace, absent=None,
                            present=copy.deepcopy)
        return [key for key in (job_key_of_child(body) for _, body in gone) if key is not None]

    # -- shared by the Service and Workload tables ---------------------------------

    def _put_newest(self, table: Dict[JobKey, Tuple[Any, int]], obj: Dict[str, Any], value: Any) -> None:
        """Record ``value`` for ``obj`` unless the table holds news of a newer version."""
        meta = obj["metadata"]
        key, rv = (meta["namespace"], meta["name"]), resource_version(obj)
        with self._lock:
            old = table.get(key)
            if old is None or rv >= old[1]:
                table[key] = (value, rv)

    def _relist(self, table: Dict[JobKey, Tuple[Any, int]], listed: Iterable[Dict[str, Any]],
                list_rv: int, namespace: Optional[str], absent: Any,
                present: Callable[[Dict[str, Any]], Any]) -> List[Tuple[JobKey, Any]]:
        """Merge a LIST into ``table``: what it lacks, and the table holds as existing at a
        version no newer than the LIST, was deleted meanwhile. Returns those (key, last value)."""
        names = set()
        for obj in listed:
            self._put_newest(table, obj, present(obj))
            names.add((obj["metadata"]["namespace"], obj["metadata"]["name"]))
        gone = []
        with self._lock:
            for key, (value, rv) in list(table.items()):
                if (namespace is not None and key[0] != namespace) or key in names:
                    continue
                if value is not absent and rv <= list_rv:
                    table[key] = (absent, list_rv)
                    gone.append((key, value))
        return gone
