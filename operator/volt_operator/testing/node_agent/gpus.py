"""`nvidia.com/gpu` for local pods: which GPUs a container sees.

A real node's device plugin hands each container the GPUs it requested and
the NVIDIA runtime hides the others. Here node i of an agent started with
`--gpus N` owns the host's GPUs i*N .. i*N+N-1; a container that requests k
gets k of its node's free ones in CUDA_VISIBLE_DEVICES (and
NVIDIA_VISIBLE_DEVICES), and a container that requests none sees none. With
`--gpus 0` (the default) the agent manages no GPUs and leaves those variables
alone. Visibility is all it is: nothing stops a process from resetting them.
"""

from __future__ import annotations

import threading
from typing import Any, Mapping

from .nodes import GPU_RESOURCE


class GpuError(ValueError):
    """A container asks for more GPUs than its node has free."""


def node_gpu_ids(nodes: list[str], per_node: int) -> dict[str, list[int]]:
    return {node: list(range(i * per_node, (i + 1) * per_node)) for i, node in enumerate(nodes)}


def gpu_request(container: Mapping[str, Any]) -> int:
    """GPUs a container asks for (extended resources: the limit, or the request if only that is set)."""
    resources = container.get("resources") or {}
    for kind in ("limits", "requests"):
        value = (resources.get(kind) or {}).get(GPU_RESOURCE)
        if value is not None:
            try:
                return int(str(value))
            except ValueError:
                raise GpuError(f"container {container.get('name')!r}: {GPU_RESOURCE} must be a whole "
                               f"number, got {value!r}") from None
    return 0


def visible_devices_env(ids: list[int]) -> dict[str, str]:
    devices = ",".join(str(i) for i in ids)
    return {"CUDA_VISIBLE_DEVICES": devices, "NVIDIA_VISIBLE_DEVICES": devices or "void"}


class GpuAllocator:
    """Free GPUs per node; assignments are keyed by (pod uid, container name)."""

    def __init__(self, devices: dict[str, list[int]]) -> None:
        self.devices = devices
        self._assigned: dict[tuple[str, str], tuple[str, list[int]]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return any(self.devices.values())

    def assign(self, node: str, pod_uid: str, container: str, count: int) -> list[int]:
        with self._lock:
            key = (pod_uid, container)
            if key in self._assigned:
                return self._assigned[key][1]
            taken = {i for n, ids in self._assigned.values() if n == node for i in ids}
            free = [i for i in self.devices.get(node, []) if i not in taken]
            if count > len(free):
                raise GpuError(f"container {container!r} requests {count} {GPU_RESOURCE}, node {node} "
                               f"has {len(free)} free of {len(self.devices.get(node, []))}")
            self._assigned[key] = (node, free[:count])
            return free[:count]

    def release(self, pod_uid: str) -> None:
        with self._lock:
            for key in [k for k in self._assigned if k[0] == pod_uid]:
                del self._assigned[key]

    def env_for_pod(self, pod: Mapping[str, Any]) -> dict[str, dict[str, str]]:
        """Per container name, the GPU variables to add to its environment."""
        if not self.enabled:
            return {}
        spec, uid = pod.get("spec") or {}, pod["metadata"]["uid"]
        node = spec.get("nodeName") or ""
        env = {}
        pod_ids: list[int] = []
        for container in spec.get("containers") or []:
            count = gpu_request(container)
            ids = self.assign(node, uid, container["name"], count) if count else []
            pod_ids += ids
            env[container["name"]] = visible_devices_env(ids)
        # Init containers run before the others: like the kubelet, let them
        # reuse the pod's devices (the pod's effective request is the max).
        for container in spec.get("initContainers") or []:
            count = gpu_request(container)
            if count <= len(pod_ids):
                ids = pod_ids[:count]
            else:
                ids = self.assign(node, uid, container["name"], count)
            env[container["name"]] = visible_devices_env(ids)
        return env
