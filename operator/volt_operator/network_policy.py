"""Pure builder of a TrainingJob's NetworkPolicy: who may reach its pods.

torch's TCPStore (the rendezvous port on node 0) has no authentication, and
the collectives (gloo, NCCL) connect rank to rank on ports they pick at run
time, so the job's own pods may reach each other on every port. Everything
else is closed except the per-rank metrics ports (``metrics.port`` ..
``metrics.port + processes - 1``: Prometheus and the operator's /progress
reads), open only to the peers the operator is configured with. Enforcement
needs a CNI that enforces NetworkPolicy (docs/security.md).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from .api import TrainingJobSpec
from .builders import JobRef, job_object_metadata, job_selector


def metrics_ports(spec: TrainingJobSpec) -> List[int]:
    """The ports the ranks of one pod serve metrics and /progress on."""
    return [spec.metrics.port + local_rank for local_rank in range(spec.processes_per_node())]


def build_network_policy(
    job: JobRef, spec: TrainingJobSpec, metrics_peers: Sequence[Dict[str, Any]]
) -> Dict[str, Any]:
    """The job's NetworkPolicy. ``metrics_peers``: NetworkPolicyPeer objects (namespace
    and pod selectors of Prometheus and the operator) allowed on the metrics ports;
    none closes them to everything but the job's own pods."""
    own_pods = {"podSelector": {"matchLabels": job_selector(job.name)}}
    ingress: List[Dict[str, Any]] = [{"from": [own_pods]}]
    if metrics_peers:
        ingress.append({
            "from": [dict(peer) for peer in metrics_peers],
            "ports": [{"protocol": "TCP", "port": port} for port in metrics_ports(spec)],
        })
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": job_object_metadata(job),
        "spec": {
            "podSelector": {"matchLabels": job_selector(job.name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
