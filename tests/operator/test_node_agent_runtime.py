"""The node agent's runtime without an API server: real netns, real processes.

Pods here are API-shaped dicts handed straight to the runner, so these tests
exercise networking, DNS names, env, mounts, signals and restarts on their own;
tests/operator/test_node_agent.py runs the same agent against the control plane.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from volt_operator.testing.node_agent.network import (
    PodAddress, PodNetwork, agent_id_for, render_hosts, render_resolv_conf)
from volt_operator.testing.node_agent.runner import (
    HostDirs, PodContext, PodRuntime, host_base_env, mount_points_in_use)
from volt_operator.testing.node_agent.status import PodRecord, compute_pod_status
from volt_operator.testing.node_agent.volumes import prepare_volumes

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                       reason="needs root and iproute2 (network namespaces)"),
]

PORT = 33010


class NoApi:
    """volumes.VolumeSources for pods that use no API-backed volume."""

    def data(self, kind: str, namespace: str, name: str) -> None:
        return None

    def claim_host_path(self, namespace: str, claim: str) -> str:
        raise AssertionError("no PVCs in these tests")

    def service_account_token(self, pod: Any, audience: Any, expiration_seconds: int) -> str:
        raise AssertionError("no tokens in these tests")


class Harness:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.network = PodNetwork(agent_id_for(workdir))
        self.network.setup()
        self.host_dirs = HostDirs(workdir / "host-dirs.json")
        self.pods: list[tuple[dict[str, Any], PodRecord, PodRuntime]] = []

    def add(self, name: str, command: list[str], *, subdomain: str | None = None,
            restart_policy: str = "Never", volumes: list[dict[str, Any]] | None = None,
            mounts: list[dict[str, Any]] | None = None, env: list[dict[str, Any]] | None = None,
            backoff_s: float = 0.2) -> PodRuntime:
        uid = str(uuid.uuid4())
        pod = {
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": {"rank": name[-1]}},
            "spec": {"hostname": name, "subdomain": subdomain, "restartPolicy": restart_policy,
                     "nodeName": "node-0", "volumes": volumes or [],
                     "containers": [{"name": "main", "image": "none", "command": command,
                                     "env": env or [], "volumeMounts": mounts or []}]},
        }
        netns, ip = self.network.create_pod_namespace(uid)
        self.network.write_resolv_conf(netns, render_resolv_conf("ns"))
        record = PodRecord(host_ip=self.network.gateway, pod_ip=ip, sandbox_ready=True)
        pod_dir = self.workdir / "pods" / uid
        context = PodContext(pod=pod, pod_dir=pod_dir, netns=netns,
                             volume_paths=prepare_volumes(pod, pod_dir, NoApi()),
                             lookup=lambda *_: None, node_allocatable={"cpu": "4"},
                             host_dirs=self.host_dirs, backoff_s=backoff_s,
                             base_env=host_base_env(name))
        runtime = PodRuntime(context, record)
        self.pods.append((pod, record, runtime))
        addresses = [PodAddress(p["metadata"]["name"], "ns", r.pod_ip or "", p["spec"]["hostname"],
                                p["spec"]["subdomain"]) for p, r, _ in self.pods]
        for (p, r, rt), address in zip(self.pods, addresses):
            self.network.write_hosts(rt.context.netns, render_hosts(address, addresses))
        return runtime

    def run_until(self, done: Any, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, _, runtime in self.pods:
                runtime.step()
            if done():
                return
            time.sleep(0.05)
        raise AssertionError(f"not done after {timeout}s; logs: {self.all_logs()}")

    def status(self, runtime: PodRuntime) -> dict[str, Any]:
        pod, record, _ = next(p for p in self.pods if p[2] is runtime)
        return compute_pod_status(pod, record, datetime.now(timezone.utc))

    def log(self, runtime: PodRuntime, restart: int = 0) -> str:
        return runtime.log_path("main", restart).read_text()

    def all_logs(self) -> dict[str, str]:
        return {p["metadata"]["name"]: "".join(f.read_text() for f in sorted(rt.log_path("main", 0).parent.glob("*.log")))
                for p, _, rt in self.pods if rt.log_path("main", 0).parent.exists()}

    def close(self) -> None:
        for _, _, runtime in self.pods:
            runtime.kill_now()
        self.network.teardown()
        self.host_dirs.remove_all()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()
        assert not h.network.list_namespaces()
        assert subprocess.run(["ip", "link", "show", h.network.bridge], capture_output=True).returncode != 0


def py(code: str) -> list[str]:
    return ["python", "-c", code]


def test_exit_codes_env_and_identity(harness: Harness) -> None:
    ok = harness.add("pod-0", py(
        "import os, socket, sys; print(os.environ['MY_IP'], os.environ['RANK'], os.environ['NS'], "
        "socket.gethostname(), sys.executable, 'KUBECONFIG' in os.environ)"),
        env=[{"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
             {"name": "RANK", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['rank']"}}},
             {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}])
    bad = harness.add("pod-1", py("import sys; sys.exit(7)"))
    missing = harness.add("pod-2", ["no-such-binary-volt"])
    harness.run_until(lambda: all(rt.finished() for rt in (ok, bad, missing)))

    ip = harness.status(ok)["podIP"]
    assert harness.status(ok)["phase"] == "Succeeded"
    # The pod's Python is the agent's (the venv first on PATH), no API credentials leak in.
    assert harness.log(ok).split() == [ip, "0", "ns", "pod-0", sys.executable, "False"]
    failed = harness.status(bad)
    assert failed["phase"] == "Failed"
    assert failed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 7
    assert failed["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"
    start_error = harness.status(missing)["containerStatuses"][0]["state"]["terminated"]
    assert start_error["reason"] == "StartError" and start_error["exitCode"] == 128
    assert "no-such-binary-volt" in start_error["message"]


def test_pods_of_one_subdomain_reach_each_other_by_dns_name(harness: Harness) -> None:
    server = harness.add("job-node-0", py(
        "import socket\n"
        f"s = socket.create_server(('0.0.0.0', {PORT}))\n"
        "c, peer = s.accept(); c.sendall(socket.gethostname().encode()); print('client', peer[0])"),
        subdomain="job")
    client = harness.add("job-node-1", py(
        "import socket, time\n"
        "for _ in range(100):\n"
        "    try:\n"
        f"        s = socket.create_connection(('job-node-0.job', {PORT}), timeout=2); break\n"
        "    except OSError: time.sleep(0.1)\n"
        "print(s.recv(64).decode(), socket.gethostbyname('job-node-0.job.ns.svc.cluster.local'))"),
        subdomain="job")
    outsider = harness.add("other-0", py(
        "import socket\n"
        "try: socket.gethostbyname('job-node-0.job'); print('resolved')\n"
        "except OSError: print('unresolved')"), subdomain="other")
    harness.run_until(lambda: all(rt.finished() for rt in (server, client, outsider)))
    server_ip, client_ip = harness.status(server)["podIP"], harness.status(client)["podIP"]
    assert server_ip != client_ip
    assert harness.log(client).split() == ["job-node-0", server_ip]
    assert harness.log(server).split() == ["client", client_ip]
    assert harness.log(outsider).strip() == "unresolved"


def test_terminate_sends_sigterm_to_the_group_then_sigkill(harness: Harness, tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    stubborn = harness.add("pod-0", py(
        "import signal, subprocess, time\n"
        f"child = subprocess.Popen(['sleep', '1000']); open('{child_pid_file}', 'w').write(str(child.pid))\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('got SIGTERM', flush=True))\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(0.1)"))
    polite = harness.add("pod-1", py("import time; print('ready', flush=True); time.sleep(1000)"))
    harness.run_until(lambda: "ready" in harness.log(stubborn) and "ready" in harness.log(polite))
    child_pid = int(child_pid_file.read_text())
    started = time.monotonic()
    stubborn.terminate(1.5)
    polite.terminate(30)
    harness.run_until(lambda: stubborn.finished() and polite.finished(), timeout=20)
    elapsed = time.monotonic() - started
    assert "got SIGTERM" in harness.log(stubborn)
    assert harness.status(stubborn)["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert harness.status(polite)["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
    assert 1.4 < elapsed < 15
    # The container's child (same process group) is gone too.
    assert not Path(f"/proc/{child_pid}").exists() or \
        Path(f"/proc/{child_pid}/stat").read_text().split()[2] == "Z"


def test_volume_mounts_are_bind_mounts_private_to_the_pod(harness: Harness) -> None:
    mount_path = f"/volt-agent-test-{uuid.uuid4().hex[:8]}/data"
    writer = harness.add("pod-0", ["sh", "-c", f"echo hello > {mount_path}/out && touch /ro/x; echo rc=$?"],
                         volumes=[{"name": "scratch", "emptyDir": {}},
                                  {"name": "ro", "emptyDir": {}}],
                         mounts=[{"name": "scratch", "mountPath": mount_path},
                                 {"name": "ro", "mountPath": "/ro", "readOnly": True}])
    harness.run_until(writer.finished)
    assert harness.status(writer)["phase"] == "Succeeded", harness.all_logs()
    scratch = writer.context.volume_paths["scratch"]
    assert Path(scratch, "out").read_text() == "hello\n"
    assert "Read-only file system" in harness.log(writer) and "rc=1" in harness.log(writer)
    # The host sees an empty mount point (the mount lives in the pod's namespace) until cleanup.
    assert os.listdir(mount_path) == []
    harness.host_dirs.remove_all()
    assert not os.path.exists(os.path.dirname(mount_path))


def test_on_failure_restarts_with_back_off_and_keeps_last_state(harness: Harness) -> None:
    flaky = harness.add("pod-0", ["sh", "-c", "if [ -e /state/ran ]; then echo second; exit 0; fi; "
                                              "touch /state/ran; echo first; exit 3"],
                        restart_policy="OnFailure",
                        volumes=[{"name": "state", "emptyDir": {}}],
                        mounts=[{"name": "state", "mountPath": "/state"}])
    harness.run_until(flaky.finished)
    status = harness.status(flaky)["containerStatuses"][0]
    assert harness.status(flaky)["phase"] == "Succeeded"
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert harness.log(flaky, 0).strip() == "first" and harness.log(flaky, 1).strip() == "second"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_gloo_rendezvous_over_the_master_dns_name(harness: Harness) -> None:
    """DDP's c10d TCP store and gloo find each other as in a cluster: MASTER_ADDR=<job>-node-0.<job>."""
    script = (
        "import os, torch, torch.distributed as dist\n"
        "dist.init_process_group('gloo', init_method='env://')\n"
        "t = torch.tensor([float(dist.get_rank() + 1)])\n"
        "dist.all_reduce(t)\n"
        "print(dist.get_rank(), dist.get_world_size(), t.item())\n"
        "dist.destroy_process_group()\n")
    ranks = []
    for rank in range(2):
        env = [{"name": "MASTER_ADDR", "value": "job-node-0.job"}, {"name": "MASTER_PORT", "value": str(PORT + 1)},
               {"name": "WORLD_SIZE", "value": "2"}, {"name": "RANK", "value": str(rank)}]
        ranks.append(harness.add(f"job-node-{rank}", ["python", "-c", script], subdomain="job", env=env))
    harness.run_until(lambda: all(rt.finished() for rt in ranks), timeout=200)
    for rank, runtime in enumerate(ranks):
        assert harness.status(runtime)["phase"] == "Succeeded", harness.all_logs()
        assert harness.log(runtime).split()[-3:] == [str(rank), "2", "3.0"]


def test_cleanup_keeps_mount_points_that_running_pods_use(harness: Harness) -> None:
    """rmdir of a mount point in use would detach the pod's mount (its writes would land on the
    host); the host-dir cleanup of any agent must leave it while some pod mounts on it."""
    mount_path = f"/volt-agent-test-{uuid.uuid4().hex[:8]}"
    pod = harness.add("pod-0", ["sh", "-c", f"while [ ! -e /go/now ]; do sleep 0.05; done; echo kept > {mount_path}/f"],
                      volumes=[{"name": "data", "emptyDir": {}}, {"name": "go", "emptyDir": {}}],
                      mounts=[{"name": "data", "mountPath": mount_path}, {"name": "go", "mountPath": "/go"}])
    harness.run_until(lambda: harness.status(pod)["phase"] == "Running")
    wait = time.monotonic() + 10
    while mount_path not in mount_points_in_use() and time.monotonic() < wait:
        time.sleep(0.05)
    harness.host_dirs.remove_all()  # as another agent's shutdown or sweep would
    assert os.path.isdir(mount_path)
    Path(pod.context.volume_paths["go"], "now").touch()
    harness.run_until(pod.finished)
    assert harness.status(pod)["phase"] == "Succeeded", harness.all_logs()
    assert Path(pod.context.volume_paths["data"], "f").read_text() == "kept\n"
    assert os.listdir(mount_path) == []
    os.rmdir(mount_path)


def test_adopting_a_pod_after_an_agent_restart_applies_the_restart_policy(harness: Harness) -> None:
    before = {"containerStatuses": [{"name": "main", "restartCount": 2,
                                     "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}
    never = harness.add("pod-0", ["sh", "-c", "echo should not run"])
    never.adopt(before)
    again = harness.add("pod-1", ["sh", "-c", "echo rerun"], restart_policy="OnFailure")
    again.adopt({"containerStatuses": [{"name": "main", "restartCount": 2, "state": {"running": {}}}]})
    done = harness.add("pod-2", ["sh", "-c", "echo should not run either"], restart_policy="OnFailure")
    done.adopt({"containerStatuses": [{"name": "main", "restartCount": 0, "state": {"terminated": {
        "exitCode": 0, "reason": "Completed", "finishedAt": "2026-01-01T00:00:05Z"}}}]})
    harness.run_until(lambda: never.finished() and done.finished()
                      and harness.status(again)["phase"] == "Succeeded")
    lost = harness.status(never)["containerStatuses"][0]
    assert harness.status(never)["phase"] == "Failed"
    assert lost["state"]["terminated"]["exitCode"] == 137 and "restarted" in lost["state"]["terminated"]["message"]
    assert not never.log_path("main", 2).exists()
    rerun = harness.status(again)["containerStatuses"][0]
    assert rerun["restartCount"] == 3 and rerun["lastState"]["terminated"]["exitCode"] == 137
    assert harness.log(again, 3) == "rerun\n"
    assert harness.status(done)["phase"] == "Succeeded" and not done.log_path("main", 0).exists()


def test_leftovers_in_their_own_session_are_killed_and_waited_for(harness: Harness, tmp_path: Path) -> None:
    # torch's elastic agent starts each worker in a session of its own: killing the
    # container's process group misses it; the end of the pod (its netns) must not.
    orphan_pid_file = tmp_path / "orphan.pid"
    pod = harness.add("pod-0", py(
        "import subprocess\n"
        "orphan = subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
        f"open('{orphan_pid_file}', 'w').write(str(orphan.pid))\n"))
    harness.run_until(lambda: pod.finished())
    orphan = int(orphan_pid_file.read_text())
    assert Path(f"/proc/{orphan}").exists()  # it outlived the container's process group
    assert harness.network.namespace_pids(pod.context.netns) == [orphan]
    assert harness.network.kill_namespace_processes(pod.context.netns) == []
    assert harness.network.namespace_pids(pod.context.netns) == []


def test_a_deleted_pod_leaves_the_bridge_even_while_a_process_holds_its_namespace(harness: Harness) -> None:
    pod = harness.add("pod-0", py("import time; time.sleep(1000)"))
    netns = pod.context.netns
    veth = harness.network.host_veth(netns)
    assert subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode == 0
    holder = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "1000"])
    try:
        harness.network.delete_pod_namespace(netns)
        # The namespace lives on in `holder`, but no longer on the bridge, so the
        # address the pool hands out next answers from one place only.
        assert subprocess.run(["ip", "link", "show", veth], capture_output=True).returncode != 0
        assert netns not in harness.network.list_namespaces()
    finally:
        holder.kill()
        holder.wait()
