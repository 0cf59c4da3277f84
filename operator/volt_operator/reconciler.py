"""Apply one reconcile: look at the job and its pods, decide, write status, act.

The job, its pods and its Service come from the watch cache (``cache.py``);
the API server is read only for what the cache does not know yet, so a
reconcile of a job whose state has not changed sends no request at all.

Order matters: the status (the intent: "gang restart, attempt 3") is written
first, with the job's resourceVersion as a precondition, and only then are
pods created or deleted and events posted. An operator that dies in between
finds the intent in the API on restart and finishes it; a concurrent writer
makes the status write fail and the reconcile start over.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar

from pydantic import ValidationError

from . import metrics, progress, status as machine
from .cache import JobKey, ObservedCache, resource_version
from .api import (
    API_VERSION,
    KIND,
    TERMINAL_PHASES,
    TrainingJobSpec,
    TrainingJobStatus,
    describe_invalid_spec,
    format_time,
    parse_time,
)
from .builders import LABEL_JOB, JobRef, build_pods, build_probe, build_service, controller_uid
from .kueue import Admission, PlacementError, queue_name
from .kueue_gate import KueueGate
from .kube import ApiError, ApiUnreachable, KubeClient
from .network_policy import build_network_policy
from .observed import PodView, pod_view
from .workqueue import Backoff, WorkQueue

log = logging.getLogger("volt_operator.reconciler")

CONFLICT_RETRIES = 3
COMPONENT = "volt-operator"
# Pod POSTs in flight at once, over all jobs (the gangs' creations share them).
CREATE_CONCURRENCY = 16

T = TypeVar("T")


def slow_start(items: Sequence[T]) -> Iterator[List[T]]:
    """``items`` in batches of 1, 2, 4, ...: a gang's pods are created a batch at a
    time, each batch at once, so 8 pods take 4 round trips instead of 8; a template
    the API server refuses is refused once, not once per rank (the caller stops at a
    batch with an error). Kubernetes' Job controller creates its pods the same way."""
    start, size = 0, 1
    while start < len(items):
        yield list(items[start:start + size])
        start += size
        size *= 2


def merge_patch(old: Any, new: Any) -> Any:
    """The smallest RFC 7386 merge patch that turns ``old`` into ``new``."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: Dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value) if isinstance(value, dict) else value
    return patch


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class _Pending:
    """Left for a job's running reconcile: look again, with these pods' last states."""

    again: bool = False
    gone: List[Dict[str, Any]] = field(default_factory=list)


class Reconciler:
    """Level-based reconcile of TrainingJobs; safe to call from many threads."""

    def __init__(
        self,
        client: KubeClient,
        progress_interval: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
        stuck_pod_margin: float = machine.STUCK_POD_MARGIN_SECONDS,
        is_leader: Optional[Callable[[], bool]] = None,
        network_policy_peers: Optional[List[Dict[str, Any]]] = None,
        kueue: Optional[KueueGate] = None,
        cache: Optional[ObservedCache] = None,
        progress_rate: float = 20.0,
    ) -> None:
        self.client = client
        # What the watches saw; a Reconciler of its own (tests) starts cold and reads.
        self.cache = cache or ObservedCache()
        # Jobs whose status write met a newer version -> the version decided on, and the
        # deleted pods' last states that reconcile had (job_changed looks again).
        self._stale: Dict[JobKey, Tuple[int, List[Dict[str, Any]]]] = {}
        # None: no NetworkPolicy per job; a list: create one, metrics ports open to these peers.
        self.network_policy_peers = network_policy_peers
        # Set (--kueue): a job labelled with a LocalQueue waits for Kueue's admission.
        self.kueue = kueue
        # (namespace, name) -> uid of the jobs whose NetworkPolicy this process knows exists.
        self._network_policies: Dict[Tuple[str, str], str] = {}
        self.clock = clock
        self.stuck_pod_margin = stuck_pod_margin
        # With leader election only the Lease holder acts; the others wait.
        self.is_leader = is_leader or (lambda: True)
        # Told when a job wants another look (its progress was read); the Resyncer sets it.
        self.wake: Callable[[JobKey], None] = lambda key: None
        self.poller = progress.Poller(progress_interval, rate=progress_rate,
                                      on_result=lambda key: self.wake(key))
        # Jobs being reconciled now, each with what later calls left for it (see reconcile).
        self._busy: Dict[JobKey, _Pending] = {}
        self._busy_guard = threading.Lock()
        self._instance = socket.gethostname()
        self._creators = ThreadPoolExecutor(CREATE_CONCURRENCY, thread_name_prefix="volt-create")
        # Jobs whose last look failed (an API error, a refused creation): the sweep waits.
        self.backoff = Backoff()

    def forget(self, namespace: str, name: str) -> None:
        self.poller.forget((namespace, name))
        self.backoff.forget((namespace, name))
        self._network_policies.pop((namespace, name), None)
        if self.kueue is not None:
            self.kueue.forget((namespace, name))

    def network_policy_seen(self, key: JobKey, owner_uid: Optional[str], exists: bool) -> None:
        """The watch saw the job's NetworkPolicy (owned by the job of ``owner_uid``) exist or go."""
        if exists and owner_uid:
            self._network_policies[key] = owner_uid
        elif not exists:
            self._network_policies.pop(key, None)

    def reconcile(
        self, namespace: str, name: str, gone_pods: Sequence[Dict[str, Any]] = ()
    ) -> Optional[float]:
        """Bring one job closer to its spec; returns seconds until it wants another look.

        ``gone_pods`` are the last states of pods seen deleted since the job's last look
        (their DELETED events' bodies). One reconcile per job at a time, and no caller
        waits for another's: a call that finds the job being reconciled leaves a note
        (with those pods) and returns at once, and the running reconcile looks again
        before it ends.
        """
        if not self.is_leader():
            return None  # another replica holds the Lease; the resync catches up on takeover
        key = (namespace, name)
        with self._busy_guard:
            pending = self._busy.get(key)
            if pending is not None:
                pending.again = True
                pending.gone.extend(gone_pods)
                return None
            left = self._stale.pop(key, (0, []))[1]
            pending = self._busy[key] = _Pending(gone=left + list(gone_pods))
        try:
            while True:
                with self._busy_guard:
                    gone, pending.gone, pending.again = pending.gone, [], False
                result = self._reconcile_retrying(namespace, name, gone)
                with self._busy_guard:
                    if not pending.again:
                        return result
        finally:
            with self._busy_guard:
                self._busy.pop(key, None)

    def _reconcile_retrying(
        self, namespace: str, name: str, gone: List[Dict[str, Any]]
    ) -> Optional[float]:
        key = (namespace, name)
        for _ in range(CONFLICT_RETRIES):
            _, job = self.cache.job(key)
            decided_on = resource_version(job) if job is not None else -1
            try:
                return self._reconcile_once(namespace, name, gone)
            except ApiError as exc:
                if not exc.conflict:
                    self._report_failure(key, exc)
                    raise
            except Exception:
                self.backoff.failed(key)
                raise
            # Someone wrote the job since the version we decided on. Its watch event brings
            # the newer one (no read): decide again now if it is here, else when it comes
            # (job_changed), without holding this thread.
            with self._busy_guard:
                self._stale[key] = (decided_on, gone)
            _, job = self.cache.job(key)
            if job is None or resource_version(job) <= decided_on:
                log.debug("%s/%s changed meanwhile; looking again at its next version", namespace, name)
                return 1.0
            with self._busy_guard:
                self._stale.pop(key, None)
        return 1.0

    def job_changed(self, key: JobKey) -> None:
        """The watch brought a new version of the job: a reconcile that met it waits no more."""
        with self._busy_guard:
            stale = self._stale.get(key)
        if stale is None:
            return
        _, job = self.cache.job(key)
        if job is None or resource_version(job) > stale[0]:
            self.wake(key)

    # ----------------------------------------------------------------------

    def _job(self, key: JobKey) -> Optional[Dict[str, Any]]:
        """The job from the cache, read (once) when the cache does not know it."""
        known, job = self.cache.job(key)
        if known:
            return job
        job = self.client.get_job(*key)
        if job is not None:
            self.cache.put_job(job)
        return job

    def _observe(
        self, namespace: str, job: Dict[str, Any], gone_pods: List[Dict[str, Any]]
    ) -> List[PodView]:
        uid = job["metadata"]["uid"]
        name = job["metadata"]["name"]
        pods = self.cache.pods((namespace, name))
        if pods is None and not job.get("status"):
            # Never reconciled: the status is written before any pod is created, so it has none.
            self.cache.seed_pods((namespace, name), [], resource_version(job))
            pods = []
        if pods is None:  # not seen since this process started: list once, the watch does the rest
            listed, list_rv = self.client.list_pods(namespace, f"{LABEL_JOB}={name}")
            self.cache.seed_pods((namespace, name), listed, list_rv)
            pods = self.cache.pods((namespace, name)) or []
        views = [pod_view(p) for p in pods if controller_uid(p) == uid]
        for gone_pod in gone_pods:  # the last state its DELETED event carried
            gone = pod_view(gone_pod, gone=True)
            if gone.name not in {v.name for v in views}:
                views.append(gone)
        return views

    def _service_exists(self, namespace: str, name: str) -> bool:
        """Whether the job's Service exists, as the watch says. Not known yet (a job's first
        look, before the watch's listing came): taken as missing, so the plan creates it, and
        a create that finds it there (409) is the answer, at the cost a read would have had."""
        return bool(self.cache.service_exists((namespace, name)))

    def _poll_progress(
        self, key: Tuple[str, str], spec: TrainingJobSpec, st: TrainingJobStatus,
        pods: List[PodView], now: datetime,
    ) -> Optional[progress.PollResult]:
        """Mirror rank 0's /progress into ``st`` (at most once per interval); returns the
        poller's answer it used, to be dropped once the status is written.

        Once rank 0 has exited its endpoint is gone; the engine leaves its
        final progress as the container's termination message (the kubelet
        copies /dev/termination-log into the pod status), which makes the
        last row of `kubectl get tj` exact.
        """
        if st.phase != "Running":
            self.poller.cancel(key)
            return None
        done = next((p for p in pods if p.rank == 0 and p.attempt == st.attempt
                     and p.succeeded), None)
        if done is not None:
            self.poller.cancel(key)
            final = progress.from_termination_message(done.message)
            if final is not None:
                training, checkpoint = progress.to_status(final, now, st.training)
                st.training = training
                if checkpoint is not None:
                    st.checkpoint = checkpoint
            return None
        rank0 = next((p for p in pods if p.rank == 0 and p.attempt == st.attempt and p.ip
                      and p.active), None)
        if rank0 is None or rank0.ip is None:
            self.poller.cancel(key)
            return None
        # The read happens on the poller's threads; this reconcile uses what the last
        # one found and asks for the next (the poller's budgets say when).
        result = self.poller.latest(key, rank0.name, rank0.ip)
        self.poller.request(key, rank0.name, rank0.ip, spec.metrics.port)
        if result is None:
            return None
        if result.payload is None:
            log.debug("progress of %s/%s not available: %s", key[0], key[1], result.error)
            machine.set_condition(
                st, machine.PROGRESS_POLLED, False, "ProgressUnavailable",
                f"cannot read {rank0.name}'s progress: {result.error} (the engine's PrometheusCallback "
                "serves it on spec.metrics.port once training starts; a script that does not use "
                "volt's Trainer has none)"[:4000], now)
            return result
        payload = result.payload
        attempt = payload.get("attempt")
        if isinstance(attempt, int) and attempt != st.attempt:
            return result  # an answer from an older gang
        machine.set_condition(st, machine.PROGRESS_POLLED, True, "ProgressAvailable",
                              f"reading {rank0.name}'s progress on port {spec.metrics.port}", now)
        training, checkpoint = progress.to_status(payload, now, st.training)
        st.training = training
        if checkpoint is not None:
            st.checkpoint = checkpoint
        return result

    def _reconcile_once(
        self, namespace: str, name: str, gone_pods: List[Dict[str, Any]]
    ) -> Optional[float]:
        job = self._job((namespace, name))
        if job is None or job["metadata"].get("deletionTimestamp"):
            return None
        meta = job["metadata"]
        ref = JobRef(name=name, namespace=namespace, uid=meta["uid"])
        old_status = job.get("status") or {}
        current = TrainingJobStatus.model_validate(old_status)
        now = self.clock()
        try:
            spec = TrainingJobSpec.model_validate(job.get("spec") or {})
        except ValidationError as exc:
            return self._invalid(job, current, exc, now)

        observed = self._observe(namespace, job, gone_pods)
        # Capacity probes carry the job's label too (build_probe) but are no node pods.
        pods = [p for p in observed if p.probe is None]
        probes = [p for p in observed if p.probe is not None]
        polled = self._poll_progress((namespace, name), spec, current, pods, now)
        service_exists = self._service_exists(namespace, name)
        plan = machine.decide(
            spec, machine.JobMeta(name, meta.get("generation", 1)), current, pods,
            service_exists, now, stuck_pod_margin=self.stuck_pod_margin,
            admission=self._admission(job, spec, current, pods, now),
            probes=probes, kueue_managed=bool(queue_name(job)),
        )

        if not self.backoff.failing((namespace, name)):
            machine.clear_reconcile_failure(plan.status, now)
        # 1. Intent first: the new status, conditional on what we read.
        new_status = plan.status.to_api()
        patch = merge_patch(old_status, new_status)
        if patch:
            self._patch_status(
                namespace, name,
                {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch},
            )
        if polled is not None:
            self.poller.applied((namespace, name), polled)
        # 2. Act.
        errors = self._act(ref, spec, plan, {p.name: p.uid for p in observed},
                           queued=bool(queue_name(job)))
        # 3. Tell users (a creation that failed did not happen).
        for event in plan.events:
            if errors and event.reason in ("Created", "CheckpointResumed"):
                continue
            self.post_event(job, event.type, event.reason, event.message)
        if errors:
            plan = self._create_failed(job, spec, current, plan, pods, errors, now)
            self.backoff.failed((namespace, name))
        elif self.backoff.succeeded((namespace, name)):
            self.wake((namespace, name))  # the next look says Reconciled=True (step 1)
        requeue_after = plan.requeue_after
        if self.kueue is not None and queue_name(job):
            quota_wait = self.kueue.settle(job, plan.status, observed, now)
            if quota_wait is not None:
                requeue_after = quota_wait if requeue_after is None else min(requeue_after, quota_wait)
        self._record_metrics(job, plan)
        return requeue_after

    def _report_failure(self, key: JobKey, exc: ApiError) -> None:
        """A request for the job failed: the sweep backs off, and the job says why
        (condition Reconciled=False and a Warning event, once per distinct failure).
        Best effort: the write may be refused too, and then the log alone says it."""
        delay = self.backoff.failed(key)
        log.warning("%s/%s: %s; looking again in %.0f s", *key, exc, delay)
        _, job = self.cache.job(key)
        if job is None:
            return
        reason, message = machine.api_failure(exc.status, exc.reason, exc.action, exc.message)
        old_status = job.get("status") or {}
        failed = machine.with_reconcile_failure(
            TrainingJobStatus.model_validate(old_status), reason, message, self.clock())
        if failed is None:
            return  # already said
        try:
            self._patch_status(*key, {"metadata": {"resourceVersion": job["metadata"]["resourceVersion"]},
                                      "status": merge_patch(old_status, failed.to_api())})
        except ApiError as write_exc:
            log.warning("%s/%s: cannot record the failure in the status: %s", *key, write_exc)
            return
        self.post_event(job, "Warning", "ReconcileFailed", message)

    def _admission(
        self, job: Dict[str, Any], spec: TrainingJobSpec, st: TrainingJobStatus,
        pods: List[PodView], now: datetime,
    ) -> Optional[Admission]:
        """Kueue's word on the job's Workload; None: the job is not queued through Kueue."""
        if self.kueue is None or not queue_name(job):
            return None
        return self.kueue.admission(job, spec, st, pods, now)

    def _create_failed(
        self, job: Dict[str, Any], spec: TrainingJobSpec, before: TrainingJobStatus,
        plan: machine.Plan, pods: List[PodView], errors: List[machine.CreateError],
        now: datetime,
    ) -> machine.Plan:
        """Record failed creations in the status (and fail the job once the API
        server has refused its pods a few times), then clean up and tell users."""
        meta = job["metadata"]
        after = machine.after_create_errors(spec, plan.status, errors, pods, now)
        self._patch_status(
            meta["namespace"], meta["name"],
            {"status": merge_patch(plan.status.to_api(), after.status.to_api())},
        )
        uids = {p.name: p.uid for p in pods}
        for pod in after.delete_pods:
            self._delete_pod(meta["namespace"], pod, uids.get(pod))
        message = "; ".join(e.message for e in errors)
        old = machine.condition(before, machine.CREATED)
        if old is None or old.status != "False" or old.message != message[:4000]:
            self.post_event(job, "Warning", "CreateFailed", message)
        for event in after.events:
            self.post_event(job, event.type, event.reason, event.message)
        return after

    def _act(
        self, ref: JobRef, spec: TrainingJobSpec, plan: machine.Plan, uids: Dict[str, Optional[str]],
        queued: bool = False,
    ) -> List[machine.CreateError]:
        """Carry out ``plan``; ``uids`` names the pods the plan's deletions mean (by name).
        ``queued``: the job names a LocalQueue; with --kueue, its admission says where the
        pods run."""
        errors: List[machine.CreateError] = []
        ns = ref.namespace
        for pod in plan.force_delete_pods:
            log.warning("force-deleting %s/%s: stuck terminating", ns, pod)
            self._delete_pod(ns, pod, uids.get(pod), grace_seconds=0)
        # Probes first: a gang that grows back takes their room.
        for pod in plan.delete_probes + plan.delete_pods:
            self._delete_pod(ns, pod, uids.get(pod))
        if plan.delete_job:
            log.info("deleting %s/%s: ttlSecondsAfterFinished passed", ns, ref.name)
            self.client.delete_job(ns, ref.name)
            return errors
        if plan.create_service:
            try:
                # Created, or already there (None): either way it exists now.
                service = self.client.create(ns, "services", build_service(ref, spec))
                self.cache.put_service(service or {"metadata": {"namespace": ns, "name": ref.name}})
            except ApiError as exc:
                errors.append(machine.CreateError(f"creating service {ref.name}: {exc}",
                                                  exc.refused))
        errors += self._ensure_network_policy(ref, spec, plan)
        if plan.create_ranks:
            # The gang's size: spec.trainer.numNodes, or fewer after an elastic shrink.
            gang = spec.with_num_nodes(plan.status.num_nodes or spec.trainer.num_nodes)
            try:
                if queued and self.kueue is not None:
                    gang = self.kueue.placement(ns, ref.name, gang)
            except PlacementError as exc:
                errors.append(machine.CreateError(f"placing the gang: {exc}", exc.permanent))
            else:
                pods = build_pods(ref, gang, plan.status.attempt, plan.resume, plan.create_ranks)
                errors += self._create_pods(ns, pods)
        self._create_probes(ref, spec, plan.create_probes)
        return errors

    def _create_pods(self, namespace: str, pods: List[Dict[str, Any]]) -> List[machine.CreateError]:
        """POST ``pods`` in slow-start batches, each batch at once; stop after a batch
        with an error (the next reconcile asks for the ranks still missing)."""
        def create(pod: Dict[str, Any]) -> Optional[machine.CreateError]:
            try:
                self._post_pod(namespace, pod)
                return None
            except ApiError as exc:
                return machine.CreateError(
                    f"creating pod {pod['metadata']['name']}: {exc}", exc.refused)

        for batch in slow_start(pods):
            errors = [e for e in self._creators.map(create, batch) if e is not None]
            if errors:
                return errors
        return []

    def _create_probes(self, ref: JobRef, spec: TrainingJobSpec, ranks: List[int]) -> None:
        """Capacity probes of a shrunk elastic job. A probe the API server refuses (a
        ResourceQuota with no room for it, say) is no failure of the job: it means no
        room, and the job keeps its size; the next reconcile asks again."""
        for rank in ranks:
            probe = build_probe(ref, spec, rank)
            try:
                self._post_pod(ref.namespace, probe)
            except ApiError as exc:
                log.warning("capacity probe %s/%s not created (the job keeps its size): %s",
                            ref.namespace, probe["metadata"]["name"], exc)

    def _post_pod(self, namespace: str, pod: Dict[str, Any]) -> None:
        created = self.client.create(namespace, "pods", pod)
        if created:  # seen at once, not when its watch event comes
            self.cache.put_pod(created)

    def _patch_status(self, namespace: str, name: str, body: Dict[str, Any]) -> None:
        """Write the status; the answer is the job's newest version, which the cache keeps."""
        job = self.client.patch_job_status(namespace, name, body)
        if isinstance(job, dict) and resource_version(job) >= 0:
            self.cache.put_job(job)

    def _delete_pod(self, namespace: str, name: str, uid: Optional[str],
                    grace_seconds: Optional[int] = None) -> None:
        pod = self.client.delete_pod(namespace, name, grace_seconds=grace_seconds, uid=uid)
        if isinstance(pod, dict) and pod.get("kind") == "Pod":  # marked for deletion
            self.cache.put_pod(pod)

    def _ensure_network_policy(
        self, ref: JobRef, spec: TrainingJobSpec, plan: machine.Plan
    ) -> List[machine.CreateError]:
        """Create the job's NetworkPolicy unless the watch says it exists: for a new job, for
        one whose Service predates the setting (the operator was upgraded or the chart's
        networkPolicy.enabled turned on), and for one whose policy was deleted. Creating an
        existing policy is a no-op (409), so a watch that has not listed yet costs one
        request per job."""
        key = (ref.namespace, ref.name)
        if (self.network_policy_peers is None or self._network_policies.get(key) == ref.uid
                or plan.status.phase in TERMINAL_PHASES):
            return []
        try:
            self.client.create_network_policy(
                ref.namespace, build_network_policy(ref, spec, self.network_policy_peers))
        except ApiError as exc:
            return [machine.CreateError(f"creating network policy {ref.name}: {exc}", exc.refused)]
        self._network_policies[key] = ref.uid
        return []

    def _invalid(
        self, job: Dict[str, Any], current: TrainingJobStatus, exc: ValidationError, now: datetime
    ) -> None:
        """A spec the API server let through but the operator cannot run."""
        if current.phase == "Failed":
            return None
        meta = job["metadata"]
        st = current.model_copy(deep=True)
        message = f"invalid spec: {describe_invalid_spec(exc)}"[:4000]
        st.phase = "Failed"
        st.completion_time = format_time(now)
        st.observed_generation = meta.get("generation")
        machine.set_condition(st, machine.FAILED, True, "InvalidSpec", message, now)
        self._patch_status(
            meta["namespace"], meta["name"],
            {"status": merge_patch(job.get("status") or {}, st.to_api())},
        )
        self.post_event(job, "Warning", "Failed", message)
        metrics.observe_phase(meta["namespace"], meta["name"], "Failed")
        return None

    def _record_metrics(self, job: Dict[str, Any], plan: machine.Plan) -> None:
        meta = job["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if plan.status.phase:
            metrics.observe_phase(ns, name, plan.status.phase)
        if plan.restart_reason:
            metrics.record_restart(ns, name, plan.restart_reason)
        if plan.became_running and plan.status.attempt == 0:
            created = parse_time(meta.get("creationTimestamp"))
            if created is not None:
                metrics.observe_time_to_running(max(0.0, (self.clock() - created).total_seconds()))

    def post_event(self, job: Dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on the TrainingJob (best effort: never fails a reconcile)."""
        meta = job["metadata"]
        stamp = format_time(self.clock())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
        }
        try:
            self.client.create(meta["namespace"], "events", body)
        except ApiError as exc:
            log.warning("posting event %s on %s/%s failed: %s", reason, meta["namespace"],
                        meta["name"], exc)


class Resyncer:
    """The reconciles no kopf handler waits on: a work queue and the periodic sweep.

    Pod and Workload events, finished progress reads and the sweep ``enqueue`` a
    job (``workqueue.py``: one entry per job, so a burst of one gang's pod events
    is one look); kopf's own threads stay free for the jobs' create, update and
    resume handlers. The sweep (a thread) enqueues every live TrainingJob every
    ``interval`` seconds for the clocks (backoff, deadlines, TTL, stalls,
    progress); the jobs are those the watch cache holds and a reconcile reads
    from the cache too, so a sweep over jobs whose state has not changed sends
    nothing to the API server.
    """

    def __init__(self, reconciler: Reconciler, namespaces: List[str], interval: float,
                 workers: int = 16, relist_interval: float = 300.0) -> None:
        self.reconciler = reconciler
        self.namespaces = list(namespaces)
        self.interval = interval
        self.relist_interval = relist_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="volt-resync", daemon=True)
        self.queue = WorkQueue(self._one, workers, name="volt-reconcile")
        reconciler.wake = self.enqueue

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.queue.stop()
        self.reconciler.poller.stop()

    @staticmethod
    def needs_look(job: Dict[str, Any]) -> bool:
        """Finished jobs need no look unless a TTL will delete them."""
        phase = (job.get("status") or {}).get("phase")
        ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
        return phase not in TERMINAL_PHASES or ttl is not None

    def enqueue(self, key: JobKey, gone_pods: Sequence[Dict[str, Any]] = ()) -> None:
        """Reconcile ``key`` soon, with these deleted pods' last states."""
        if not self._stop.is_set():
            self.queue.add(key, gone_pods)

    def sweep(self) -> None:
        """A routine look at every job that is due, behind every look an event asked for."""
        if not self.reconciler.is_leader():
            return
        for key in self.due(self.reconciler.cache.jobs()):
            self.queue.add(key, routine=True)

    def due(self, jobs: Iterable[Dict[str, Any]]) -> List[JobKey]:
        """The jobs the sweep looks at: those that need a look, less those whose last look
        failed and whose backoff has not passed."""
        keys = [(job["metadata"]["namespace"], job["metadata"]["name"]) for job in jobs
                if self.needs_look(job)]
        return [key for key in keys if not self.reconciler.backoff.waiting(key)]

    def relist(self) -> None:
        """Drop from the cache what a watch gap hid: the jobs, pods, Services and Kueue
        Workloads deleted while a watch was down (it re-lists when it comes back, but sends
        no DELETED for them). One LIST of each per watched namespace. A job that lost pods
        is reconciled with their last known states, as if their DELETED events had come;
        one that lost its Service or Workload is reconciled, which creates it again."""
        client, cache, kueue = self.reconciler.client, self.reconciler.cache, self.reconciler.kueue
        for namespace in self.namespaces or [None]:
            jobs, jobs_rv = client.list_jobs(namespace)
            for key in cache.relist_jobs(jobs, jobs_rv, namespace):
                log.info("%s/%s was deleted while a watch was down", *key)
                metrics.job_deleted(*key)
                self.reconciler.forget(*key)
            pods, pods_rv = client.list_pods(namespace, LABEL_JOB)
            for key, gone in cache.relist_pods(pods, pods_rv, namespace).items():
                log.info("%s/%s: pod(s) %s were deleted while a watch was down", *key,
                         ", ".join(p["metadata"]["name"] for p in gone))
                self.enqueue(key, gone)
            services, services_rv = client.list_core(namespace, "services", LABEL_JOB)
            lost = cache.relist_services(services, services_rv, namespace)
            if kueue is not None:
                lost += kueue.relist(namespace)
            for key in dict.fromkeys(lost):
                if cache.job(key)[1] is None:
                    continue  # the job went too (its children with it)
                log.info("%s/%s: its Service or Workload was deleted while a watch was down", *key)
                self.enqueue(key)

    def _one(self, key: JobKey, gone_pods: List[Dict[str, Any]]) -> None:
        try:
            with metrics.reconcile_timer("queued"):
                self.reconciler.reconcile(*key, gone_pods)
        except ApiError:
            pass  # logged, backed off and told on the job (Reconciler._report_failure)
        except ApiUnreachable as exc:  # backed off; a line, not a traceback per job
            log.warning("%s/%s: %s", *key, exc)

    def _run(self) -> None:
        relisted = time.monotonic()
        while not self._stop.wait(self.interval):
            if time.monotonic() - relisted >= self.relist_interval:
                relisted = time.monotonic()
                try:
                    self.relist()
                except Exception:
                    log.exception("the periodic re-list failed")
            try:
                self.sweep()
            except Exception:
                log.exception("the resync sweep failed")
