"""Unit tests of the node agent's pure parts: status, env, hosts, addresses, logs, PVs."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from volt_operator.testing.node_agent.gpus import GpuAllocator, GpuError, gpu_request, node_gpu_ids
from volt_operator.testing.node_agent.logs import tail_offset
from volt_operator.testing.node_agent.network import (
    SUPERNET, AddressPool, PodAddress, agent_id_for, choose_subnet, pod_dns_names, render_hosts)
from volt_operator.testing.node_agent.nodes import NodeShape, ready_conditions
from volt_operator.testing.node_agent.podenv import (
    EnvError, expand, field_value, parse_quantity, resolve_env)
from volt_operator.testing.node_agent.provisioner import volume_for, wants_local_volume
from volt_operator.testing.node_agent.status import (
    RUNNING, TERMINATED, ContainerRecord, PodRecord, Termination, compute_phase,
    compute_pod_status, exit_code_of)
from volt_operator.testing.node_agent.volumes import VolumeError, container_mounts

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _done(name: str, code: int) -> ContainerRecord:
    return ContainerRecord(name, "img", state=TERMINATED, started_at=T0,
                           terminated=Termination(code, T0, T0 + timedelta(seconds=1)))


def _running(name: str) -> ContainerRecord:
    return ContainerRecord(name, "img", state=RUNNING, started_at=T0)


# -- status -------------------------------------------------------------------

@pytest.mark.parametrize("policy,codes,phase", [
    ("Never", [0, 0], "Succeeded"),
    ("Never", [0, 3], "Failed"),
    ("OnFailure", [0, 0], "Succeeded"),
    ("Always", [0], "Running"),
])
def test_phase_of_exited_containers(policy: str, codes: list[int], phase: str) -> None:
    record = PodRecord("10.0.0.1", containers=[_done(f"c{i}", c) for i, c in enumerate(codes)])
    assert compute_phase(policy, record) == phase


def test_phase_pending_until_all_started_and_running_after() -> None:
    record = PodRecord("h", containers=[_running("a"), ContainerRecord("b", "img")])
    assert compute_phase("Never", record) == "Pending"
    record.containers[1] = _running("b")
    assert compute_phase("Never", record) == "Running"


def test_phase_of_container_waiting_to_restart_counts_as_stopped() -> None:
    waiting = ContainerRecord("a", "img", last_terminated=Termination(1, T0, T0), restart_count=1,
                              waiting_reason="CrashLoopBackOff")
    assert compute_phase("OnFailure", PodRecord("h", containers=[waiting])) == "Running"


def test_failed_init_container_fails_a_never_pod_and_blocks_others() -> None:
    record = PodRecord("h", init_containers=[_done("init", 2)], containers=[ContainerRecord("c", "i")])
    assert compute_phase("Never", record) == "Failed"
    assert compute_phase("OnFailure", record) == "Pending"
    record.init_containers = [_done("init", 0)]
    assert compute_phase("Never", record) == "Pending"  # main container not started yet


def test_exit_codes_of_signals() -> None:
    assert exit_code_of(-9) == 137
    assert exit_code_of(-15) == 143
    assert exit_code_of(4) == 4


def test_pod_status_document() -> None:
    pod = {"metadata": {"generation": 2}, "spec": {"restartPolicy": "Never"},
           "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}}
    record = PodRecord("198.18.0.1", pod_ip="198.18.0.7", sandbox_ready=True, start_time=T0,
                       containers=[_done("main", 137)])
    status = compute_pod_status(pod, record, T0)
    assert status["phase"] == "Failed"
    assert status["podIP"] == "198.18.0.7" and status["hostIP"] == "198.18.0.1"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated == {"exitCode": 137, "reason": "Error", "signal": 9,
                          "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:01Z"}
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "PodCompleted"
    assert conditions["PodScheduled"]["status"] == "True"
    assert status["containerStatuses"][0]["ready"] is False
    assert status["observedGeneration"] == 2


def test_condition_transition_time_is_kept_while_status_is_unchanged() -> None:
    record = PodRecord("h", pod_ip="1.2.3.4", sandbox_ready=True, containers=[_running("a")])
    first = compute_pod_status({"spec": {}}, record, T0)
    later = compute_pod_status({"spec": {}, "status": first}, record, T0 + timedelta(minutes=5))
    assert first == later
    assert later["phase"] == "Running"


def test_terminal_phase_is_sticky() -> None:
    record = PodRecord("h", containers=[_running("a")])
    status = compute_pod_status({"spec": {}, "status": {"phase": "Failed"}}, record, T0)
    assert status["phase"] == "Failed"


# -- env ----------------------------------------------------------------------

POD = {
    "metadata": {"name": "job-node-1", "namespace": "team", "uid": "u-1",
                 "labels": {"volt.dev/node-rank": "1"}, "annotations": {"a/b": "c"}},
    "spec": {"nodeName": "node-0", "serviceAccountName": "default"},
    "status": {"podIP": "198.18.0.9", "hostIP": "198.18.0.1"},
}


def test_downward_api_field_paths() -> None:
    assert field_value(POD, "metadata.labels['volt.dev/node-rank']") == "1"
    assert field_value(POD, "metadata.annotations['a/b']") == "c"
    assert field_value(POD, "metadata.annotations['missing']") == ""
    assert field_value(POD, "status.podIP") == "198.18.0.9"
    assert field_value(POD, "spec.nodeName") == "node-0"
    with pytest.raises(EnvError, match="spec.bogus"):
        field_value(POD, "spec.bogus")


def test_expand_follows_kubernetes_rules() -> None:
    defined = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", defined) == "x-y-$(C)-$(A)"


def test_resolve_env_order_sources_and_errors() -> None:
    data = {("ConfigMap", "team", "cfg"): {"K": "from-cm", "OTHER": "o"},
            ("Secret", "team", "sec"): {"TOKEN": "s3cret"}}

    def lookup(kind: str, ns: str, name: str) -> dict[str, str] | None:
        return data.get((kind, ns, name))

    container = {
        "name": "main",
        "resources": {"limits": {"memory": "2Gi"}, "requests": {"cpu": "500m"}},
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CM_"}],
        "env": [
            {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['volt.dev/node-rank']"}}},
            {"name": "ADDR", "value": "$(RANK)@$(PATH_LIKE)"},
            {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "K"}}},
            {"name": "T", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "TOKEN"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}}},
            {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
    }
    env = resolve_env(POD, container, {"PATH_LIKE": "/bin"}, lookup, {"cpu": "8"})
    assert env["RANK"] == "1" and env["ADDR"] == "1@/bin"
    assert env["K"] == "from-cm" and env["CM_OTHER"] == "o" and env["T"] == "s3cret"
    assert "OPT" not in env
    assert env["MEM_MI"] == "2048" and env["CPU"] == "1" and env["CPU_LIMIT"] == "8"
    missing = {"name": "m", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}]}
    with pytest.raises(EnvError, match="env X: ConfigMap team/'gone' not found"):
        resolve_env(POD, missing, {}, lookup)


def test_parse_quantity() -> None:
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("16Gi") == 16 * 2**30
    assert parse_quantity(2) == 2
    with pytest.raises(EnvError):
        parse_quantity("12 apples")


# -- volumes --------------------------------------------------------------------

def test_container_mounts_resolve_sub_paths_and_reject_escapes(tmp_path: Path) -> None:
    paths = {"data": str(tmp_path)}
    mounts = container_mounts({"name": "c", "volumeMounts": [
        {"name": "data", "mountPath": "/data", "readOnly": True},
        {"name": "data", "mountPath": "/sub", "subPath": "a/b"}]}, paths)
    assert mounts[0].source == str(tmp_path) and mounts[0].read_only
    assert mounts[1].source == str(tmp_path / "a" / "b") and (tmp_path / "a" / "b").is_dir()
    with pytest.raises(VolumeError, match="stay inside"):
        container_mounts({"name": "c", "volumeMounts": [
            {"name": "data", "mountPath": "/x", "subPath": "../etc"}]}, paths)
    with pytest.raises(VolumeError, match="names no volume"):
        container_mounts({"name": "c", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, paths)


# -- network ----------------------------------------------------------------------

def test_hosts_file_names_peers_of_the_same_subdomain_and_namespace() -> None:
    own = PodAddress("job-node-1", "ns", "198.18.0.3", "job-node-1", "job")
    peers = [own,
             PodAddress("job-node-0", "ns", "198.18.0.2", "job-node-0", "job"),
             PodAddress("other-node-0", "ns", "198.18.0.4", "other-node-0", "other"),
             PodAddress("job-node-0", "ns2", "198.18.0.5", "job-node-0", "job")]
    hosts = render_hosts(own, peers)
    assert "198.18.0.2\tjob-node-0.job.ns.svc.cluster.local job-node-0.job.ns.svc job-node-0.job.ns job-node-0.job\n" in hosts
    assert "198.18.0.3\tjob-node-1.job.ns.svc.cluster.local" in hosts and hosts.count("198.18.0.3") == 1
    assert "198.18.0.4" not in hosts and "198.18.0.5" not in hosts
    assert "127.0.0.1\tlocalhost" in hosts


def test_pod_without_subdomain_has_only_its_hostname() -> None:
    plain = PodAddress("p", "ns", "198.18.0.9", "p", None)
    assert pod_dns_names(plain) == []
    assert "198.18.0.9\tp\n" in render_hosts(plain, [plain])


def test_subnet_choice_skips_used_and_stays_in_range() -> None:
    agent = agent_id_for("/some/workdir")
    first = choose_subnet(agent, set())
    assert first.subnet_of(SUPERNET) and first.prefixlen == 24
    second = choose_subnet(agent, {first})
    assert second != first and second.subnet_of(SUPERNET)
    assert agent_id_for("/some/workdir") == agent != agent_id_for("/other")


def test_address_pool_reuses_per_key_and_releases() -> None:
    pool = AddressPool(ipaddress.IPv4Network("198.18.7.0/29"))
    a, b = pool.allocate("a"), pool.allocate("b")
    assert str(pool.gateway) == "198.18.7.1" and a != b and pool.gateway not in (a, b)
    assert pool.allocate("a") == a
    for key in "cde":
        pool.allocate(key)
    with pytest.raises(RuntimeError, match="exhausted"):
        pool.allocate("f")
    pool.release("b")
    assert pool.allocate("f") == b


def test_address_pool_hands_out_a_released_address_last() -> None:
    # As CNI host-local: peers may still hold a dead pod's address for a while.
    pool = AddressPool(ipaddress.IPv4Network("198.18.7.0/29"))  # .2 .. .6
    a = pool.allocate("a")
    pool.release("a")
    following = [pool.allocate(key) for key in "bcde"]
    assert a not in following and len(set(following)) == 4
    assert pool.allocate("f") == a  # the only one left
    pool.release("c")
    assert pool.allocate("g") == following[1]


# -- nodes, logs, provisioner --------------------------------------------------------

def test_node_shape_validation_names_the_flag() -> None:
    assert NodeShape(gpus=2).resources()["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in NodeShape().resources()
    with pytest.raises(ValueError, match="--memory"):
        NodeShape(memory="lots")
    with pytest.raises(ValueError, match="--gpus"):
        NodeShape(gpus=-1)


def test_ready_condition_keeps_transition_time() -> None:
    first = ready_conditions(T0)
    later = ready_conditions(T0 + timedelta(seconds=30), first)
    ready = next(c for c in later if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert ready["lastHeartbeatTime"] == "2026-01-01T00:00:30Z"


def test_tail_offset(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    assert log.read_bytes()[tail_offset(log, 2):] == b"two\nthree\n"
    assert tail_offset(log, 10) == 0
    log.write_bytes(b"one\ntwo\nunterminated")
    assert log.read_bytes()[tail_offset(log, 1):] == b"unterminated"
    assert tail_offset(log, 0) == log.stat().st_size


def test_provisioner_picks_unbound_classless_claims(tmp_path: Path) -> None:
    claim = {"metadata": {"name": "ckpts", "namespace": "ns", "uid": "0123456789abcdef"},
             "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "5Gi"}}},
             "status": {"phase": "Pending"}}
    assert wants_local_volume(claim)
    pv = volume_for(claim, tmp_path, "agent")
    assert pv["spec"]["capacity"] == {"storage": "5Gi"}
    assert pv["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pv["spec"]["claimRef"]["uid"] == "0123456789abcdef"
    assert pv["spec"]["hostPath"]["path"].startswith(str(tmp_path))
    assert not wants_local_volume({**claim, "spec": {**claim["spec"], "storageClassName": "fast-ssd"}})
    assert not wants_local_volume({**claim, "spec": {**claim["spec"], "volumeName": "pv-1"}})


# -- GPUs -------------------------------------------------------------------------------

def _gpu_pod(uid: str, node: str, *requests: int, init: int = 0) -> dict[str, Any]:
    def container(name: str, count: int) -> dict[str, Any]:
        return {"name": name, "resources": {"limits": {"nvidia.com/gpu": str(count)}} if count else {}}
    spec: dict[str, Any] = {"nodeName": node, "containers": [container(f"c{i}", n) for i, n in enumerate(requests)]}
    if init:
        spec["initContainers"] = [container("init", init)]
    return {"metadata": {"uid": uid}, "spec": spec}


def test_gpus_are_split_between_nodes_and_containers() -> None:
    allocator = GpuAllocator(node_gpu_ids(["node-0", "node-1"], 2))
    assert allocator.devices == {"node-0": [0, 1], "node-1": [2, 3]}
    env = allocator.env_for_pod(_gpu_pod("a", "node-1", 1, 0, init=1))
    assert env["c0"] == {"CUDA_VISIBLE_DEVICES": "2", "NVIDIA_VISIBLE_DEVICES": "2"}
    assert env["c1"] == {"CUDA_VISIBLE_DEVICES": "", "NVIDIA_VISIBLE_DEVICES": "void"}
    assert env["init"]["CUDA_VISIBLE_DEVICES"] == "2"  # init containers reuse the pod's GPUs
    assert allocator.env_for_pod(_gpu_pod("b", "node-1", 1))["c0"]["CUDA_VISIBLE_DEVICES"] == "3"
    with pytest.raises(GpuError, match="node node-1 has 0 free of 2"):
        allocator.env_for_pod(_gpu_pod("c", "node-1", 1))
    allocator.release("a")
    assert allocator.env_for_pod(_gpu_pod("c", "node-1", 1))["c0"]["CUDA_VISIBLE_DEVICES"] == "2"


def test_without_gpus_the_agent_leaves_visibility_alone() -> None:
    allocator = GpuAllocator(node_gpu_ids(["node-0"], 0))
    assert allocator.env_for_pod(_gpu_pod("a", "node-0", 0)) == {}
    assert gpu_request({"name": "x", "resources": {"requests": {"nvidia.com/gpu": 2}}}) == 2
    with pytest.raises(GpuError, match="whole number"):
        gpu_request({"name": "x", "resources": {"limits": {"nvidia.com/gpu": "half"}}})
