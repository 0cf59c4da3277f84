"""Pure builders: a TrainingJob spec in, the children's manifests (dicts) out.

Nothing here talks to the API server, so every field of every child is unit
tested without a cluster. The reconciler creates whatever is missing by name.

Children of TrainingJob ``<job>``:
  * a headless Service ``<job>`` (publishNotReadyAddresses, so node 0's DNS
    name resolves before it is Ready and the rendezvous cannot race DNS);
  * pods ``<job>-node-<i>`` with hostname/subdomain, the environment contract
    (docs/distributed.md), GPU requests, the checkpoint volume and metrics ports;
  * while a shrunk elastic job waits to grow back, capacity probes
    ``<job>-probe-<i>`` for its missing nodes (``build_probe``).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from kubernetes.utils.quantity import parse_quantity

from .api import API_VERSION, CHECKPOINT_VOLUME, KIND, RESERVED_LABELS, SHM_PATH, SHM_VOLUME, TrainingJobSpec

LABEL_JOB, LABEL_RANK, LABEL_ATTEMPT, LABEL_PROBE = RESERVED_LABELS
CONTAINER = "trainer"
LAUNCHER = "volt-run"


@dataclass(frozen=True)
class JobRef:
    """The identity of the owning TrainingJob."""

    name: str
    namespace: str
    uid: str

    def owner_reference(self) -> Dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def controller_uid(obj: Mapping[str, Any]) -> Optional[str]:
    """The uid of the object's controller (its ownerReference with `controller: true`).

    Compared with a job's uid it tells the job's own pods, Service, NetworkPolicy
    and Workload from a deleted job's of the same name that the garbage collector
    has not removed yet.
    """
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((ref.get("uid") for ref in refs if ref.get("controller")), None)


TERMINATION_MESSAGE_PATH = "/dev/termination-log"

# The trainer image's user (trainer_image/Dockerfile: USER 1000:1000).
TRAINER_UID = 1000

# Restricted Pod Security Standard by default (docs/security.md). The user's
# spec.template.securityContext / containerSecurityContext keys replace these
# key by key, so a job can loosen one of them and keep the rest.
DEFAULT_POD_SECURITY_CONTEXT: Dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": TRAINER_UID,
    "runAsGroup": TRAINER_UID,
    # The checkpoint claim is made group-writable for the trainer's group.
    "fsGroup": TRAINER_UID,
    "fsGroupChangePolicy": "OnRootMismatch",
    "seccompProfile": {"type": "RuntimeDefault"},
}
DEFAULT_CONTAINER_SECURITY_CONTEXT: Dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def security_context(
    defaults: Dict[str, Any], overrides: Optional[Dict[str, Any]]
) -> Dict[str, Any]:
    """``defaults`` with the user's top-level keys replacing ours (a null removes one).

    A container the user makes privileged keeps no allowPrivilegeEscalation default of
    ours: the API server refuses privileged with allowPrivilegeEscalation false as an
    invalid pod, and the namespace's Pod Security level is what should answer.
    """
    overrides = overrides or {}
    defaults = copy.deepcopy(defaults)
    if overrides.get("privileged") is True:
        defaults.pop("allowPrivilegeEscalation", None)
    merged = {**defaults, **overrides}
    return {k: v for k, v in merged.items() if v is not None}


def pod_name(job: str, rank: int) -> str:
    return f"{job}-node-{rank}"


def probe_name(job: str, rank: int) -> str:
    return f"{job}-probe-{rank}"


def master_addr(job: str) -> str:
    """Node 0's DNS name through the headless Service (search path resolves it)."""
    return f"{pod_name(job, 0)}.{job}"


def checkpoint_dir(job: str, spec: TrainingJobSpec) -> Optional[str]:
    """Per-job directory on the checkpoint volume (jobs may share one claim)."""
    if spec.checkpoint is None:
        return None
    return f"{spec.checkpoint.path.rstrip('/')}/{job}"


def resume_value(spec: TrainingJobSpec, attempt: int, checkpoint_seen: bool) -> str:
    """VOLT_RESUME: auto | never | an absolute checkpoint path.

    FromPath seeds the first attempt only; once the job has written its own
    checkpoint, later attempts (gang restarts, resume after suspend) continue
    from that, or training would jump back to the starting weights.
    """
    if spec.resume == "Never":
        return "never"
    if spec.resume == "FromPath" and spec.from_path:
        if attempt == 0 or not checkpoint_seen:
            return spec.from_path
    return "auto"


def grace_budget(termination_grace_seconds: int) -> int:
    """Seconds the engine may spend checkpointing after SIGTERM: a margin below
    the pod's grace period so that it exits before the SIGKILL."""
    margin = min(5, termination_grace_seconds // 5)
    return max(1, termination_grace_seconds - margin)


def job_selector(job: str) -> Dict[str, str]:
    return {LABEL_JOB: job}


def job_object_metadata(job: JobRef) -> Dict[str, Any]:
    """Metadata of a per-job child named after the job (its Service, its NetworkPolicy)."""
    return {
        "name": job.name,
        "namespace": job.namespace,
        "labels": job_selector(job.name),
        "ownerReferences": [job.owner_reference()],
    }


def build_service(job: JobRef, spec: TrainingJobSpec) -> Dict[str, Any]:
    """The headless Service that gives each node pod a stable DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": job_object_metadata(job),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": job_selector(job.name),
            "ports": [
                {
                    "name": "rendezvous",
                    "port": spec.rendezvous.port,
                    "targetPort": spec.rendezvous.port,
                    "protocol": "TCP",
                }
            ],
        },
    }


def build_env(
    job: JobRef, spec: TrainingJobSpec, rank: int, attempt: int, resume: str
) -> List[Dict[str, Any]]:
    """The operator <-> engine contract (docs/distributed.md, "The environment contract"), then user env."""
    nproc = spec.processes_per_node()
    nodes = spec.trainer.num_nodes
    addr = master_addr(job.name)
    port = str(spec.rendezvous.port)
    values: Dict[str, Optional[str]] = {
        "MASTER_ADDR": addr,
        "MASTER_PORT": port,
        "NODE_RANK": str(rank),
        "NUM_NODES": str(nodes),
        "WORLD_SIZE": str(nodes * nproc),
        "PET_NNODES": str(nodes),
        "PET_NODE_RANK": str(rank),
        "PET_NPROC_PER_NODE": str(nproc),
        "PET_MASTER_ADDR": addr,
        "PET_MASTER_PORT": port,
        "VOLT_JOB_NAME": job.name,
        # The engine records it with each checkpoint and refuses a directory
        # that another job (a deleted one of the same name) wrote.
        "VOLT_JOB_UID": job.uid,
        "VOLT_ATTEMPT": str(attempt),
        "VOLT_TRAINER": json.dumps(
            spec.trainer.to_trainer_kwargs(spec.gpu_limit()), sort_keys=True
        ),
        "VOLT_CHECKPOINT_DIR": checkpoint_dir(job.name, spec),
        "VOLT_CHECKPOINT_EVERY_N_STEPS": (
            str(spec.checkpoint.every_n_steps)
            if spec.checkpoint and spec.checkpoint.every_n_steps
            else None
        ),
        "VOLT_CHECKPOINT_KEEP_LAST": (
            str(spec.checkpoint.keep_last) if spec.checkpoint else None
        ),
        "VOLT_RESUME_ANY_JOB": (
            "1" if spec.checkpoint and spec.checkpoint.allow_foreign_checkpoints else None
        ),
        "VOLT_RESUME": resume,
        "VOLT_METRICS_PORT": str(spec.metrics.port),
        "VOLT_RENDEZVOUS_TIMEOUT": str(spec.rendezvous.timeout_seconds),
        # The engine's SIGTERM budget: save a checkpoint before the kill.
        "VOLT_GRACE_PERIOD_S": str(grace_budget(spec.termination_grace_period_seconds)),
        # Where rank 0 writes its final progress (the container's terminationMessagePath).
        "VOLT_TERMINATION_MESSAGE_PATH": TERMINATION_MESSAGE_PATH,
        # Logs reach `kubectl logs` as they are written.
        "PYTHONUNBUFFERED": "1",
    }
    env = [{"name": k, "value": v} for k, v in values.items() if v is not None]
    for var in list(spec.env) + list(spec.template.env):
        env.append(var.to_api())
    return env


_UNITS = sorted({"Ti": 1 << 40, "Gi": 1 << 30, "Mi": 1 << 20, "Ki": 1 << 10,
                 "T": 10 ** 12, "G": 10 ** 9, "M": 10 ** 6, "k": 10 ** 3}.items(), key=lambda unit: -unit[1])


def _quantity(amount: int) -> str:
    """``amount`` bytes in the largest unit that divides it (4294967296 -> "4Gi", 1500000000 -> "1500M")."""
    for suffix, size in _UNITS:
        if amount and amount % size == 0:
            return f"{amount // size}{suffix}"
    return str(amount)


def shm_size_limit(spec: TrainingJobSpec) -> Optional[str]:
    """sizeLimit of /dev/shm: spec.sharedMemory.sizeLimit, else half the memory limit, else none."""
    if spec.shared_memory.size_limit is not None:
        return str(spec.shared_memory.size_limit)
    memory = spec.resources.limits.get("memory")
    if memory is None:
        return None
    half = int(parse_quantity(memory)) // 2
    return _quantity(half) if half > 0 else None


def wants_shm(spec: TrainingJobSpec) -> bool:
    """False when the user's template brings its own /dev/shm (a volume named dshm, or a mount there):
    theirs wins, and two volumes of one name, or two mounts at one path, would be refused."""
    overlay = spec.template
    return not any(v.name == SHM_VOLUME for v in overlay.volumes) and not any(
        m.mount_path.rstrip("/") == SHM_PATH for m in overlay.volume_mounts
    )


def shm_volume(spec: TrainingJobSpec) -> Dict[str, Any]:
    """A memory-backed emptyDir for /dev/shm (the runtime's 64 MiB is too small for DataLoader workers)."""
    empty_dir: Dict[str, Any] = {"medium": "Memory"}
    size = shm_size_limit(spec)
    if size is not None:
        empty_dir["sizeLimit"] = size
    return {"name": SHM_VOLUME, "emptyDir": empty_dir}


def _resources(spec: TrainingJobSpec) -> Dict[str, Any]:
    limits = {k: v for k, v in spec.resources.limits.items()}
    requests = {k: v for k, v in spec.resources.requests.items()}
    gpus = spec.gpus_per_node()
    if gpus:
        # Extended resources must be in limits; requests must match if given.
        limits["nvidia.com/gpu"] = gpus
        requests["nvidia.com/gpu"] = gpus
    out: Dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests
    return out


def _container(
    job: JobRef, spec: TrainingJobSpec, rank: int, attempt: int, resume: str
) -> Dict[str, Any]:
    ports = [{"name": "rendezvous", "containerPort": spec.rendezvous.port, "protocol": "TCP"}]
    for local_rank in range(spec.processes_per_node()):
        ports.append(
            {
                "name": f"metrics-{local_rank}",
                "containerPort": spec.metrics.port + local_rank,
                "protocol": "TCP",
            }
        )
    mounts: List[Dict[str, Any]] = []
    if spec.checkpoint is not None:
        mounts.append({"name": CHECKPOINT_VOLUME, "mountPath": spec.checkpoint.path})
    mounts.extend(m.to_api() for m in spec.template.volume_mounts)
    if wants_shm(spec):
        mounts.append({"name": SHM_VOLUME, "mountPath": SHM_PATH})
    container: Dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": [LAUNCHER, *spec.command],
        "args": list(spec.args),
        "env": build_env(job, spec, rank, attempt, resume),
        "ports": ports,
        "resources": _resources(spec),
        "volumeMounts": mounts,
        # Rank 0 leaves its final progress here; the operator reads it from the
        # pod status once the /progress endpoint is gone.
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
        "securityContext": security_context(
            DEFAULT_CONTAINER_SECURITY_CONTEXT, spec.template.container_security_context
        ),
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def _placement(spec: TrainingJobSpec) -> Dict[str, Any]:
    """The template's fields that decide where (and as whom) a pod runs; unset ones left out."""
    overlay = spec.template
    optional = {
        "nodeSelector": dict(overlay.node_selector) or None,
        "tolerations": [t.to_api() for t in overlay.tolerations] or None,
        "affinity": overlay.affinity,
        "priorityClassName": overlay.priority_class_name,
        "schedulerName": overlay.scheduler_name,
        "serviceAccountName": overlay.service_account_name,
        "imagePullSecrets": [{"name": s} for s in overlay.image_pull_secrets] or None,
    }
    return {k: v for k, v in optional.items() if v is not None}


def build_pod(
    job: JobRef, spec: TrainingJobSpec, rank: int, attempt: int, resume: str
) -> Dict[str, Any]:
    """Node pod ``rank`` of gang attempt ``attempt``."""
    overlay = spec.template
    name = pod_name(job.name, rank)
    labels = {
        **overlay.labels,
        LABEL_JOB: job.name,
        LABEL_RANK: str(rank),
        LABEL_ATTEMPT: str(attempt),
    }
    annotations = {
        **overlay.annotations,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.metrics.port),
        "prometheus.io/path": "/metrics",
    }
    volumes: List[Dict[str, Any]] = []
    if spec.checkpoint is not None:
        volumes.append(
            {
                "name": CHECKPOINT_VOLUME,
                "persistentVolumeClaim": {"claimName": spec.checkpoint.claim_name},
            }
        )
    volumes.extend(v.model_dump(by_alias=True, exclude_none=True) for v in overlay.volumes)
    if wants_shm(spec):
        volumes.append(shm_volume(spec))
    pod_spec: Dict[str, Any] = {
        "hostname": name,
        "subdomain": job.name,
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        # Training pods get no API credentials; the operator polls them.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [_container(job, spec, rank, attempt, resume)],
        "volumes": volumes,
        "securityContext": security_context(
            DEFAULT_POD_SECURITY_CONTEXT, overlay.security_context
        ),
    }
    pod_spec.update(_placement(spec))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [job.owner_reference()],
        },
        "spec": pod_spec,
    }


def build_pods(
    job: JobRef, spec: TrainingJobSpec, attempt: int, resume: str,
    ranks: Optional[List[int]] = None,
) -> List[Dict[str, Any]]:
    """The pods of ``ranks`` (default: the whole gang) for one attempt, in rank order.

    Only the pods asked for are built, so a reconcile costs O(pods it creates)."""
    wanted = range(spec.trainer.num_nodes) if ranks is None else sorted(ranks)
    return [build_pod(job, spec, rank, attempt, resume) for rank in wanted]


PROBE_CONTAINER = "probe"
# The probe only has to exist on its node; a command that is missing from the image
# crash-loops in place and still holds the node's room (restartPolicy Always).
PROBE_COMMAND = ["sleep", "2147483647"]


def build_probe(job: JobRef, spec: TrainingJobSpec, rank: int) -> Dict[str, Any]:
    """Capacity probe ``rank``: a placeholder for node pod ``rank`` of a shrunk elastic gang.

    It asks the scheduler for exactly what that node pod would: the same image,
    resources, nodeSelector, affinity, tolerations, priority, scheduler, the job's
    labels (so that the template's pod (anti-)affinity terms, which select the job's
    pods, count it as one of them) and its checkpoint claim (volume topology). Once
    bound it holds that room, so nothing else takes it before the gang grows into it.
    It is no gang pod: ``volt.dev/capacity-probe`` instead of a node rank and attempt,
    no hostname in the Service's domain, no ports, no environment, no scrape
    annotations. Owned by the TrainingJob, so it goes with it.
    """
    overlay = spec.template
    container: Dict[str, Any] = {
        "name": PROBE_CONTAINER,
        "image": spec.image,
        "command": list(PROBE_COMMAND),
        "resources": _resources(spec),
        "securityContext": security_context(
            DEFAULT_CONTAINER_SECURITY_CONTEXT, overlay.container_security_context
        ),
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod_spec: Dict[str, Any] = {
        "restartPolicy": "Always",
        # sleep as PID 1 ignores SIGTERM; the room is wanted back at once.
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "securityContext": security_context(
            DEFAULT_POD_SECURITY_CONTEXT, overlay.security_context
        ),
    }
    if spec.checkpoint is not None:
        pod_spec["volumes"] = [{
            "name": CHECKPOINT_VOLUME,
            "persistentVolumeClaim": {"claimName": spec.checkpoint.claim_name, "readOnly": True},
        }]
    pod_spec.update(_placement(spec))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": probe_name(job.name, rank),
            "namespace": job.namespace,
            "labels": {**overlay.labels, LABEL_JOB: job.name, LABEL_PROBE: str(rank)},
            "annotations": dict(overlay.annotations),
            "ownerReferences": [job.owner_reference()],
        },
        "spec": pod_spec,
    }
