"""The node agent: a small kubelet that runs the pods bound to its nodes as local processes.

One thread per node watches the pods bound to it (list, then watch; any error
or expiry relists, so the agent is level-based); the reconcile loop in the
main thread drives every pod toward what its object says:

- new pod: network namespace + address + hosts file, volumes, then the runner
  starts its (init) containers;
- running pod: the runner reaps exits and applies the restart policy; the
  status computed by `status.compute_pod_status` is patched into pods/status
  whenever it changes;
- pod with a deletionTimestamp: SIGTERM to every container's process group,
  SIGKILL after the grace period, final status, then the object is deleted
  with grace 0 (the kubelet's last word) and the namespace and files removed;
- pod gone from the API (force delete): processes killed, everything removed.

Side loops renew the node Leases and run the volume provisioner.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from .events import EventRecorder
from .gpus import GpuAllocator, GpuError, node_gpu_ids
from .logs import LogNotFound, LogServer, LogSource, make_serving_cert
from .network import PodAddress, PodNetwork, agent_id_for, render_hosts, render_resolv_conf
from .nodes import NodeRegistry, NodeShape
from .podenv import decode_secret
from .provisioner import Provisioner
from .runner import HostDirs, PodContext, PodRuntime, host_base_env
from .stale import record_self, sweep_dead_agents
from .status import PodRecord, compute_pod_status
from .volumes import VolumeError, prepare_volumes

log = logging.getLogger(__name__)

LOOP_PERIOD_S = 0.25
API_TIMEOUT_S = 15  # no API call may stall the reconcile loop for longer
LEASE_PERIOD_S = 10.0
NODE_STATUS_PERIOD_S = 60.0
PROVISION_PERIOD_S = 2.0
SHUTDOWN_GRACE_S = 10.0
DEFAULT_GRACE_S = 30
START_RETRY_S = 1.0


@dataclass
class AgentConfig:
    kubeconfig: str
    nodes: list[str]
    workdir: Path
    shape: NodeShape = field(default_factory=NodeShape)
    client_ca: Path | None = None
    restart_backoff_s: float = 10.0
    kubelet_port: int = 0

    def __post_init__(self) -> None:
        if not self.nodes or any(not n for n in self.nodes):
            raise ValueError(f"--nodes: need one or more comma-separated names, got {self.nodes!r}")
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"--nodes: duplicate names in {self.nodes!r}")
        if self.restart_backoff_s <= 0:
            raise ValueError(f"--restart-backoff: {self.restart_backoff_s} must be positive")
        if self.client_ca is not None and not self.client_ca.is_file():
            raise ValueError(f"--client-ca-file: {self.client_ca} is not a file")


@dataclass
class PodState:
    uid: str
    pod: dict[str, Any]
    record: PodRecord
    runtime: PodRuntime | None = None
    netns: str | None = None
    reported: dict[str, Any] | None = None
    gone: bool = False
    retry_at: float = 0.0  # monotonic time before which a failed start is not retried
    leftovers_ended: bool = False  # since the last container exit: see NodeAgent._end_leftovers

    @property
    def key(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"


def pod_hostname(pod: Mapping[str, Any]) -> str:
    return ((pod.get("spec") or {}).get("hostname") or pod["metadata"]["name"])[:63]


class NodeAgent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.api = config.new_client_from_config(config_file=cfg.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.events = EventRecorder(self.api)
        self.gpus = GpuAllocator(node_gpu_ids(cfg.nodes, cfg.shape.gpus))
        self.agent_id = agent_id_for(cfg.workdir)
        self.network = PodNetwork(self.agent_id)
        self.host_dirs = HostDirs(cfg.workdir / "created-host-dirs.json")
        self.pods_root = cfg.workdir / "pods"
        self.desired: dict[str, dict[str, Any]] = {}
        self.states: dict[str, PodState] = {}
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.synced: set[str] = set()
        self.removed: set[str] = set()
        self.log_server: LogServer | None = None
        self.registry: NodeRegistry | None = None
        self._hosts_signature: tuple[Any, ...] = ()
        self._threads: list[threading.Thread] = []
        self._run_entry: Path | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> str:
        """Set up the network, log endpoint and nodes; start the watches. Returns the subnet."""
        self.cfg.workdir.mkdir(parents=True, exist_ok=True)
        sweep_dead_agents()
        self.host_dirs.remove_all()  # left by a crashed run with this workdir
        self._run_entry = record_self(self.agent_id, self.cfg.workdir)
        subnet = self.network.setup()
        gateway = self.network.gateway
        cert, key = make_serving_cert(self.cfg.workdir / "pki", gateway)
        self.log_server = LogServer(gateway, self.cfg.kubelet_port, self.find_log, cert, key,
                                    self.cfg.client_ca)
        self.log_server.start()
        self.registry = NodeRegistry(self.api, self.cfg.nodes, gateway, self.cfg.shape,
                                     {n: self.log_server.port for n in self.cfg.nodes})
        self.registry.register()
        for node in self.cfg.nodes:
            self._spawn(f"watch-{node}", self._watch_node, node)
        self._spawn("heartbeat", self._heartbeat_loop)
        self._spawn("provisioner", self._provision_loop,
                    Provisioner(self.api, self.cfg.workdir / "pv", self.agent_id))
        deadline = time.monotonic() + 30
        while self.synced != set(self.cfg.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the pod watches did not sync within 30s")
            time.sleep(0.05)
        return str(subnet)

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def run(self) -> None:
        """The reconcile loop, until `stop()` is called."""
        while not self.stopping.is_set():
            self.wake.wait(LOOP_PERIOD_S)
            self.wake.clear()
            if self.stopping.is_set():
                break
            try:
                self.reconcile()
            except Exception:  # one bad pass must not end the agent
                log.exception("reconcile pass failed")

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def shutdown(self) -> None:
        """Kill every pod process (SIGTERM, short grace, SIGKILL) and remove what we made."""
        self.stopping.set()
        started = time.monotonic()
        with self.lock:
            states = list(self.states.values())
        log.info("shutting down: stopping %d pods", len(states))
        for state in states:
            if state.runtime is not None:
                state.runtime.terminate(min(self._grace(state.pod), SHUTDOWN_GRACE_S))
        deadline = time.monotonic() + SHUTDOWN_GRACE_S + 5
        while any(s.runtime and s.runtime.alive() for s in states) and time.monotonic() < deadline:
            for state in states:
                if state.runtime is not None:
                    state.runtime.step()
            time.sleep(0.05)
        for state in states:
            if state.runtime is not None:
                state.runtime.kill_now()
        self.network.teardown()
        self.host_dirs.remove_all()
        if self.log_server is not None:
            self.log_server.stop()
        if self.registry is not None:
            self.registry.unregister()
        shutil.rmtree(self.pods_root, ignore_errors=True)
        self.events.close()
        if self._run_entry is not None:
            self._run_entry.unlink(missing_ok=True)
        self.api.close()
        log.info("shutdown complete in %.1fs", time.monotonic() - started)

    # -- watches and side loops ----------------------------------------------

    def _watch_node(self, node: str) -> None:
        selector = f"spec.nodeName={node}"
        while not self.stopping.is_set():
            try:
                response = self.core.list_pod_for_all_namespaces(
                    field_selector=selector, _preload_content=False, _request_timeout=API_TIMEOUT_S)
                listing = json.loads(response.data)
                with self.lock:
                    for uid in [u for u, p in self.desired.items() if p["spec"].get("nodeName") == node]:
                        del self.desired[uid]
                    for pod in listing["items"]:
                        self.desired[pod["metadata"]["uid"]] = pod
                self.synced.add(node)
                self.wake.set()
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=120,
                    _request_timeout=150,  # a dead connection must not hang the watch
                    deserialize=False)  # plain dicts, as the rest of the agent uses
                for event in stream:
                    pod = event["object"]
                    if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
                        continue
                    with self.lock:
                        if event["type"] == "DELETED":
                            self.desired.pop(pod["metadata"]["uid"], None)
                        else:
                            self.desired[pod["metadata"]["uid"]] = pod
                    self.wake.set()
                    if self.stopping.is_set():
                        return
            except Exception as error:  # network blips, API restarts: relist
                if self.stopping.is_set():
                    return
                log.warning("pod watch for node %s: %s; relisting", node, error)
                time.sleep(1)

    def _heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(LEASE_PERIOD_S):
            refresh = time.monotonic() - last_status >= NODE_STATUS_PERIOD_S
            try:
                assert self.registry is not None
                self.registry.heartbeat(refresh_status=refresh)
                if refresh:
                    last_status = time.monotonic()
            except Exception as error:
                log.warning("node heartbeat failed: %s", error)

    def _provision_loop(self, provisioner: Provisioner) -> None:
        while not self.stopping.is_set():
            try:
                provisioner.sync()
            except Exception as error:
                log.warning("volume provisioner: %s", error)
            self.stopping.wait(PROVISION_PERIOD_S)

    # -- reconcile ----------------------------------------------------------

    def reconcile(self) -> None:
        with self.lock:
            desired = dict(self.desired)
        self.removed &= set(desired)  # forget removed pods once the watch has too
        for uid, pod in desired.items():
            state = self.states.get(uid)
            if state is None:
                if uid in self.removed or self._already_finished(pod):
                    continue
                state = PodState(uid, pod, PodRecord(host_ip=self.network.gateway))
                with self.lock:
                    self.states[uid] = state
            state.pod = pod
        for uid, state in list(self.states.items()):
            if uid not in desired:
                state.gone = True
            try:
                self._sync_pod(state)
            except Exception:  # one pod's trouble must not stall the others
                log.exception("syncing pod %s failed; will retry", state.key)
            if state.gone and (state.runtime is None or not state.runtime.alive()):
                self._cleanup(state)
                with self.lock:
                    del self.states[uid]
                self.removed.add(uid)
        self._refresh_hosts()

    @staticmethod
    def _already_finished(pod: Mapping[str, Any]) -> bool:
        """A terminal pod from before this agent started: nothing to run, nothing to report."""
        return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed") \
            and not pod["metadata"].get("deletionTimestamp")

    def _grace(self, pod: Mapping[str, Any]) -> float:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
        return float(grace)

    def _sync_pod(self, state: PodState) -> None:
        pod = state.pod
        if state.gone or pod["metadata"].get("deletionTimestamp"):
            if state.runtime is not None and not state.runtime.terminating:
                log.info("pod %s deleted: SIGTERM, grace %.0fs", state.key, self._grace(pod))
                state.runtime.terminate(self._grace(pod))
            if state.runtime is not None:
                state.runtime.step()
                if state.runtime.alive():
                    self._report(state)
                    return
                self._end_leftovers(state)  # the kubelet deletes a pod only once all of it is dead
            if not state.gone:
                self._report(state)
                self._delete_object(state)
            return
        if state.runtime is None and time.monotonic() >= state.retry_at:
            self._start_pod(state)
        if state.runtime is not None:
            state.runtime.step()
            self._end_leftovers(state)
            if state.runtime.finished() and state.netns is not None:
                self._teardown_sandbox(state)  # the pod is done: free its address
        self._report(state)

    def _start_pod(self, state: PodState) -> None:
        pod = state.pod
        if state.netns is None:
            state.netns, state.record.pod_ip = self.network.create_pod_namespace(state.uid)
            state.record.sandbox_ready = True
            self.network.write_resolv_conf(state.netns, render_resolv_conf(pod["metadata"]["namespace"]))
            self._hosts_signature = ()
        pod_dir = self.pods_root / state.uid
        try:
            node_env = self.gpus.env_for_pod(pod)
            volume_paths = prepare_volumes(pod, pod_dir, _ApiSources(self))
        except (VolumeError, GpuError, ApiException) as error:
            message = f"API error: {error.reason}" if isinstance(error, ApiException) else str(error)
            if state.record.config_error != message:
                log.warning("pod %s cannot start yet: %s", state.key, message)
                reason = "UnexpectedAdmissionError" if isinstance(error, GpuError) else "FailedMount"
                self.events.record(pod, "Warning", reason, message)
            state.record.config_error = message
            state.retry_at = time.monotonic() + START_RETRY_S
            if not state.record.containers:
                state.record.containers = [
                    PodRuntime.waiting_record(c, "ContainerCreating", message)
                    for c in pod["spec"].get("containers") or []]
            return
        state.record.config_error = None
        context = PodContext(
            pod=pod, pod_dir=pod_dir, netns=state.netns, volume_paths=volume_paths,
            lookup=self._lookup, node_allocatable=self.cfg.shape.resources(),
            host_dirs=self.host_dirs, backoff_s=self.cfg.restart_backoff_s,
            base_env=host_base_env(pod_hostname(pod)), node_env=node_env,
            on_event=lambda kind, reason, message, container: self.events.record(
                pod, kind, reason, message, container))
        state.runtime = PodRuntime(context, state.record)
        state.runtime.adopt(pod.get("status") or {})  # after an agent restart
        self._refresh_hosts()  # before the first process reads /etc/hosts

    def _end_leftovers(self, state: PodState) -> None:
        """When no container of the pod runs, nothing else of it may: kill what is left.

        Containers are process groups here, and a process that starts its own
        session (torch's elastic agent runs each worker in one) outlives its
        container's main process. In a real pod the end of the pid namespace
        takes it along; an orphan left here would keep the pod's address and
        sockets (a store, a gloo peer) alive after the pod is reported dead.
        Checked once per container exit, not every reconcile.
        """
        if state.runtime is None or state.netns is None:
            return
        if state.runtime.alive():
            state.leftovers_ended = False
            return
        if state.leftovers_ended:
            return
        stuck = self.network.kill_namespace_processes(state.netns)
        if stuck:
            log.warning("pod %s: processes %s survive SIGKILL (stuck in the kernel)", state.key, stuck)
        state.leftovers_ended = True

    def _report(self, state: PodState) -> None:
        status = compute_pod_status(state.pod, state.record, datetime.now(timezone.utc))
        if status == state.reported:
            return
        meta = state.pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], {"status": status},
                                                  _request_timeout=API_TIMEOUT_S)
            state.reported = status
        except ApiException as error:
            if error.status == 404:
                state.gone = True
            else:
                log.warning("status of pod %s: %s", state.key, error.reason)

    def _delete_object(self, state: PodState) -> None:
        meta = state.pod["metadata"]
        try:
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"],
                body=client.V1DeleteOptions(grace_period_seconds=0,
                                            preconditions=client.V1Preconditions(uid=state.uid)),
                _request_timeout=API_TIMEOUT_S)
        except ApiException as error:
            if error.status not in (404, 409):
                log.warning("deleting pod %s: %s", state.key, error.reason)
                return
        state.gone = True

    def _teardown_sandbox(self, state: PodState) -> None:
        if state.netns is not None:
            self.network.kill_namespace_processes(state.netns)
            self.network.delete_pod_namespace(state.netns)
            state.netns = None
            state.record.sandbox_ready = False
            self.gpus.release(state.uid)
            self._hosts_signature = ()

    def _cleanup(self, state: PodState) -> None:
        self._teardown_sandbox(state)
        self.gpus.release(state.uid)
        shutil.rmtree(self.pods_root / state.uid, ignore_errors=True)
        log.info("pod %s removed", state.key)

    def _refresh_hosts(self) -> None:
        live = [s for s in self.states.values() if s.netns is not None and s.record.pod_ip]
        addresses = {
            s.uid: PodAddress(s.pod["metadata"]["name"], s.pod["metadata"]["namespace"],
                              s.record.pod_ip or "", pod_hostname(s.pod), s.pod["spec"].get("subdomain"))
            for s in live
        }
        signature = tuple(sorted((uid, a) for uid, a in addresses.items()))
        if signature == self._hosts_signature:
            return
        peers = list(addresses.values())
        for state in live:
            self.network.write_hosts(state.netns or "", render_hosts(addresses[state.uid], peers))
        self._hosts_signature = signature

    # -- API lookups ----------------------------------------------------------

    def _lookup(self, kind: str, namespace: str, name: str) -> dict[str, str] | None:
        try:
            if kind == "ConfigMap":
                return dict(self.core.read_namespaced_config_map(
                    name, namespace, _request_timeout=API_TIMEOUT_S).data or {})
            secret = self.core.read_namespaced_secret(name, namespace, _request_timeout=API_TIMEOUT_S)
            return decode_secret(self.api.sanitize_for_serialization(secret).get("data") or {})
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    def find_log(self, namespace: str, name: str, container: str, previous: bool) -> LogSource:
        with self.lock:
            states = list(self.states.values())
        state = next((s for s in states if s.pod["metadata"]["namespace"] == namespace
                      and s.pod["metadata"]["name"] == name and s.runtime is not None), None)
        if state is None or state.runtime is None:
            raise LogNotFound(f"pod {namespace}/{name} has no containers on this node")
        runtime = state.runtime
        record = runtime.container_record(container)
        if record is None:
            raise LogNotFound(f"container {container!r} is not in pod {namespace}/{name}")
        restart = record.restart_count - 1 if previous else record.restart_count
        path = runtime.log_path(container, restart)
        if restart < 0 or not path.exists():
            which = "previous terminated container" if previous else "container"
            raise LogNotFound(f"{which} {container!r} in pod {namespace}/{name} not found")

        def is_live() -> bool:
            return record.restart_count == restart and record.pid is not None

        return LogSource(path, is_live)


class _ApiSources:
    """volumes.VolumeSources backed by the agent's API client."""

    def __init__(self, agent: NodeAgent) -> None:
        self.agent = agent

    def data(self, kind: str, namespace: str, name: str) -> Mapping[str, str] | None:
        return self.agent._lookup(kind, namespace, name)

    def claim_host_path(self, namespace: str, claim: str) -> str:
        core = self.agent.core
        try:
            pvc = core.read_namespaced_persistent_volume_claim(claim, namespace,
                                                             _request_timeout=API_TIMEOUT_S)
        except ApiException as error:
            if error.status == 404:
                raise VolumeError(f"persistentVolumeClaim {namespace}/{claim} not found") from None
            raise
        if not pvc.spec.volume_name or (pvc.status and pvc.status.phase != "Bound"):
            raise VolumeError(f"persistentVolumeClaim {namespace}/{claim} is not bound yet")
        pv = core.read_persistent_volume(pvc.spec.volume_name, _request_timeout=API_TIMEOUT_S)
        source = pv.spec.host_path or pv.spec.local
        if source is None:
            raise VolumeError(f"persistentVolume {pv.metadata.name} of claim {namespace}/{claim} is "
                              "neither hostPath nor local: the local node agent cannot mount it")
        Path(source.path).mkdir(parents=True, exist_ok=True)
        return source.path

    def service_account_token(self, pod: Mapping[str, Any], audience: str | None,
                              expiration_seconds: int) -> str:
        meta = pod["metadata"]
        spec: dict[str, Any] = {
            "expirationSeconds": max(expiration_seconds, 600),
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "uid": meta["uid"]},
            "audiences": [audience] if audience else [],
        }
        account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        response = self.agent.core.create_namespaced_service_account_token(
            account, meta["namespace"], {"spec": spec}, _request_timeout=API_TIMEOUT_S)
        return response.status.token


__all__ = ["AgentConfig", "NodeAgent"]
