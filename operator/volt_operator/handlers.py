"""kopf handlers: thin wiring from API events to ``Reconciler.reconcile``.

Every handler does the same thing, level-based: look at the job and its pods
now and move one step. Job create/resume/update, every event of a pod
labelled ``volt.dev/job``, and a periodic resync (backoff expiry, deadlines,
TTL and progress need a clock, not an event) all funnel into one reconcile,
which is serialised per job. Create, resume and update run it on kopf's
worker threads; pod and Workload events put the job on the Resyncer's work
queue (one entry per job however many events come), so a running gang's pod
events never queue ahead of new jobs. The resync is a plain thread rather
than a kopf timer: kopf puts a finalizer on every object with a timer, and a
TrainingJob must stay deletable (with its namespace) while the operator is
down. A pod's DELETED event carries its last state (exit code, reason); it is
handed to the reconcile so that a pod deleted right after it failed still
counts with its real exit code.

The reconcile reads the job, its pods and its Service from the watch cache
(``cache.py``): the event handlers below put every version kopf's watches
deliver there first, so the reconcile that follows sees it without a read.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import kopf

from . import kueue, metrics
from .api import GROUP, PLURAL, VERSION
from .builders import LABEL_JOB, controller_uid
from .cache import ObservedCache, resource_version
from .kube import ApiError, KubeClient
from .kueue_gate import KueueGate
from .leader import LeaseElector
from .reconciler import Reconciler, Resyncer
from .status import STUCK_POD_MARGIN_SECONDS

log = logging.getLogger("volt_operator.handlers")


@dataclass
class Options:
    """What ``python -m volt_operator`` passes in through kopf's memo."""

    progress_seconds: float = 5.0
    # Reads of rank 0's /progress per second over all jobs (docs/operator.md, "Progress").
    progress_rate: float = 20.0
    resync_seconds: float = 3.0  # period of the sweep over live jobs
    relist_seconds: float = 300.0  # the cache checked against a full LIST (deletions a watch gap hid)
    stuck_pod_margin: float = STUCK_POD_MARGIN_SECONDS
    # Namespace of the leader-election Lease; None: no election (one replica).
    leader_namespace: Optional[str] = None
    leader_lease: str = "volt-operator"
    metrics_port: Optional[int] = 8080
    kube_configuration: Any = None  # kubernetes.client.Configuration; None: load it
    namespaces: List[str] = field(default_factory=list)  # empty: all namespaces
    # NetworkPolicyPeers allowed on the jobs' metrics ports; None: no NetworkPolicy per job.
    network_policy_peers: Optional[List[Dict[str, Any]]] = None
    # Jobs labelled kueue.x-k8s.io/queue-name wait for Kueue (see watch_kueue_workloads).
    kueue: bool = False


def _options(memo: Any) -> Options:
    return getattr(memo, "options", None) or Options()


def _reconciler(memo: Any) -> Reconciler:
    return memo.reconciler


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    options = _options(memo)
    # Handler progress lives in annotations: status belongs to the schema and
    # the API server would prune kopf's own keys from it.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="volt.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="volt.dev", key="last-handled-configuration"
    )
    # The reconciler posts its own events with stable reasons; kopf adds only
    # warnings and errors from handlers.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16
    # No runtime scanning of CRDs and namespaces (cluster-scoped list/watch that the
    # chart's least-privilege RBAC does not grant): the CRD is installed before the
    # operator starts and the namespaces are named on the command line.
    settings.scanning.disabled = True
    client = KubeClient(options.kube_configuration)
    memo.elector = None
    if options.leader_namespace:
        memo.elector = LeaseElector(client, options.leader_namespace, options.leader_lease)
        memo.elector.start()
    memo.cache = ObservedCache()
    memo.reconciler = Reconciler(
        client, progress_interval=options.progress_seconds, cache=memo.cache,
        progress_rate=options.progress_rate,
        stuck_pod_margin=options.stuck_pod_margin,
        is_leader=memo.elector.is_leader if memo.elector else None,
        network_policy_peers=options.network_policy_peers,
        kueue=KueueGate(client, memo.cache) if options.kueue else None,
    )
    memo.resyncer = Resyncer(memo.reconciler, options.namespaces, options.resync_seconds,
                             relist_interval=options.relist_seconds)
    memo.resyncer.start()
    metrics.track_work_queue(memo.resyncer.queue.__len__)
    metrics.track_failing_jobs(memo.reconciler.backoff.__len__)
    memo.metrics_server = None
    if options.metrics_port is not None:
        memo.metrics_server = metrics.start_metrics_server(options.metrics_port)
        log.info("operator metrics on :%d/metrics", memo.metrics_server.port)


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    resyncer = getattr(memo, "resyncer", None)
    if resyncer is not None:
        resyncer.stop()
    elector = getattr(memo, "elector", None)
    if elector is not None:
        elector.stop()
    server = getattr(memo, "metrics_server", None)
    if server is not None:
        server.stop()


def _reconcile(memo: Any, handler: str, namespace: str, name: str) -> None:
    try:
        with metrics.reconcile_timer(handler):
            _reconciler(memo).reconcile(namespace, name)
    except ApiError:
        # Said on the job and retried by the sweep with backoff (Reconciler._report_failure);
        # kopf's own retry would only add a second schedule and a traceback.
        pass


# The event handlers are coroutines: they only update the cache and the work queue
# (no request, no wait), so they run on kopf's event loop and leave its worker
# threads to the create, resume and update handlers.

@kopf.on.event(GROUP, VERSION, PLURAL)
async def on_job_event(type: Optional[str], body: kopf.Body, namespace: str, name: str,
                       memo: kopf.Memo, **_: Any) -> None:
    # kopf runs event handlers before the create/update ones: those reconcile this version.
    if type == "DELETED":
        memo.cache.delete_job((namespace, name), resource_version(body))
    else:
        memo.cache.put_job(dict(body))
    _reconciler(memo).job_changed((namespace, name))


@kopf.on.event("", "v1", "services", labels={LABEL_JOB: kopf.PRESENT})
async def on_service_event(type: Optional[str], body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    memo.cache.put_service(dict(body), exists=type != "DELETED")


@kopf.on.create(GROUP, VERSION, PLURAL)
def on_create(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _reconcile(memo, "create", namespace, name)


@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_resume(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _reconcile(memo, "resume", namespace, name)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
def on_update(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _reconcile(memo, "update", namespace, name)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def on_delete(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    # Children go with the owner references (garbage collector); only forget.
    metrics.job_deleted(namespace, name)
    _reconciler(memo).forget(namespace, name)


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB: kopf.PRESENT})
async def on_pod_event(
    type: Optional[str], body: kopf.Body, namespace: str, labels: kopf.Labels,
    memo: kopf.Memo, **_: Any,
) -> None:
    pod = dict(body)
    if type == "DELETED":
        memo.cache.delete_pod(pod)
    else:
        memo.cache.put_pod(pod)
    if type is None:  # the initial listing; the job handlers cover it
        return
    memo.resyncer.enqueue((namespace, labels[LABEL_JOB]), [pod] if type == "DELETED" else ())


async def on_workload_event(type: Optional[str], body: kopf.Body, namespace: str,
                            labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    memo.cache.put_workload(dict(body), exists=type != "DELETED")
    if type is None:  # the initial listing; the job handlers cover it
        return
    memo.resyncer.enqueue((namespace, labels[LABEL_JOB]))


async def on_network_policy_event(type: Optional[str], body: kopf.Body, namespace: str,
                                  labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
    key = (namespace, labels[LABEL_JOB])
    _reconciler(memo).network_policy_seen(key, controller_uid(body), exists=type != "DELETED")
    if type == "DELETED":  # deleted by hand: the job's next look creates it again
        memo.resyncer.enqueue(key)


def watch_network_policies() -> None:
    """With --network-policy-peers: a job's NetworkPolicy deleted while the operator runs is
    created again at once (and one that exists is not created again after a restart)."""
    kopf.on.event("networking.k8s.io", "v1", "networkpolicies",
                  labels={LABEL_JOB: kopf.PRESENT})(on_network_policy_event)


def watch_kueue_workloads() -> None:
    """With --kueue: Kueue's admission or eviction of a job's Workload reconciles the job
    at once. Registered only then, so that an operator without Kueue neither watches
    Workloads nor needs the permission to."""
    kopf.on.event(kueue.GROUP, kueue.WORKLOAD_API_VERSION.split("/")[1], kueue.WORKLOADS,
                  labels={LABEL_JOB: kopf.PRESENT})(on_workload_event)
