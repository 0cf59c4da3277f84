"""Node objects for the agent's nodes: registration, capacity and heartbeats.

The node lifecycle controller (kube-controller-manager) marks a node NotReady
and taints it when its Lease in kube-node-lease goes stale, so the agent
renews one Lease per node every few seconds and refreshes the Ready condition
(the kubelet's "status update") less often.
"""

from __future__ import annotations

import logging
import os
import platform
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from .podenv import EnvError, parse_quantity
from .status import rfc3339

log = logging.getLogger(__name__)

AGENT_VERSION = "v1.34.0-volt-local"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_DURATION_S = 40
API_TIMEOUT_S = 15
GPU_RESOURCE = "nvidia.com/gpu"
AGENT_LABEL = "volt.dev/local-node-agent"


@dataclass(frozen=True)
class NodeShape:
    """The resources each node advertises (nothing is enforced: see the docs)."""

    cpu: str = "8"
    memory: str = "16Gi"
    pods: int = 110
    gpus: int = 0
    ephemeral_storage: str = "100Gi"

    def __post_init__(self) -> None:
        for field_name in ("cpu", "memory", "ephemeral_storage"):
            value = getattr(self, field_name)
            try:
                if parse_quantity(value) <= 0:
                    raise EnvError("not positive")
            except EnvError:
                raise ValueError(f"--{field_name.replace('_', '-')}: {value!r} is not a positive "
                                 "Kubernetes quantity (e.g. 8, 500m, 16Gi)") from None
        if self.pods <= 0:
            raise ValueError(f"--pods: {self.pods} must be positive")
        if self.gpus < 0:
            raise ValueError(f"--gpus: {self.gpus} must be >= 0")

    def resources(self) -> dict[str, str]:
        amounts = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.pods),
                   "ephemeral-storage": self.ephemeral_storage}
        if self.gpus:
            amounts[GPU_RESOURCE] = str(self.gpus)
        return amounts


def _machine_id() -> str:
    try:
        with open("/etc/machine-id", encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return uuid.uuid4().hex


def _architecture() -> str:
    """The machine as Go's GOARCH names it (what kubernetes.io/arch holds)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def ready_conditions(now: datetime, previous: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The kubelet's node conditions: Ready, and no pressure of any kind."""
    before = {c["type"]: c for c in previous or []}
    wanted = [("Ready", "True", "KubeletReady", "volt local node agent is posting ready status"),
              ("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
              ("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
              ("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure")]
    conditions = []
    for kind, status, reason, message in wanted:
        old = before.get(kind)
        since = old["lastTransitionTime"] if old and old.get("status") == status else rfc3339(now)
        conditions.append({"type": kind, "status": status, "reason": reason, "message": message,
                           "lastHeartbeatTime": rfc3339(now), "lastTransitionTime": since})
    return conditions


def node_status(name: str, address: str, kubelet_port: int, shape: NodeShape,
                now: datetime) -> dict[str, Any]:
    resources = shape.resources()
    return {
        "capacity": resources,
        "allocatable": resources,
        "conditions": ready_conditions(now),
        "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": _machine_id(),
            "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            "bootID": str(uuid.uuid4()),
            "kernelVersion": platform.release(),
            "osImage": "volt local node agent (host processes, no images)",
            "containerRuntimeVersion": "volt-local://1",
            "kubeletVersion": AGENT_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _architecture(),
        },
    }


class NodeRegistry:
    """Creates, heartbeats and deletes the agent's Node objects."""

    def __init__(self, api: client.ApiClient, names: list[str], address: str, shape: NodeShape,
                 kubelet_ports: dict[str, int]) -> None:
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.names = names
        self.address = address
        self.shape = shape
        self.kubelet_ports = kubelet_ports

    def register(self) -> None:
        now = datetime.now(timezone.utc)
        for name in self.names:
            body = {
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": {
                    "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": _architecture(),
                    AGENT_LABEL: "true"}},
            }
            try:
                node = self.core.create_node(body, _request_timeout=API_TIMEOUT_S)
                uid = node.metadata.uid
            except ApiException as error:
                if error.status != 409:
                    raise
                uid = self.core.read_node(name, _request_timeout=API_TIMEOUT_S).metadata.uid
            status = node_status(name, self.address, self.kubelet_ports[name], self.shape, now)
            self.core.patch_node_status(name, {"status": status}, _request_timeout=API_TIMEOUT_S)
            self._renew_lease(name, uid, now)
        log.info("registered nodes %s", ",".join(self.names))

    def heartbeat(self, refresh_status: bool) -> None:
        now = datetime.now(timezone.utc)
        for name in self.names:
            try:
                node = self.core.read_node(name, _request_timeout=API_TIMEOUT_S)
                if refresh_status:
                    previous = [c.to_dict() for c in node.status.conditions or []]
                    previous = [{"type": c["type"], "status": c["status"],
                                 "lastTransitionTime": rfc3339(c["last_transition_time"])}
                                for c in previous]
                    self.core.patch_node_status(name, {"status": {
                        "conditions": ready_conditions(now, previous)}}, _request_timeout=API_TIMEOUT_S)
                self._renew_lease(name, node.metadata.uid, now)
            except ApiException as error:
                if error.status == 404:  # someone deleted our node: register it again
                    self.register()
                    return
                log.warning("heartbeat of node %s failed: %s", name, error.reason)

    def _renew_lease(self, name: str, node_uid: str, now: datetime) -> None:
        renew = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node_uid}]},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_S,
                     "renewTime": renew},
        }
        try:
            self.coordination.patch_namespaced_lease(name, LEASE_NAMESPACE, {"spec": body["spec"]},
                                                   _request_timeout=API_TIMEOUT_S)
        except ApiException as error:
            if error.status != 404:
                raise
            self.coordination.create_namespaced_lease(LEASE_NAMESPACE, body, _request_timeout=API_TIMEOUT_S)

    def unregister(self) -> None:
        for name in self.names:
            try:
                self.core.delete_node(name, _request_timeout=API_TIMEOUT_S)
            except ApiException as error:
                if error.status != 404:
                    log.warning("deleting node %s failed: %s", name, error.reason)
