"""The operator on the real control plane, driven with kubectl as a user would."""
from __future__ import annotations

import json
from typing import Any, Dict

import pytest
import yaml

from operator_process import (
    OperatorProcess, get_json, get_tj_rows, job_status, wait_until,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

# A job whose "training" idles: these tests are about the operator, not the engine.
IDLE = ["python", "-c", "import time; time.sleep(3600)"]


def manifest(name: str, **spec: Any) -> str:
    body: Dict[str, Any] = {
        "image": "volt-trainer:test",
        "command": IDLE,
        "trainer": {"numNodes": 2, "devices": 1, "accelerator": "cpu", "maxEpochs": 1},
        "terminationGracePeriodSeconds": 5,
    }
    body.update(spec)
    return yaml.safe_dump(
        {"apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob",
         "metadata": {"name": name}, "spec": body}
    )


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


def test_long_name_is_refused(crd: Any, namespace: str) -> None:
    result = crd.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("x" * 60),
                         check=False)
    assert result.returncode != 0 and "metadata.name" in result.stderr


def test_spec_is_immutable_except_suspend(crd: Any, namespace: str) -> None:
    crd.kubectl("apply", "-n", namespace, "-f", "-", input=manifest("frozen", suspend=True))
    result = crd.kubectl("patch", "-n", namespace, "tj", "frozen", "--type=merge",
                         "-p", '{"spec": {"trainer": {"maxEpochs": 7}}}', check=False)
    assert result.returncode != 0 and "spec.trainer is immutable" in result.stderr
    result = crd.kubectl("patch", "-n", namespace, "tj", "frozen", "--type=merge",
                         "-p", '{"spec": {"image": "other:1"}}', check=False)
    assert result.returncode != 0 and "spec.image is immutable" in result.stderr
    crd.kubectl("patch", "-n", namespace, "tj", "frozen", "--type=merge",
                "-p", '{"spec": {"suspend": false, "ttlSecondsAfterFinished": 60}}')
    # Defaults were applied by the API server from the schema.
    spec = get_json(crd, "-n", namespace, "tj", "frozen")["spec"]
    assert spec["failurePolicy"] == {"maxRestarts": 3, "backoffSeconds": 10}
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
        assert json.loads(env["VOLT_TRAINER"])["num_nodes"] == 2
        assert "RANK" not in env and "LOCAL_RANK" not in env
        assert pod["spec"]["containers"][0]["command"][:1] == ["volt-run"]

    wait_until("phase Running", lambda: job_status(kube, namespace, "demo").get("phase")
               == "Running", 90)
    header = kube.kubectl("get", "-n", namespace, "tj").stdout.splitlines()[0]
    assert header.split() == ["NAME", "PHASE", "NODES", "EPOCH", "STEP", "LOSS", "RESTARTS",
                              "AGE"]
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
