"""The Kueue end-to-end modules' operator, jobs and watches: the operator with --kueue and only
the chart's permissions, the example TrainingJob in a LocalQueue, and waits on the namespace's
jobs through a watch."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from chart_rbac import chart_credentials, used_by
from job_helpers import diagnosis
from operator_process import OperatorProcess
from real_nodes import example
from volt_operator.testing.cluster import LocalCluster

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def wait_finished(kube: LocalCluster, namespace: str, name: str, timeout: float, what: str = "") -> Dict[str, Any]:
    """Watch until TrainingJob `name` is Succeeded or Failed; its status then."""
    def finished(jobs: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
        st = status(jobs, name)
        return st if st.get("phase") in ("Succeeded", "Failed") else None
    return wait_jobs(kube, namespace, what or f"{name} to finish", timeout, finished)


def workload_of(kube: LocalCluster, namespace: str, job: str) -> Dict[str, Any]:
    """The Workload of TrainingJob `job`, read now."""
    return kube.request("GET", f"/apis/kueue.x-k8s.io/v1beta2/namespaces/{namespace}/workloads/trainingjob-{job}")


def queue_manifests(cluster_queue: str, local_queue: str, namespace: str, *, cpu: str, memory: str,
                    flavor: str = "volt-default", **spec: Any) -> List[Dict[str, Any]]:
    """A ClusterQueue for `namespace` alone with quota `cpu`/`memory` in `flavor` (and any other
    ClusterQueue `spec` fields), and LocalQueue `local_queue` in `namespace` that feeds it."""
    quota = [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": memory}]
    return [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": cluster_queue},
         "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                  "resourceGroups": [{"coveredResources": ["cpu", "memory"],
                                      "flavors": [{"name": flavor, "resources": quota}]}], **spec}},
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
         "metadata": {"name": local_queue, "namespace": namespace}, "spec": {"clusterQueue": cluster_queue}},
    ]


@contextmanager
def chart_operator(kube: LocalCluster, namespace: str, work: Path) -> Iterator[OperatorProcess]:
    """The operator with --kueue watching `namespace`, holding the token of the chart's
    ServiceAccount (kueue.enabled): a Kueue path whose permission the chart lacks fails the
    test, and the audit log may show no refused request of it afterwards."""
    with chart_credentials(kube, namespace, work, "kueue.enabled=true") as identity:
        with OperatorProcess(kube, [namespace], work, extra_args=["--kueue"],
                             env={"KUBECONFIG": str(identity.kubeconfig)}).running() as proc:
            yield proc
        _, refused = used_by(kube, identity.user)
        distinct = sorted({(r["verb"], r["uri"]) for r in refused})
        assert not refused, f"the chart's RBAC refused the operator {len(refused)} times: {distinct}"


def queued_job(name: str, queue: Optional[str], *, samples: int, step_delay: float, epochs: int,
               priority: Optional[str] = None) -> List[Dict[str, Any]]:
    """The example (2 nodes x 2 CPU processes, a checkpoint every 10 steps) in ``queue``
    (None: not queued through Kueue)."""
    pvc, job = example(args=["--samples", str(samples), "--batch-size", "32", "--step-delay", str(step_delay),
                             "--save-weights", f"/checkpoints/{name}-final.pt"],
                       # the SIGTERM checkpoint of 2 x 2 processes took 16 s to over 20 s at load 14-20
                       cleanPodPolicy="None", terminationGracePeriodSeconds=90)
    job["metadata"] = {"name": name, "labels": {QUEUE_LABEL: queue} if queue else {}}
    job["spec"]["trainer"]["maxEpochs"] = epochs
    job["spec"]["checkpoint"]["everyNSteps"] = 10
    if priority:
        job["spec"]["template"] = {"priorityClassName": priority}
    return [pvc, job]


def jobs_path(namespace: str) -> str:
    return f"/apis/volt.dev/v1alpha1/namespaces/{namespace}/trainingjobs"


def wait_jobs(kube: LocalCluster, namespace: str, what: str, timeout: float,
              until: Callable[[Dict[str, Dict[str, Any]]], Any]) -> Any:
    """Watch the namespace's TrainingJobs until ``until(jobs by name)`` is truthy."""
    try:
        return kube.watch(jobs_path(namespace), until, timeout, what)
    except Exception as exc:
        names = kube.request("GET", jobs_path(namespace))["items"]
        raise AssertionError(f"{exc}\n" + "\n".join(
            diagnosis(kube, namespace, j["metadata"]["name"]) for j in names)) from None


def wait_checkpointed(kube: LocalCluster, namespace: str, name: str, timeout: float, before: str) -> int:
    """Wait until job ``name`` runs and reported a checkpoint at step 10 or later; that step.
    A job that ends first fails the test: it had to still run for what comes ``before``."""
    def checkpointed(jobs: Dict[str, Dict[str, Any]]) -> Optional[int]:
        st = status(jobs, name)
        step = (st.get("checkpoint") or {}).get("step") or 0
        if st.get("phase") in ("Succeeded", "Failed"):
            raise AssertionError(f"{name} ended ({st['phase']}) before {before}")
        return step if st.get("phase") == "Running" and step >= 10 else None
    return wait_jobs(kube, namespace, f"{name} Running with a checkpoint", timeout, checkpointed)


def status(jobs: Dict[str, Dict[str, Any]], name: str) -> Dict[str, Any]:
    return (jobs.get(name) or {}).get("status") or {}


def condition(st: Dict[str, Any], type_: str) -> Dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})
