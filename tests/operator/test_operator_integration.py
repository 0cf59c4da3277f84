"""The operator on the real control plane, driven with kubectl as a user would."""
from __future__ import annotations

import json
import secrets
import signal
from typing import Any, Dict, Iterator

import pytest
import yaml

import invalid_specs
from job_helpers import idle_job_manifest
from operator_process import (
    OperatorProcess, get_json, get_tj_rows, job_status, wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

manifest = idle_job_manifest


def test_crd_is_structural_and_served(crd: Any) -> None:
    obj = get_json(crd, "crd", "trainingjobs.volt.dev")
    conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NamesAccepted") == "True"
    assert "NonStructuralSchema" not in conditions
    # The published OpenAPI (kubectl explain) carries the models' descriptions.
    wait_until("kubectl explain", lambda: "Number of nodes" in crd.kubectl(
        "explain", "tj.spec.trainer.numNodes", check=False).stdout, 60)


INVALID = {
    "numNodes below 1": ({"trainer": {"numNodes": 0}}, "spec.trainer.numNodes"),
    "unknown trainer argument in extra": (
        {"trainer": {"extra": {"bogus_flag": True}}}, "spec.trainer.extra.bogus_flag"),
    "extra argument of the wrong type": (
        {"trainer": {"extra": {"fast_dev_run": "yes"}}}, "spec.trainer.extra.fast_dev_run"),
    "gpus and devices": ({"trainer": {"gpus": 1, "devices": 1}}, "trainer.gpus or trainer.devices"),
    "gpus of the wrong type": ({"trainer": {"gpus": {"a": 1}}}, "spec.trainer.gpus"),
    "bad precision": ({"trainer": {"precision": "fp8"}}, "spec.trainer.precision"),
    "fraction out of range": ({"trainer": {"limitTrainBatches": 1.5}},
                              "spec.trainer.limitTrainBatches"),
    "FromPath without fromPath": ({"resume": "FromPath"}, "spec.fromPath"),
    "reserved env": ({"env": [{"name": "WORLD_SIZE", "value": "3"}]}, "spec.env"),
    "rule without a match": ({"failurePolicy": {"rules": [{"action": "FailJob"}]}},
                             "onExitCodes or onReasons"),
    "unknown field": ({"trainer": {"maxEpochz": 3}}, "maxEpochz"),
    "bad cleanPodPolicy": ({"cleanPodPolicy": "Sometimes"}, "spec.cleanPodPolicy"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_trainingjob_is_refused_naming_the_field(crd: Any, namespace: str,
                                                         case: str) -> None:
    spec, field = INVALID[case]
    result = crd.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("bad", **spec),
                         check=False)
    assert result.returncode != 0, f"{case} was accepted"
    assert field in result.stderr, result.stderr


def _apply(kube: Any, namespace: str, spec: Dict[str, Any], *flags: str) -> Any:
    body = yaml.safe_dump({"apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob",
                           "metadata": {"name": "bad"}, "spec": spec})
    return kube.kubectl("apply", "-n", namespace, *flags, "-f", "-", input=body, check=False)


@pytest.mark.parametrize("case", list(invalid_specs.INVALID))
def test_api_server_refuses_bad_input_naming_the_field(crd: Any, namespace: str,
                                                      case: str) -> None:
    """Every entry of the shared table (the models refuse the same: test_api.py)."""
    change, names = invalid_specs.INVALID[case]
    result = _apply(crd, namespace, invalid_specs.spec_with(change))
    assert result.returncode != 0, f"{case} was accepted"
    for name in names:
        assert name in result.stderr, f"{case}: {name!r} not in {result.stderr}"
    # A rule whose own evaluation failed would be reported, not the user's mistake.
    assert "evaluation error" not in result.stderr and "cost" not in result.stderr


@pytest.mark.parametrize("case", list(invalid_specs.VALID))
def test_api_server_accepts_near_misses(crd: Any, namespace: str, case: str) -> None:
    result = _apply(crd, namespace, invalid_specs.spec_with(invalid_specs.VALID[case]),
                    "--dry-run=server")
    assert result.returncode == 0, result.stderr


def test_long_name_is_refused(crd: Any, namespace: str) -> None:
    result = crd.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("x" * 60),
                         check=False)
    assert result.returncode != 0 and "metadata.name" in result.stderr


def test_spec_is_immutable_except_suspend_and_num_nodes(crd: Any, namespace: str) -> None:
    crd.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("frozen", suspend=True))
    result = crd.kubectl("patch", "-n", namespace, "tj", "frozen", "--type=merge",
                         "-p", '{"spec": {"trainer": {"maxEpochs": 7}}}', check=False)
    assert result.returncode != 0 and "spec.trainer.maxEpochs is immutable" in result.stderr
    # The gang's size may change (a resize), within spec.elastic's bounds when it has them.
    crd.kubectl("patch", "-n", namespace, "tj", "frozen", "--type=merge",
                "-p", '{"spec": {"trainer": {"numNodes": 1}}}')
    assert get_json(crd, "-n", namespace, "tj", "frozen")["spec"]["trainer"]["numNodes"] == 1
    result = crd.kubectl("patch", "-n", namespace, "tj", "frozen", "--type=merge",
                         "-p", '{"spec": {"image": "other:1"}}', check=False)
    assert result.returncode != 0 and "spec.image is immutable" in result.stderr
    crd.kubectl("patch", "-n", namespace, "tj", "frozen", "--type=merge",
                "-p", '{"spec": {"suspend": false, "ttlSecondsAfterFinished": 60}}')
    # Defaults were applied by the API server from the schema.
    spec = get_json(crd, "-n", namespace, "tj", "frozen")["spec"]
    assert spec["failurePolicy"] == {"maxRestarts": 3, "maxFreeRestarts": 20,
                                     "backoffSeconds": 10, "stallTimeoutSeconds": 1800}
    assert spec["resume"] == "Auto" and spec["cleanPodPolicy"] == "Running"


def _pods(kube: Any, namespace: str, job: str) -> Dict[str, Dict[str, Any]]:
    items = get_json(kube, "-n", namespace, "pods", "-l", f"volt.dev/job={job}")["items"]
    return {p["metadata"]["name"]: p for p in items}


def test_valid_job_gets_service_pods_env_and_columns(operator: OperatorProcess,
                                                     namespace: str) -> None:
    kube = operator.kube
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("demo"))
    pods = wait_until("both node pods", lambda: (p := _pods(kube, namespace, "demo"))
                      and len(p) == 2 and p, 60)
    svc = get_json(kube, "-n", namespace, "service", "demo")
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    job_uid = get_json(kube, "-n", namespace, "tj", "demo")["metadata"]["uid"]
    for rank in (0, 1):
        pod = pods[f"demo-node-{rank}"]
        assert pod["metadata"]["ownerReferences"][0]["uid"] == job_uid
        assert pod["spec"]["hostname"] == f"demo-node-{rank}"
        assert pod["spec"]["subdomain"] == "demo"
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MASTER_ADDR"] == "demo-node-0.demo"
        assert env["NODE_RANK"] == str(rank)
        assert env["WORLD_SIZE"] == "2"
        assert env["VOLT_ATTEMPT"] == "0"
        assert env["VOLT_JOB_UID"] == job_uid
        assert json.loads(env["VOLT_TRAINER"])["num_nodes"] == 2
        assert "RANK" not in env and "LOCAL_RANK" not in env
        assert pod["spec"]["containers"][0]["command"][:1] == ["volt-run"]

    wait_until("phase Running", lambda: job_status(kube, namespace, "demo").get("phase")
               == "Running", 90)
    header = kube.kubectl("get", "-n", namespace, "tj").stdout.splitlines()[0]
    assert header.split() == ["NAME", "PHASE", "NODES", "EPOCH", "STEP", "LOSS", "PROGRESS", "ETA",
                              "RESTARTS", "AGE"]
    (row,) = get_tj_rows(kube, namespace)
    assert (row["NAME"], row["PHASE"], row["NODES"], row["RESTARTS"]) == (
        "demo", "Running", "2/2", "0")
    events = get_json(kube, "-n", namespace, "events",
                      "--field-selector", "involvedObject.name=demo")["items"]
    assert {"Created", "Running"} <= {e["reason"] for e in events}
    status = job_status(kube, namespace, "demo")
    assert status["observedGeneration"] == 1 and status["startTime"]
    # No finalizer: a TrainingJob (and its namespace) stays deletable without the operator.
    assert not get_json(kube, "-n", namespace, "tj", "demo")["metadata"].get("finalizers")

    # Deleting the job removes its children through the owner references.
    kube.kubectl("delete", "-n", namespace, "tj", "demo", "--wait=true", timeout=60)
    wait_until("children garbage-collected", lambda: not _pods(kube, namespace, "demo") and
               kube.kubectl("get", "-n", namespace, "service", "demo", check=False).returncode
               != 0, 90)


def test_suspend_and_resume(operator: OperatorProcess, namespace: str) -> None:
    kube = operator.kube
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("pausable"))
    wait_until("Running", lambda: job_status(kube, namespace, "pausable").get("phase")
               == "Running", 90)
    kube.kubectl("patch", "-n", namespace, "tj", "pausable", "--type=merge",
                 "-p", '{"spec": {"suspend": true}}')
    wait_until("Suspended without pods", lambda: job_status(kube, namespace, "pausable")
               .get("phase") == "Suspended" and not _pods(kube, namespace, "pausable"), 90)
    kube.kubectl("patch", "-n", namespace, "tj", "pausable", "--type=merge",
                 "-p", '{"spec": {"suspend": false}}')
    wait_until("Running again", lambda: job_status(kube, namespace, "pausable").get("phase")
               == "Running", 90)
    pods = _pods(kube, namespace, "pausable")
    assert {p["metadata"]["labels"]["volt.dev/attempt"] for p in pods.values()} == {"1"}
    status = job_status(kube, namespace, "pausable")
    suspended = next(c for c in status["conditions"] if c["type"] == "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("False", "Resumed")
    assert status["restarts"] == 0


def test_child_creation_errors_show_in_status_and_events(operator: OperatorProcess,
                                                         namespace: str) -> None:
    kube = operator.kube
    kube.kubectl("create", "quota", "one-pod", "-n", namespace, "--hard=pods=1")
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("quota"))

    def create_failed() -> Any:
        conds = job_status(kube, namespace, "quota").get("conditions") or []
        return next((c for c in conds if c["type"] == "Created" and c["status"] == "False"),
                    None)

    cond = wait_until("Created=False", create_failed, 60)
    assert cond["reason"] == "CreateFailed" and "quota" in cond["message"]
    events = get_json(kube, "-n", namespace, "events",
                      "--field-selector", "involvedObject.name=quota")["items"]
    assert any(e["reason"] == "CreateFailed" and e["type"] == "Warning" for e in events)


def _events(kube: Any, namespace: str, name: str) -> list:
    return get_json(kube, "-n", namespace, "events",
                    "--field-selector", f"involvedObject.name={name}")["items"]


def _condition(kube: Any, namespace: str, name: str, type_: str) -> Any:
    conds = job_status(kube, namespace, name).get("conditions") or []
    return next((c for c in conds if c["type"] == type_ and c["status"] == "True"), None)


def test_a_pod_the_api_server_refuses_fails_the_job(operator: OperatorProcess,
                                                    namespace: str) -> None:
    """Something the CRD passes through unchecked (the pod security context) makes
    every pod invalid: after a bounded number of tries the job fails with the API
    server's message, instead of asking again every few seconds forever."""
    kube = operator.kube
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "refused", template={"securityContext": {"runAsUser": -1}}))
    failed = wait_until("Failed=True", lambda: _condition(kube, namespace, "refused",
                                                          "Failed"), 90)
    assert failed["reason"] == "CreateFailed"
    assert "spec.securityContext.runAsUser" in failed["message"]
    status = job_status(kube, namespace, "refused")
    assert status["phase"] == "Failed" and status["createRefusals"] == 3
    events = _events(kube, namespace, "refused")
    reasons = [e["reason"] for e in events]
    assert "CreateFailed" in reasons and "Failed" in reasons
    # Slow start: each try POSTs rank 0 alone, and rank 1 never after its refusal.
    refusals = [e["message"] for e in events if e["reason"] == "CreateFailed"]
    assert all("refused-node-0" in m and "refused-node-1" not in m for m in refusals)
    assert not _pods(kube, namespace, "refused")


def test_a_gang_that_cannot_start_is_stalled_and_bounded(operator: OperatorProcess,
                                                         namespace: str) -> None:
    """No scheduler takes the pods: after stallTimeoutSeconds the gang restarts
    (condition Stalled naming the pods), and the budget bounds it."""
    kube = operator.kube
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "stuck", template={"schedulerName": "nobody-schedules-this"},
        failurePolicy={"maxRestarts": 1, "backoffSeconds": 0, "stallTimeoutSeconds": 3}))
    failed = wait_until("Failed=True", lambda: _condition(kube, namespace, "stuck",
                                                          "Failed"), 120)
    assert failed["reason"] == "RestartLimitExceeded" and "did not start" in failed["message"]
    status = job_status(kube, namespace, "stuck")
    assert status["restarts"] == 1 and status["lastFailure"]["reason"] == "Stalled"
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert "stuck-node-0" in stalled["message"] and "stuck-node-1" in stalled["message"]


# A rank 0 that made one step at start and then hangs: its /progress (as the
# engine serves it) keeps reporting that step's time.
HUNG_RANK = ["python", "-c", """
import http.server, json, os, time
step_time = time.time()
body = json.dumps({"epoch": 0, "step": 1, "attempt": int(os.environ["VOLT_ATTEMPT"]),
                   "last_step_time": step_time}).encode()
class Progress(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/progress" else 404)
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("", int(os.environ["VOLT_METRICS_PORT"])), Progress).serve_forever()
"""]


def test_a_rank_that_stops_stepping_is_stalled(operator: OperatorProcess,
                                               namespace: str) -> None:
    """Rank 0's /progress reports a last step older than stallTimeoutSeconds:
    the gang restarts with condition Stalled naming rank 0's pod."""
    kube = operator.kube
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "hung", command=HUNG_RANK,
        failurePolicy={"maxRestarts": 0, "stallTimeoutSeconds": 4}))
    wait_until("the step time mirrored", lambda: (job_status(kube, namespace, "hung")
                                                  .get("training") or {}).get("lastStepTime"), 90)
    training = job_status(kube, namespace, "hung")["training"]
    assert training["lastUpdate"] == training["lastStepTime"] and training["step"] == 1
    failed = wait_until("Failed=True", lambda: _condition(kube, namespace, "hung", "Failed"), 90)
    assert failed["reason"] == "RestartLimitExceeded"
    status = job_status(kube, namespace, "hung")
    assert status["lastFailure"]["reason"] == "Stalled"
    assert status["lastFailure"]["pod"] == "hung-node-0"
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "no optimizer step" in stalled["message"]
    assert "hung-node-0" in stalled["message"]


# --- node loss ----------------------------------------------------------------

@pytest.fixture
def lost_node(crd: Any) -> Iterator[str]:
    """A Node object that no kubelet serves: its pods never confirm a deletion, as
    on a node that lost power or network. Deleted afterwards (the pod garbage
    collector then removes what is left on it)."""
    name = f"lost-{secrets.token_hex(3)}"
    crd.request("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                          "metadata": {"name": name}})
    try:
        yield name
    finally:
        crd.kubectl("delete", "node", name, "--wait=false", check=False)


def _bind_and_run(kube: Any, namespace: str, pod: str, node: str) -> None:
    """What a scheduler and a kubelet would do: bind the pod, report it Ready."""
    kube.request("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/binding", {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
    body = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}")
    body["status"].update({"phase": "Running", "conditions": [
        {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]})
    kube.request("PUT", f"/api/v1/namespaces/{namespace}/pods/{pod}/status", body)


@pytest.mark.timeout(240)
def test_gang_restart_does_not_wait_for_pods_on_a_lost_node(
        crd: Any, namespace: str, lost_node: str, tmp_path: Any) -> None:
    kube = crd
    margin = 3
    proc = OperatorProcess(kube, [namespace], tmp_path,
                           extra_args=["--stuck-pod-margin", str(margin)]).start()
    try:
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
            "lost", template={"schedulerName": "test-binds-by-hand"},
            terminationGracePeriodSeconds=2,
            failurePolicy={"backoffSeconds": 0}))
        wait_until("both node pods", lambda: len(_pods(kube, namespace, "lost")) == 2, 60)
        for rank in (0, 1):
            _bind_and_run(kube, namespace, f"lost-node-{rank}", lost_node)
        wait_until("Running", lambda: job_status(kube, namespace, "lost").get("phase")
                   == "Running", 60)
        # Rank 1 is deleted (as a preemption would); its kubelet never answers.
        kube.kubectl("delete", "pod", "-n", namespace, "lost-node-1", "--wait=false")

        def next_attempt() -> bool:
            pods = _pods(kube, namespace, "lost")
            return len(pods) == 2 and all(
                p["metadata"]["labels"]["volt.dev/attempt"] == "1"
                and not p["metadata"].get("deletionTimestamp") for p in pods.values())

        wait_until("attempt 1's pods, the stuck ones force-deleted", next_attempt, 120)
        status = job_status(kube, namespace, "lost")
        assert status["attempt"] == 1 and status["restarts"] == 1
        assert status["lastFailure"]["pod"] == "lost-node-1"
        forced = [e for e in _events(kube, namespace, "lost") if e["reason"] == "ForceDeleted"]
        assert {e["type"] for e in forced} == {"Warning"}
        named = {pod for pod in ("lost-node-0", "lost-node-1")
                 if any(pod in e["message"] and lost_node in e["message"] for e in forced)}
        assert named == {"lost-node-0", "lost-node-1"}
    finally:
        proc.stop()
        print(proc.logs()[-6000:])


# --- more than one replica ------------------------------------------------------

def _lease(kube: Any, namespace: str) -> Dict[str, Any]:
    result = kube.kubectl("get", "-n", namespace, "lease", "volt-operator", "-o", "json",
                          check=False)
    return json.loads(result.stdout).get("spec", {}) if result.returncode == 0 else {}


@pytest.mark.timeout(240)
def test_with_two_replicas_only_the_lease_holder_acts(crd: Any, namespace: str,
                                                      tmp_path: Any) -> None:
    """A hung leader (SIGSTOP) is replaced once its Lease expires; the job is
    created by the new holder only, and the old one, resumed, stays a standby."""
    kube = crd
    args = ["--leader-elect", "--leader-election-namespace", namespace]
    replicas = [OperatorProcess(kube, [namespace], tmp_path / name, extra_args=args).start()
                for name in ("a", "b")]
    try:
        holder = wait_until("a lease holder", lambda: _lease(kube, namespace)
                            .get("holderIdentity"), 60)
        by_pid = {str(r.proc.pid): r for r in replicas}
        leader = by_pid[holder.rsplit("_", 1)[1]]
        standby = next(r for r in replicas if r is not leader)
        leader.proc.send_signal(signal.SIGSTOP)
        try:
            kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("ha"))
            new_holder = wait_until("the standby to take the lease", lambda: (
                h := _lease(kube, namespace).get("holderIdentity")) != holder and h, 60)
            assert new_holder.endswith(f"_{standby.proc.pid}")
            wait_until("Running", lambda: job_status(kube, namespace, "ha").get("phase")
                       == "Running", 90)
        finally:
            leader.proc.send_signal(signal.SIGCONT)
        lease = _lease(kube, namespace)
        acquired = lease["acquireTime"][:19]
        for pod in _pods(kube, namespace, "ha").values():
            assert pod["metadata"]["creationTimestamp"][:19] >= acquired
        # The resumed old leader finds the Lease taken and stays a standby.
        wait_until("the old leader to see the new holder", lambda: f"held by {new_holder}"
                   in leader.logs(), 30)
        assert _lease(kube, namespace)["holderIdentity"] == new_holder
        status = job_status(kube, namespace, "ha")
        assert status["attempt"] == 0 and status["restarts"] == 0
        created = [e for e in _events(kube, namespace, "ha") if e["reason"] == "Created"]
        assert len(created) == 1
        # A holder that stops cleanly hands the Lease back instead of letting it expire.
        standby.stop()
        assert _lease(kube, namespace)["holderIdentity"] in ("", holder)
        wait_until("the old leader to take over", lambda: _lease(kube, namespace)
                   .get("holderIdentity") == holder, 60)
    finally:
        for replica in replicas:
            replica.stop()
            print(replica.logs()[-3000:])


def _evict(kube: Any, namespace: str, pod: str) -> None:
    kube.request("POST", f"/api/v1/namespaces/{namespace}/pods/{pod}/eviction", {
        "apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": pod, "namespace": namespace}})


def _attempt_running(kube: Any, namespace: str, name: str, attempt: int) -> bool:
    status = job_status(kube, namespace, name)
    return status.get("phase") == "Running" and status.get("attempt") == attempt


def test_evictions_restart_for_free_within_their_own_budget(operator: OperatorProcess,
                                                             namespace: str) -> None:
    """The eviction API (as a node drain uses it): the first eviction restarts the
    gang without spending maxRestarts; the second exceeds maxFreeRestarts=1."""
    kube = operator.kube
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest(
        "drained", failurePolicy={"maxRestarts": 3, "maxFreeRestarts": 1}))
    wait_until("Running", lambda: _attempt_running(kube, namespace, "drained", 0), 90)
    _evict(kube, namespace, "drained-node-1")
    wait_until("attempt 1 Running", lambda: _attempt_running(kube, namespace, "drained", 1), 120)
    status = job_status(kube, namespace, "drained")
    assert (status["restarts"], status["restartsCounted"]) == (1, 0), status["lastFailure"]
    assert status["lastFailure"]["reason"] == "Evicted"
    assert status["lastFailure"]["pod"] == "drained-node-1"
    _evict(kube, namespace, "drained-node-0")
    failed = wait_until("Failed=True", lambda: _condition(kube, namespace, "drained",
                                                          "Failed"), 120)
    assert failed["reason"] == "FreeRestartLimitExceeded"
    assert "maxFreeRestarts=1" in failed["message"] and "drained-node-0" in failed["message"]


def test_an_operator_killed_during_a_fault_restarts_the_gang_once(
        crd: Any, namespace: str, tmp_path: Any) -> None:
    """SIGKILL the operator, lose a pod while it is down, start another: the gang
    restarts exactly once and no pod is duplicated."""
    kube = crd
    first = OperatorProcess(kube, [namespace], tmp_path / "first").start()
    try:
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("survivor"))
        wait_until("Running", lambda: _attempt_running(kube, namespace, "survivor", 0), 90)
    finally:
        first.proc.kill()
        first.proc.wait(timeout=30)
    kube.kubectl("delete", "pod", "-n", namespace, "survivor-node-1", "--wait=false")
    second = OperatorProcess(kube, [namespace], tmp_path / "second").start()
    try:
        wait_until("attempt 1 Running", lambda: _attempt_running(kube, namespace, "survivor",
                                                                 1), 120)
        pods = _pods(kube, namespace, "survivor")
        assert sorted(pods) == ["survivor-node-0", "survivor-node-1"]
        assert {p["metadata"]["labels"]["volt.dev/attempt"] for p in pods.values()} == {"1"}
        assert job_status(kube, namespace, "survivor")["restarts"] == 1
        restarts = [e for e in _events(kube, namespace, "survivor")
                    if e["reason"] == "GangRestart"]
        assert len(restarts) == 1
    finally:
        second.stop()
        print(first.logs()[-3000:], second.logs()[-3000:])
