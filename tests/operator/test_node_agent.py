"""The node agent against the real control plane (the session's `kube` cluster).

Pods are created with kubectl, scheduled by kube-scheduler onto the agent's
nodes, run as local processes and reported back through pods/status; logs
come through the API server's proxy to the agent's log endpoint.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any, Callable

import pytest

import volt_operator.testing.node_agent as node_agent
from volt_operator.testing.cluster import LocalCluster, wait_for
from volt_operator.testing.node_agent.network import agent_id_for

pytestmark = pytest.mark.timeout(240)

PORT = 33020
OPERATOR_DIR = str(Path(node_agent.__file__).resolve().parents[3])


def pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "volt-trainer:local", "command": command}
    container.update(spec.pop("container", {}))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": spec.pop("labels", {})},
            "spec": {"restartPolicy": "Never", "containers": [container], **spec}}


def apply(kube: LocalCluster, namespace: str, *objects: dict[str, Any]) -> None:
    kube.kubectl("-n", namespace, "apply", "-f", "-",
                 input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}))


def get_pod(kube: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    return kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")


def wait_pod(kube: LocalCluster, namespace: str, name: str, ok: Callable[[dict[str, Any]], bool],
             what: str, timeout: float = 90) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        current = get_pod(kube, namespace, name)
        return current if ok(current) else None
    return wait_for(check, timeout, f"pod {namespace}/{name} {what}")


def phase_in(*phases: str) -> Callable[[dict[str, Any]], bool]:
    return lambda p: (p.get("status") or {}).get("phase") in phases


def terminated(p: dict[str, Any]) -> dict[str, Any]:
    return p["status"]["containerStatuses"][0]["state"]["terminated"]


def test_pods_report_succeeded_and_failed_with_exit_codes_and_logs(kube: LocalCluster, namespace: str) -> None:
    apply(kube, namespace,
          pod("ok", ["python", "-c", "print('hello from the pod'); print('line two')"]),
          pod("bad", ["python", "-c", "import sys; print('failing'); sys.exit(3)"]))
    ok = wait_pod(kube, namespace, "ok", phase_in("Succeeded", "Failed"), "finished")
    bad = wait_pod(kube, namespace, "bad", phase_in("Succeeded", "Failed"), "finished")
    assert ok["status"]["phase"] == "Succeeded"
    assert terminated(ok)["exitCode"] == 0 and terminated(ok)["reason"] == "Completed"
    assert bad["status"]["phase"] == "Failed"
    assert terminated(bad)["exitCode"] == 3 and terminated(bad)["reason"] == "Error"
    assert ok["spec"]["nodeName"] in kube.node_names
    assert ipaddress.ip_address(ok["status"]["podIP"]) in ipaddress.ip_network("198.18.0.0/16")
    assert ok["status"]["podIP"] != bad["status"]["podIP"]
    ready = {c["type"]: c for c in ok["status"]["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "PodCompleted"
    # kubectl logs: the API server proxies to the agent's kubelet endpoint.
    assert kube.kubectl("-n", namespace, "logs", "ok").stdout == "hello from the pod\nline two\n"
    assert kube.kubectl("-n", namespace, "logs", "ok", "--tail=1").stdout == "line two\n"
    assert kube.kubectl("-n", namespace, "logs", "bad").stdout == "failing\n"


def test_termination_message_reaches_the_pod_status(kube: LocalCluster, namespace: str) -> None:
    # The engine writes its final progress to VOLT_TERMINATION_MESSAGE_PATH; the agent gives
    # each container a file of its own there and copies it into the status like a kubelet.
    script = ("import os; open(os.environ['VOLT_TERMINATION_MESSAGE_PATH'], 'w')"
              ".write('{\"step\": 42}')")
    spec = pod("epitaph", ["python", "-c", script])
    spec["spec"]["containers"][0]["env"] = [
        {"name": "VOLT_TERMINATION_MESSAGE_PATH", "value": "/dev/termination-log"}]
    apply(kube, namespace, spec)
    done = wait_pod(kube, namespace, "epitaph", phase_in("Succeeded", "Failed"), "finished")
    assert done["status"]["phase"] == "Succeeded"
    assert json.loads(terminated(done)["message"]) == {"step": 42}
    assert not os.path.exists("/dev/termination-log")  # nothing written on the host's /dev


def test_follow_logs_of_a_running_pod(kube: LocalCluster, namespace: str) -> None:
    apply(kube, namespace, pod("ticker", ["python", "-u", "-c",
                                          "import time\nfor i in range(3):\n    print('tick', i); time.sleep(1)"]))
    wait_pod(kube, namespace, "ticker", phase_in("Running", "Succeeded"), "running")
    followed = kube.kubectl("-n", namespace, "logs", "-f", "ticker", timeout=60).stdout
    assert followed == "tick 0\ntick 1\ntick 2\n"


def test_downward_api_env_arrives(kube: LocalCluster, namespace: str) -> None:
    fields = {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
              "RANK": "metadata.labels['volt.dev/node-rank']", "POD_IP": "status.podIP",
              "NODE": "spec.nodeName"}
    env = [{"name": k, "valueFrom": {"fieldRef": {"fieldPath": v}}} for k, v in fields.items()]
    env.append({"name": "ADDR", "value": "$(POD_NAME).$(POD_NAMESPACE)"})
    script = "import os, json; print(json.dumps({k: os.environ[k] for k in %r}))" % (sorted(fields) + ["ADDR"])
    apply(kube, namespace, pod("envy", ["python", "-c", script], labels={"volt.dev/node-rank": "3"},
                               container={"env": env}))
    done = wait_pod(kube, namespace, "envy", phase_in("Succeeded", "Failed"), "finished")
    assert done["status"]["phase"] == "Succeeded", kube.kubectl("-n", namespace, "logs", "envy").stdout
    seen = json.loads(kube.kubectl("-n", namespace, "logs", "envy").stdout)
    assert seen == {"POD_NAME": "envy", "POD_NAMESPACE": namespace, "RANK": "3",
                    "POD_IP": done["status"]["podIP"], "NODE": done["spec"]["nodeName"],
                    "ADDR": f"envy.{namespace}"}


def test_pods_of_a_headless_service_reach_each_other_by_dns_name(kube: LocalCluster, namespace: str) -> None:
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "job"},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                        "selector": {"volt.dev/job": "job"}, "ports": [{"port": PORT}]}}
    server = pod("job-node-0", ["python", "-c",
                                "import socket\n"
                                f"s = socket.create_server(('0.0.0.0', {PORT}))\n"
                                "c, peer = s.accept(); c.sendall(socket.gethostname().encode()); print(peer[0])"],
                 hostname="job-node-0", subdomain="job", labels={"volt.dev/job": "job"})
    client = pod("job-node-1", ["python", "-c",
                                "import socket, time\n"
                                "for _ in range(300):\n"
                                "    try:\n"
                                f"        s = socket.create_connection(('job-node-0.job', {PORT}), timeout=2); break\n"
                                "    except OSError: time.sleep(0.1)\n"
                                f"print(s.recv(64).decode(), socket.gethostbyname('job-node-0.job.{namespace}.svc'))"],
                 hostname="job-node-1", subdomain="job", labels={"volt.dev/job": "job"})
    apply(kube, namespace, service, server, client)
    done_server = wait_pod(kube, namespace, "job-node-0", phase_in("Succeeded", "Failed"), "finished")
    done_client = wait_pod(kube, namespace, "job-node-1", phase_in("Succeeded", "Failed"), "finished")
    logs = {n: kube.kubectl("-n", namespace, "logs", n).stdout for n in ("job-node-0", "job-node-1")}
    assert done_server["status"]["phase"] == done_client["status"]["phase"] == "Succeeded", logs
    assert logs["job-node-1"].split() == ["job-node-0", done_server["status"]["podIP"]]
    assert logs["job-node-0"].split() == [done_client["status"]["podIP"]]


def test_delete_sends_sigterm_then_sigkill_after_the_grace_period(
        kube: LocalCluster, namespace: str, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    stubborn = pod("stubborn", ["python", "-c",
                                "import signal, time\n"
                                "def on_term(*_):\n"
                                "    open('/marks/stubborn', 'w').write('SIGTERM')\n"
                                "signal.signal(signal.SIGTERM, on_term)\n"
                                "open('/marks/stubborn-ready', 'w').write('ready')\n"
                                "while True: time.sleep(0.1)"],
                   terminationGracePeriodSeconds=4,
                   volumes=[{"name": "marks", "hostPath": {"path": str(marks), "type": "Directory"}}],
                   container={"volumeMounts": [{"name": "marks", "mountPath": "/marks"}]})
    polite = pod("polite", ["sleep", "1000"], terminationGracePeriodSeconds=30)
    apply(kube, namespace, stubborn, polite)
    wait_for(lambda: (marks / "stubborn-ready").exists(), 90, "the stubborn pod to start")
    wait_pod(kube, namespace, "polite", phase_in("Running"), "running")

    started = time.monotonic()
    kube.kubectl("-n", namespace, "delete", "pod", "stubborn", "polite", "--wait=true", timeout=90)
    elapsed = time.monotonic() - started
    assert (marks / "stubborn").read_text() == "SIGTERM"
    # SIGKILL came at the end of the 4 s grace period; `sleep` died of SIGTERM at once.
    assert 4 <= elapsed < 30
    for name in ("stubborn", "polite"):
        with pytest.raises(urllib.error.HTTPError) as gone:
            get_pod(kube, namespace, name)
        assert gone.value.code == 404


def test_restart_policy_on_failure_counts_restarts(kube: LocalCluster, namespace: str) -> None:
    script = ("if [ -e /state/ran ]; then echo second; exit 0; fi; touch /state/ran; echo first; exit 5")
    apply(kube, namespace, pod("flaky", ["sh", "-c", script], restartPolicy="OnFailure",
                               volumes=[{"name": "state", "emptyDir": {}}],
                               container={"volumeMounts": [{"name": "state", "mountPath": "/state"}]}))
    done = wait_pod(kube, namespace, "flaky", phase_in("Succeeded", "Failed"), "finished", timeout=120)
    status = done["status"]["containerStatuses"][0]
    assert done["status"]["phase"] == "Succeeded"
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 5
    assert kube.kubectl("-n", namespace, "logs", "flaky").stdout == "second\n"
    assert kube.kubectl("-n", namespace, "logs", "flaky", "--previous").stdout == "first\n"
    # The kubelet-style events `kubectl describe` shows.
    def reasons() -> set[str]:
        events = kube.request("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
        return {e["reason"] for e in events if e["involvedObject"]["name"] == "flaky"}
    wait_for(lambda: {"Started", "BackOff"} <= reasons(), 30, "Started and BackOff events")


def test_pvc_gets_a_local_volume_that_outlives_the_pod(kube: LocalCluster, namespace: str) -> None:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpts"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    volume = [{"name": "ckpts", "persistentVolumeClaim": {"claimName": "ckpts"}}]
    mount = {"volumeMounts": [{"name": "ckpts", "mountPath": "/checkpoints"}]}
    apply(kube, namespace, claim,
          pod("writer", ["sh", "-c", "echo step-100 > /checkpoints/latest"], volumes=volume, container=mount))
    wait_pod(kube, namespace, "writer", phase_in("Succeeded", "Failed"), "finished")
    apply(kube, namespace,
          pod("reader", ["cat", "/checkpoints/latest"], volumes=volume, container=mount))
    done = wait_pod(kube, namespace, "reader", phase_in("Succeeded", "Failed"), "finished")
    assert done["status"]["phase"] == "Succeeded"
    assert kube.kubectl("-n", namespace, "logs", "reader").stdout == "step-100\n"
    bound = kube.request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/ckpts")
    assert bound["status"]["phase"] == "Bound"
    # The data is on the PV's host directory, not on the host's /checkpoints.
    volume = kube.request("GET", f"/api/v1/persistentvolumes/{bound['spec']['volumeName']}")
    assert Path(volume["spec"]["hostPath"]["path"], "latest").read_text() == "step-100\n"
    assert not Path("/checkpoints/latest").exists()


def test_nodes_are_ready_with_capacity_and_oversized_pods_stay_pending(
        kube: LocalCluster, namespace: str) -> None:
    for name in kube.node_names:
        node = kube.request("GET", f"/api/v1/nodes/{name}")
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready["Ready"] == "True"
        assert node["status"]["allocatable"]["cpu"] and node["status"]["allocatable"]["pods"]
        lease = kube.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}")
        assert lease["spec"]["holderIdentity"] == name
    apply(kube, namespace, pod("huge", ["true"], container={"resources": {"requests": {"cpu": "5000"}}}))
    unschedulable = wait_pod(
        kube, namespace, "huge",
        lambda p: any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                      for c in (p.get("status") or {}).get("conditions") or []), "unschedulable", timeout=60)
    message = next(c["message"] for c in unschedulable["status"]["conditions"] if c["type"] == "PodScheduled")
    assert "Insufficient cpu" in message
    assert unschedulable["status"]["phase"] == "Pending"


def start_agent(kube: LocalCluster, node: str, workdir: Path, *extra: str) -> subprocess.Popen[str]:
    env = kube.env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [OPERATOR_DIR, env.get("PYTHONPATH")]))
    workdir.mkdir(parents=True, exist_ok=True)
    agent = subprocess.Popen(
        [sys.executable, "-m", "volt_operator.testing.node_agent", "--kubeconfig", str(kube.kubeconfig),
         "--nodes", node, "--workdir", str(workdir), "--restart-backoff", "1", *extra],
        stdout=subprocess.PIPE, stderr=open(workdir.parent / f"{node}.log", "w"), text=True, env=env)
    assert agent.stdout is not None
    line = agent.stdout.readline()
    assert line.startswith("node-agent ready"), (workdir.parent / f"{node}.log").read_text()
    return agent


def process_gone(pid: int) -> bool:
    """Dead: no /proc entry, or a zombie nobody has reaped yet (its parent, the agent, was killed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def netns_names() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def test_agent_shutdown_and_crash_leave_nothing_behind(
        kube: LocalCluster, namespace: str, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()

    def sleeper(name: str, node: str) -> dict[str, Any]:
        # `$$$$`: Kubernetes expands `$$` to `$`, so the shell sees `$$` (its pid).
        return pod(name, ["sh", "-c", f"echo $$$$ > /pids/{name}; exec sleep 1000"], nodeName=node,
                   volumes=[{"name": "pids", "hostPath": {"path": str(pids)}}],
                   container={"volumeMounts": [{"name": "pids", "mountPath": "/pids"}]})

    crashed = start_agent(kube, "lifecycle-a", tmp_path / "a")
    try:
        apply(kube, namespace, sleeper("orphan", "lifecycle-a"))
        wait_pod(kube, namespace, "orphan", phase_in("Running"), "running")
        orphan_pid = int(wait_for(lambda: (pids / "orphan").exists() and (pids / "orphan").read_text(),
                                  30, "the orphan's pid"))
        crashed.kill()  # SIGKILL: no cleanup; its pod process and netns stay behind
        crashed.wait(10)

        agent = start_agent(kube, "lifecycle-b", tmp_path / "b")  # sweeps the dead agent's leftovers
        wait_for(lambda: process_gone(orphan_pid), 10, "the orphan to be killed")
        assert not [n for n in netns_names() if n.startswith(f"volt-{agent_id_for(tmp_path / 'a')}-")]

        apply(kube, namespace, sleeper("victim", "lifecycle-b"))
        wait_pod(kube, namespace, "victim", phase_in("Running"), "running")
        victim_pid = int(wait_for(lambda: (pids / "victim").exists() and (pids / "victim").read_text(),
                                  30, "the victim's pid"))
        bridge = f"vb{agent_id_for(tmp_path / 'b')}"
        started = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0
        assert time.monotonic() - started < 20
        assert process_gone(victim_pid)
        assert not [n for n in netns_names() if n.startswith(f"volt-{agent_id_for(tmp_path / 'b')}-")]
        assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
        with pytest.raises(urllib.error.HTTPError) as gone:
            kube.request("GET", "/api/v1/nodes/lifecycle-b")
        assert gone.value.code == 404
    finally:
        for process in (crashed, locals().get("agent")):
            if isinstance(process, subprocess.Popen) and process.poll() is None:
                process.kill()
                process.wait(10)
        kube.kubectl("delete", "node", "lifecycle-a", "lifecycle-b", "--ignore-not-found", check=False)


def test_gpu_nodes_advertise_capacity_and_pods_see_their_devices(
        kube: LocalCluster, namespace: str, tmp_path: Path) -> None:
    agent = start_agent(kube, "gpu-0,gpu-1", tmp_path / "gpu", "--gpus", "2")
    try:
        node = kube.request("GET", "/api/v1/nodes/gpu-1")
        assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"
        show = ["python", "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'] or '-')"]
        apply(kube, namespace,
              pod("one", show, nodeName="gpu-1", container={"resources": {"limits": {"nvidia.com/gpu": "1"}}}),
              pod("none", show, nodeName="gpu-1"))
        for name in ("one", "none"):
            wait_pod(kube, namespace, name, phase_in("Succeeded", "Failed"), "finished")
        # node i owns GPUs i*N .. i*N+N-1: gpu-1 hands out 2 or 3.
        assert kube.kubectl("-n", namespace, "logs", "one").stdout.strip() in ("2", "3")
        assert kube.kubectl("-n", namespace, "logs", "none").stdout.strip() == "-"
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(60)
