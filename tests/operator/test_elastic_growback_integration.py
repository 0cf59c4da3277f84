"""A shrunk elastic TrainingJob grows back on the real control plane, scheduler and node agent.

Its pods may run only on nodes labelled for this test, one per node. With one labelled node the
gang of 2 shrinks to 1; its capacity probe stays unschedulable; labelling the second node lets the
scheduler bind the probe, and at the next checkpoint rank 0 reports the job grows back to 2.
Rank 0 stands in for the engine: it serves /progress with a checkpoint step that advances every
second, and exits 75 on SIGTERM as the engine does after its checkpoint. Every wait is a watch.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, List

import pytest
from kubernetes import client, watch

from job_helpers import idle_job_manifest
from operator_process import OperatorProcess, admin_configuration

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

NAME = "regrow"
PROBE_LABEL = "volt.dev/capacity-probe"

STEPPING_RANK = ["python", "-c", """
import http.server, json, os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))
start = time.time()
class Progress(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        step = int(time.time() - start) + 100 * int(os.environ["VOLT_ATTEMPT"])
        body = json.dumps({"epoch": 0, "step": step, "max_steps": 100000,
                           "attempt": int(os.environ["VOLT_ATTEMPT"]), "last_step_time": time.time(),
                           "checkpoint": {"path": f"/ckpt/step-{step}", "step": step}}).encode()
        self.send_response(200 if self.path == "/progress" else 404)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *_):
        pass
http.server.HTTPServer(("", int(os.environ["VOLT_METRICS_PORT"])), Progress).serve_forever()
"""]


def watch_until(what: str, list_call: Callable[..., Any], predicate: Callable[[Dict[str, Any]], bool],
                timeout: float, **kwargs: Any) -> List[Dict[str, Any]]:
    """Every version a watch of ``list_call(**kwargs)`` delivers (it starts with the objects that
    exist) until one satisfies ``predicate``; that one is last."""
    seen: List[Dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stream: Iterator[Dict[str, Any]] = watch.Watch().stream(
            list_call, timeout_seconds=max(1, int(deadline - time.monotonic())), **kwargs)
        for event in stream:
            obj = event["object"]
            if not isinstance(obj, dict):
                obj = list_call.__self__.api_client.sanitize_for_serialization(obj)
            seen.append({"type": event["type"], **obj})
            if event["type"] != "DELETED" and predicate(obj):
                return seen
    raise AssertionError(f"{what}: not within {timeout:.0f}s; last seen: {seen[-3:]}")


def condition(status: Dict[str, Any], type_: str) -> Dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_a_shrunk_job_grows_back_when_capacity_returns(operator: OperatorProcess, namespace: str) -> None:
    kube = operator.kube
    api = client.ApiClient(admin_configuration(kube))
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    pool = f"growback.volt.dev/{namespace}"  # this test's own node label
    job_args = dict(group="volt.dev", version="v1alpha1", namespace=namespace, plural="trainingjobs",
                    field_selector=f"metadata.name={NAME}")

    def job_at(nodes: int, attempt: int) -> Callable[[Dict[str, Any]], bool]:
        def check(job: Dict[str, Any]) -> bool:
            st = job.get("status") or {}
            return (st.get("phase") == "Running" and st.get("numNodes") == nodes
                    and st.get("attempt") == attempt and st.get("readyNodes") == f"{nodes}/{nodes}")
        return check

    one_per_node = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
        "labelSelector": {"matchLabels": {"volt.dev/job": NAME}},
        "topologyKey": "kubernetes.io/hostname"}]}}
    started = time.monotonic()
    kube.kubectl("label", "node", "node-0", f"{pool}=yes")
    try:
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest(
            NAME, command=STEPPING_RANK, terminationGracePeriodSeconds=10,
            elastic={"minNodes": 1, "shrinkAfterSeconds": 3},
            template={"nodeSelector": {pool: "yes"}, "affinity": one_per_node}))
        # 1. Only node-0 fits: the gang shrinks to 1 node (attempt 1).
        watch_until("shrunk to 1 node", custom.list_namespaced_custom_object, job_at(1, 1), 150, **job_args)

        # 2. Once the shrunk gang has run shrinkAfterSeconds: a probe for node 1, unschedulable.
        probes = dict(namespace=namespace, label_selector=f"volt.dev/job={NAME},{PROBE_LABEL}")
        pending = watch_until("an unschedulable probe", core.list_namespaced_pod, lambda pod: any(
            c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable"
            for c in (pod.get("status") or {}).get("conditions") or []), 60, **probes)[-1]
        assert pending["metadata"]["name"] == f"{NAME}-probe-1"
        assert pending["metadata"]["labels"][PROBE_LABEL] == "1"
        assert pending["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
        assert pending["spec"]["nodeSelector"] == {pool: "yes"}
        st = custom.get_namespaced_custom_object(
            "volt.dev", "v1alpha1", namespace, "trainingjobs", NAME)["status"]
        assert st["numNodes"] == 1 and st["nodes"]["desired"] == 1
        assert "since" in st["growBack"] and "probesBoundTime" not in st["growBack"], st["growBack"]

        # 3. Capacity returns: the probe binds to node-1, and the job grows back at its next checkpoint.
        kube.kubectl("label", "node", "node-1", f"{pool}=yes")
        history = watch_until("grown back to 2 nodes", custom.list_namespaced_custom_object,
                              job_at(2, 2), 150, **job_args)
        grown = history[-1]["status"]
        resized = condition(grown, "Resized")
        assert resized["reason"] == "CapacityReturned" and "from 1 to 2 node(s)" in resized["message"]
        assert grown["resizes"] == 2 and grown["restarts"] == 0 and grown["requestedNumNodes"] == 2
        waits = [v["status"]["growBack"] for v in history
                 if "probesBoundTime" in (v.get("status") or {}).get("growBack", {})]
        assert waits, "status.growBack.probesBoundTime was never set before the resize"
        bound_at = waits[0]["checkpointStep"]
        grew_at = int(resized["message"].split("checkpoint step ")[1].split()[0])
        assert grew_at > bound_at, (bound_at, resized["message"])
        assert "growBack" not in grown

        # The probe went before the new gang came; the gang is on both nodes.
        assert core.list_namespaced_pod(**probes).items == []
        gang = core.list_namespaced_pod(namespace, label_selector=f"volt.dev/job={NAME}").items
        assert sorted(p.metadata.name for p in gang) == [f"{NAME}-node-0", f"{NAME}-node-1"]
        assert sorted(p.spec.node_name for p in gang) == ["node-0", "node-1"]
        on_job = dict(namespace=namespace, field_selector=f"involvedObject.name={NAME}")
        watch_until("the Resized event of the grow-back", core.list_namespaced_event,
                    lambda e: e["reason"] == "Resized" and "from 1 to 2" in e["message"], 30, **on_job)
        # Posted by earlier reconciles than the resize's, so all there now.
        reasons = [e.reason for e in core.list_namespaced_event(**on_job).items]
        for reason in ("CapacityProbe", "CapacityReturned"):
            assert reasons.count(reason) == 1, reasons
        print(f"grow-back test: {time.monotonic() - started:.1f}s")
    finally:
        for node in ("node-0", "node-1"):
            kube.kubectl("label", "node", node, f"{pool}-")
