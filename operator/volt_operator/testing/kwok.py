"""Simulated nodes for scale runs: KWOK (sigs.k8s.io/kwok) against the local API server.

KWOK is a controller that plays the kubelet of many fake nodes: it keeps their
Node objects Ready (a Lease per node), and moves the pods scheduled onto them
through *stages* (``STAGES``): Pending -> Running with an IP at once, Running ->
Failed with exit 137 when someone annotates the pod ``kwok.volt.dev/fail=true``
(a kill, as from the OOM killer), Running -> Succeeded (exit 0) when someone
annotates it ``kwok.volt.dev/finish=true``, and deleted ones are removed at once
(no grace period: nothing runs). No process runs:
the pods' IPs answer nothing, which the operator sees as a /progress endpoint
that is not there.

The nodes carry the label ``type=kwok`` and the taint ``kwok.x-k8s.io/node=fake:NoSchedule``,
so only pods that ask for them (``POD_PLACEMENT``) land there. The binary is
built from the Go module proxy (``make kwok``) into
``$VOLT_CACHE/kwok/<KWOK_VERSION>/kwok``.
"""
from __future__ import annotations

import os
import subprocess
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .cluster import LocalCluster, cache_dir, wait_for

KWOK_VERSION = os.environ.get("VOLT_KWOK_VERSION", "v0.7.0")
NODE_LABEL = {"type": "kwok"}
TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
FAIL_ANNOTATION = "kwok.volt.dev/fail"
FINISH_ANNOTATION = "kwok.volt.dev/finish"
# What a TrainingJob's spec.template needs for its pods to land on KWOK's nodes.
# A node whose Lease renewal came late on a loaded machine is NotReady for a moment: its
# pods stay (no eviction after the default 300 s) and are made Ready again (below).
POD_PLACEMENT: Dict[str, Any] = {
    "nodeSelector": NODE_LABEL,
    "tolerations": [{"key": TAINT["key"], "operator": "Equal", "value": TAINT["value"],
                     "effect": TAINT["effect"]},
                    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
                    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}],
}
# Node heartbeats: a Lease renewed every quarter of this (the node controller's grace is 50 s).
LEASE_SECONDS = 40
# KWOK's workers. Its defaults (4 Lease renewers, 4 pod-stage players) renew 1,000 nodes'
# Leases (100 writes/s) only while a write takes under 40 ms; on a loaded machine they
# fell behind, nodes went NotReady and their pods not Ready, and a 500-job run never
# settled. More in flight keeps the heartbeats on time without more writes.
CONFIGURATION: Dict[str, Any] = {
    "apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration",
    "options": {"nodeLeaseParallelism": 64, "podPlayStageParallelism": 16},
}


def kwok_binary() -> Path:
    override = os.environ.get("VOLT_KWOK_BIN")
    return Path(override) if override else cache_dir() / "kwok" / KWOK_VERSION / "kwok"


def _container_statuses(state: str) -> str:
    return "\n".join([
        "containerStatuses:",
        "{{ range .spec.containers }}",
        "- image: {{ .image | Quote }}",
        "  name: {{ .name | Quote }}",
        f"  ready: {'true' if state == 'running' else 'false'}",
        "  restartCount: 0",
        "  state:",
        state_block(state),
        "{{ end }}",
    ])


def state_block(state: str) -> str:
    if state == "running":
        return "    running:\n      startedAt: {{ Now | Quote }}"
    code, reason = (0, "Completed") if state == "succeeded" else (137, "Error")
    return ("    terminated:\n"
            f"      exitCode: {code}\n      reason: {reason}\n"
            "      startedAt: {{ Now | Quote }}\n      finishedAt: {{ Now | Quote }}")


def _pod_stage(name: str, match: List[Dict[str, Any]], status: Optional[str] = None,
               delete: bool = False) -> Dict[str, Any]:
    stage: Dict[str, Any] = {
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage", "metadata": {"name": name},
        "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                 "selector": {"matchExpressions": match}, "next": {}},
    }
    if status is not None:
        stage["spec"]["next"]["statusTemplate"] = status
    if delete:
        stage["spec"]["next"].update({"finalizers": {"empty": True}, "delete": True})
    return stage


def _alive() -> List[Dict[str, Any]]:
    return [{"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}]


def _running() -> List[Dict[str, Any]]:
    return _alive() + [{"key": ".status.phase", "operator": "In", "values": ["Running"]}]


STAGES: List[Dict[str, Any]] = [
    _pod_stage("volt-pod-running", _alive() + [
        {"key": ".status.podIP", "operator": "DoesNotExist"}], status="\n".join([
            "conditions:",
            "- {type: Initialized, status: 'True', lastTransitionTime: {{ Now | Quote }}}",
            "- {type: Ready, status: 'True', lastTransitionTime: {{ Now | Quote }}}",
            "- {type: ContainersReady, status: 'True', lastTransitionTime: {{ Now | Quote }}}",
            _container_statuses("running"),
            "hostIP: {{ NodeIPWith .spec.nodeName | Quote }}",
            "podIP: {{ PodIPWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace | Quote }}",
            "phase: Running",
            "startTime: {{ Now | Quote }}",
        ])),
    # The node controller marks a NotReady node's pods not Ready; a kubelet marks them Ready
    # again once it reports, and so does this.
    _pod_stage("volt-pod-ready-again", _running() + [
        {"key": '.status.conditions.[] | select( .type == "Ready" ) | .status', "operator": "In",
         "values": ["False"]},
        {"key": f'.metadata.annotations["{FAIL_ANNOTATION}"]', "operator": "DoesNotExist"},
        {"key": f'.metadata.annotations["{FINISH_ANNOTATION}"]', "operator": "DoesNotExist"}],
        status="\n".join([
            "conditions:",
            "- {type: Ready, status: 'True', lastTransitionTime: {{ Now | Quote }}}",
            "- {type: ContainersReady, status: 'True', lastTransitionTime: {{ Now | Quote }}}"])),
    _pod_stage("volt-pod-killed", _running() + [
        {"key": f'.metadata.annotations["{FAIL_ANNOTATION}"]', "operator": "In", "values": ["true"]}],
        status="\n".join([
            "conditions:",
            "- {type: Ready, status: 'False', lastTransitionTime: {{ Now | Quote }}}",
            "- {type: ContainersReady, status: 'False', lastTransitionTime: {{ Now | Quote }}}",
            _container_statuses("failed"), "phase: Failed"])),
    _pod_stage("volt-pod-finished", _running() + [
        {"key": f'.metadata.annotations["{FINISH_ANNOTATION}"]', "operator": "In", "values": ["true"]},
        {"key": f'.metadata.annotations["{FAIL_ANNOTATION}"]', "operator": "DoesNotExist"}],
        status="\n".join([
            "conditions:",
            "- {type: Ready, status: 'False', lastTransitionTime: {{ Now | Quote }}}",
            "- {type: ContainersReady, status: 'False', lastTransitionTime: {{ Now | Quote }}}",
            _container_statuses("succeeded"), "phase: Succeeded"])),
    _pod_stage("volt-pod-deleted", [{"key": ".metadata.deletionTimestamp", "operator": "Exists"}],
               delete=True),
]


def node(name: str) -> Dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {**NODE_LABEL, "kubernetes.io/hostname": name},
                     "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"taints": [TAINT]},
        "status": {"allocatable": {"cpu": "64", "memory": "512Gi", "pods": "110"},
                   "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110"}},
    }


class Kwok:
    """``kwok`` managing ``nodes`` fake nodes (``kwok-0`` ...) of ``kube``, as a subprocess."""

    def __init__(self, kube: LocalCluster, nodes: int, work_dir: Path) -> None:
        self.kube = kube
        self.nodes = nodes
        self.work_dir = Path(work_dir)
        self.log_path = self.work_dir / "kwok.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 180.0) -> "Kwok":
        binary = kwok_binary()
        if not binary.exists():
            raise FileNotFoundError(f"{binary} not built: run `make kwok`")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = self.work_dir / "kwok-stages.yaml"
        config.write_text(yaml.safe_dump_all([CONFIGURATION, *STAGES]))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(binary), "--kubeconfig", str(self.kube.kubeconfig), "--config", str(config),
                 "--manage-nodes-with-label-selector", "type=kwok",
                 "--node-lease-duration-seconds", str(LEASE_SECONDS),
                 "--cidr", "10.64.0.1/10", "--v", "WARN"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(self._create_node, range(self.nodes)))
            wait_for(lambda: self.ready_nodes() >= self.nodes, timeout,
                     f"{self.nodes} KWOK nodes Ready (log: {self.log_path})")
        except BaseException:
            self.stop()
            raise
        return self

    def _create_node(self, index: int) -> None:
        try:
            self.kube.request("POST", "/api/v1/nodes", node(f"kwok-{index}"))
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # already there: a cluster that ran this before
                raise

    def _delete_node(self, index: int) -> None:
        try:
            self.kube.request("DELETE", f"/api/v1/nodes/kwok-{index}")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise

    def ready_nodes(self) -> int:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"kwok exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
        out = self.kube.kubectl("get", "nodes", "-l", "type=kwok", "-o",
                                "jsonpath={range .items[*]}{.status.conditions[?(@.type=='Ready')].status}{'\\n'}{end}")
        return out.stdout.split().count("True")

    def stop(self) -> None:
        """Stop kwok and remove its nodes (a shared cluster's other tests must not schedule there)."""
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(self._delete_node, range(self.nodes)))
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
