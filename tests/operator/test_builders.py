"""Pure builders: the children of a TrainingJob, checked field by field."""
from __future__ import annotations

import json
from typing import Any, Dict

import pytest

from volt_operator.api import RESERVED_ENV, TrainingJobSpec
from volt_operator.builders import JobRef, build_pod, build_pods, build_service, controller_uid, resume_value

pytestmark = pytest.mark.timeout(30)

JOB = JobRef("mnist", "team-a", "1234-uid")


def spec(**over: Any) -> TrainingJobSpec:
    body: Dict[str, Any] = {
        "image": "volt-trainer:0.1",
        "command": ["python", "-m", "volt.examples.synthetic"],
        "args": ["--max-epochs", "2"],
        "trainer": {"numNodes": 3, "devices": 2, "accelerator": "cpu", "maxEpochs": 2},
        "checkpoint": {"claimName": "ckpts", "path": "/ckpt", "everyNSteps": 50},
    }
    body.update(over)
    return TrainingJobSpec.model_validate(body)


def env_of(pod: Dict[str, Any]) -> Dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_service_is_headless_and_owned() -> None:
    svc = build_service(JOB, spec())
    assert svc["metadata"]["name"] == "mnist"
    assert svc["metadata"]["namespace"] == "team-a"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"volt.dev/job": "mnist"}
    assert svc["spec"]["ports"][0]["port"] == 29500
    (owner,) = svc["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob", "name": "mnist",
        "uid": "1234-uid", "controller": True, "blockOwnerDeletion": True,
    }


def test_pod_identity_labels_and_dns() -> None:
    pods = build_pods(JOB, spec(), attempt=2, resume="auto")
    assert [p["metadata"]["name"] for p in pods] == ["mnist-node-0", "mnist-node-1", "mnist-node-2"]
    pod = pods[1]
    assert pod["metadata"]["labels"] == {
        "volt.dev/job": "mnist", "volt.dev/node-rank": "1", "volt.dev/attempt": "2",
    }
    assert pod["spec"]["hostname"] == "mnist-node-1"
    assert pod["spec"]["subdomain"] == "mnist"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["terminationGracePeriodSeconds"] == 60
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["ownerReferences"][0]["controller"] is True
    assert pod["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True


def test_controller_uid_is_the_owning_jobs_only() -> None:
    pod = build_pod(JOB, spec(), rank=0, attempt=1, resume="auto")
    assert controller_uid(pod) == "1234-uid"
    # A reference that does not control (a user's or the garbage collector's) says nothing.
    pod["metadata"]["ownerReferences"].insert(0, {"apiVersion": "v1", "kind": "ConfigMap",
                                                  "name": "x", "uid": "other-uid"})
    assert controller_uid(pod) == "1234-uid"
    assert controller_uid({"metadata": {"name": "orphan"}}) is None
    assert controller_uid({"metadata": {"ownerReferences": [{"uid": "u", "controller": False}]}}) is None


def test_env_contract() -> None:
    pod = build_pod(JOB, spec(), rank=2, attempt=1, resume="auto")
    env, container = env_of(pod), pod["spec"]["containers"][0]
    assert env["MASTER_ADDR"] == "mnist-node-0.mnist"
    assert env["MASTER_PORT"] == "29500"
    assert env["NODE_RANK"] == "2"
    assert env["NUM_NODES"] == "3"
    assert env["WORLD_SIZE"] == "6"  # processes, not pods
    assert env["PET_NNODES"] == "3"
    assert env["PET_NODE_RANK"] == "2"
    assert env["PET_NPROC_PER_NODE"] == "2"
    assert env["PET_MASTER_ADDR"] == "mnist-node-0.mnist"
    assert env["PET_MASTER_PORT"] == "29500"
    assert env["VOLT_JOB_NAME"] == "mnist"
    assert env["VOLT_ATTEMPT"] == "1"
    assert env["VOLT_CHECKPOINT_DIR"] == "/ckpt/mnist"
    assert env["VOLT_CHECKPOINT_EVERY_N_STEPS"] == "50"
    assert env["VOLT_RESUME"] == "auto"
    assert env["VOLT_METRICS_PORT"] == "9090"
    assert env["VOLT_RENDEZVOUS_TIMEOUT"] == "600"
    assert env["VOLT_GRACE_PERIOD_S"] == "55"  # below terminationGracePeriodSeconds=60
    assert env["VOLT_TERMINATION_MESSAGE_PATH"] == container["terminationMessagePath"] == "/dev/termination-log"
    assert json.loads(env["VOLT_TRAINER"]) == {
        "num_nodes": 3, "devices": 2, "accelerator": "cpu", "strategy": "ddp", "max_epochs": 2,
    }
    assert "RANK" not in env and "LOCAL_RANK" not in env


def test_every_contract_variable_is_reserved() -> None:
    """A user's env may not shadow what the operator sets (the CRD refuses it)."""
    contract = set(env_of(build_pod(JOB, spec(), rank=0, attempt=0, resume="auto")))
    overridable = {"PYTHONUNBUFFERED"}  # a convenience default, not part of the contract
    assert contract - overridable <= set(RESERVED_ENV), contract - overridable - set(RESERVED_ENV)


def test_command_runs_under_volt_run() -> None:
    container = build_pod(JOB, spec(), 0, 0, "auto")["spec"]["containers"][0]
    assert container["command"] == ["volt-run", "python", "-m", "volt.examples.synthetic"]
    assert container["args"] == ["--max-epochs", "2"]
    assert container["image"] == "volt-trainer:0.1"


def test_checkpoint_volume_and_metrics_ports() -> None:
    pod = build_pod(JOB, spec(), 0, 0, "auto")
    assert {"name": "volt-checkpoints", "persistentVolumeClaim": {"claimName": "ckpts"}} in pod[
        "spec"]["volumes"]
    container = pod["spec"]["containers"][0]
    assert {"name": "volt-checkpoints", "mountPath": "/ckpt"} in container["volumeMounts"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"rendezvous": 29500, "metrics-0": 9090, "metrics-1": 9091}
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann["prometheus.io/port"] == "9090"
    assert ann["prometheus.io/path"] == "/metrics"


def test_no_checkpoint_no_volume() -> None:
    pod = build_pod(JOB, spec(checkpoint=None), 0, 0, "never")
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["dshm"]  # /dev/shm only
    env = env_of(pod)
    assert "VOLT_CHECKPOINT_DIR" not in env and env["VOLT_RESUME"] == "never"


@pytest.mark.parametrize(
    "trainer, resources, gpus",
    [
        ({"gpus": 4}, {}, 4),
        ({"gpus": "0,1"}, {}, 2),
        ({"accelerator": "gpu", "devices": 8}, {}, 8),
        ({"accelerator": "cpu", "devices": 8}, {}, 0),
        ({"accelerator": "auto"}, {"limits": {"nvidia.com/gpu": 2}}, 2),
    ],
)
def test_gpu_requests_follow_the_trainer(trainer: Dict[str, Any], resources: Dict[str, Any],
                                         gpus: int) -> None:
    s = spec(trainer=trainer, resources={"limits": {"cpu": "4", **resources.get("limits", {})}})
    res = build_pod(JOB, s, 0, 0, "auto")["spec"]["containers"][0]["resources"]
    assert res["limits"]["cpu"] == "4"
    if gpus:
        assert res["limits"]["nvidia.com/gpu"] == gpus
        assert res["requests"]["nvidia.com/gpu"] == gpus
        trainer = json.loads(env_of(build_pod(JOB, s, 0, 0, "auto"))["VOLT_TRAINER"])
        assert trainer["devices"] == gpus
    else:
        assert "nvidia.com/gpu" not in res["limits"]


def test_template_overlay_is_merged_not_replaced() -> None:
    s = spec(
        env=[{"name": "NCCL_DEBUG", "value": "INFO"}],
        template={
            "labels": {"team": "vision"},
            "annotations": {"owner": "alice"},
            "nodeSelector": {"gpu": "a100"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
            "priorityClassName": "high",
            "schedulerName": "volcano",
            "serviceAccountName": "trainer",
            "securityContext": {"runAsUser": 1000},
            "imagePullSecrets": ["regcred"],
            "volumes": [{"name": "data", "hostPath": {"path": "/data"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
            "env": [{"name": "HF_HOME", "value": "/data/hf"}],
        },
    )
    pod = build_pod(JOB, s, 0, 0, "auto")
    meta, podspec = pod["metadata"], pod["spec"]
    container = podspec["containers"][0]
    # The user's keys are kept beside ours (ours cannot be set: the API refuses them).
    assert meta["labels"]["team"] == "vision" and meta["labels"]["volt.dev/job"] == "mnist"
    assert meta["annotations"]["owner"] == "alice"
    assert meta["annotations"]["prometheus.io/scrape"] == "true"
    assert podspec["nodeSelector"] == {"gpu": "a100"}
    assert podspec["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert podspec["affinity"]["nodeAffinity"]
    assert podspec["priorityClassName"] == "high"
    assert podspec["schedulerName"] == "volcano"
    assert podspec["serviceAccountName"] == "trainer"
    # The user's key replaces ours; the other restricted defaults stay.
    assert podspec["securityContext"]["runAsUser"] == 1000
    assert podspec["securityContext"]["runAsNonRoot"] is True
    assert podspec["imagePullSecrets"] == [{"name": "regcred"}]
    assert [v["name"] for v in podspec["volumes"]] == ["volt-checkpoints", "data", "dshm"]
    assert podspec["volumes"][1]["hostPath"] == {"path": "/data"}
    assert [m["name"] for m in container["volumeMounts"]] == ["volt-checkpoints", "data", "dshm"]
    env = env_of(pod)
    assert env["NCCL_DEBUG"] == "INFO" and env["HF_HOME"] == "/data/hf"
    assert env["MASTER_ADDR"] == "mnist-node-0.mnist"


def test_pods_meet_the_restricted_pod_security_standard_by_default() -> None:
    pod = build_pod(JOB, spec(), 0, 0, "auto")
    podspec = pod["spec"]
    # uid/gid 1000 is the trainer image's user; fsGroup makes the checkpoint claim writable.
    assert podspec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
        "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert podspec["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
    }
    assert podspec["automountServiceAccountToken"] is False
    assert "hostNetwork" not in podspec and "serviceAccountName" not in podspec
    # Volume types restricted allows: the checkpoint claim and the memory-backed /dev/shm.
    assert {key for volume in podspec["volumes"] for key in volume if key != "name"} == {
        "persistentVolumeClaim", "emptyDir"}


def test_security_context_overrides_replace_one_key_and_keep_the_rest() -> None:
    s = spec(template={
        "securityContext": {"runAsUser": 2000, "fsGroup": 3000},
        "containerSecurityContext": {"capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]},
                                     "readOnlyRootFilesystem": True},
    })
    pod = build_pod(JOB, s, 1, 0, "auto")
    pod_sc, container_sc = pod["spec"]["securityContext"], pod["spec"]["containers"][0]["securityContext"]
    assert (pod_sc["runAsUser"], pod_sc["fsGroup"], pod_sc["runAsGroup"]) == (2000, 3000, 1000)
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"} and pod_sc["runAsNonRoot"] is True
    assert container_sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}}
    # The defaults are not shared between pods (no aliasing of nested dicts).
    pod_sc["seccompProfile"]["type"] = "Unconfined"
    assert build_pod(JOB, spec(), 0, 0, "auto")["spec"]["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"}


def test_a_privileged_container_keeps_no_allow_privilege_escalation_default() -> None:
    # privileged with allowPrivilegeEscalation false is an invalid pod (a 422, not a policy answer)
    privileged = spec(template={"containerSecurityContext": {"privileged": True}})
    container_sc = build_pod(JOB, privileged, 1, 0, "auto")["spec"]["containers"][0]["securityContext"]
    assert container_sc == {"privileged": True, "capabilities": {"drop": ["ALL"]}}
    explicit = spec(template={"containerSecurityContext": {"privileged": True, "allowPrivilegeEscalation": True}})
    assert build_pod(JOB, explicit, 1, 0, "auto")["spec"]["containers"][0]["securityContext"][
        "allowPrivilegeEscalation"] is True


def test_builders_are_pure_and_deterministic() -> None:
    s = spec()
    assert build_pods(JOB, s, 0, "auto") == build_pods(JOB, s, 0, "auto")
    assert build_service(JOB, s) == build_service(JOB, s)


@pytest.mark.parametrize(
    "resume, attempt, seen, want",
    [
        ("Auto", 0, False, "auto"),
        ("Never", 3, True, "never"),
        ("FromPath", 0, False, "/seed.ckpt"),
        ("FromPath", 2, False, "/seed.ckpt"),  # never checkpointed yet: still the seed
        ("FromPath", 2, True, "auto"),  # own checkpoint exists: continue from it
    ],
)
def test_resume_value(resume: str, attempt: int, seen: bool, want: str) -> None:
    extra = {"fromPath": "/seed.ckpt"} if resume == "FromPath" else {}
    assert resume_value(spec(resume=resume, **extra), attempt, seen) == want


def _shm(pod: Dict[str, Any]) -> "tuple[list, list]":
    """The pod's volumes and the trainer's mounts that concern /dev/shm."""
    volumes = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm" or "emptyDir" in v]
    mounts = [m for m in pod["spec"]["containers"][0]["volumeMounts"]
              if m["name"] == "dshm" or m["mountPath"].rstrip("/") == "/dev/shm"]
    return volumes, mounts


@pytest.mark.parametrize("resources, shared_memory, size_limit", [
    ({}, {}, None),  # no memory limit: the node's memory bounds it
    ({"limits": {"memory": "8Gi"}}, {}, "4Gi"),  # half the memory limit
    ({"limits": {"memory": "3G"}}, {}, "1500M"),
    ({"limits": {"memory": "1000Mi"}, "requests": {"memory": "1000Mi"}}, {}, "500Mi"),
    ({"limits": {"memory": "8Gi"}}, {"sizeLimit": "1Gi"}, "1Gi"),  # the spec's own size wins
    ({}, {"sizeLimit": 268435456}, "268435456"),
])
def test_trainer_gets_a_memory_backed_dev_shm(resources: Dict[str, Any], shared_memory: Dict[str, Any],
                                              size_limit: Any) -> None:
    pod = build_pod(JOB, spec(resources=resources, sharedMemory=shared_memory), 0, 0, "auto")
    volumes, mounts = _shm(pod)
    empty_dir = {"medium": "Memory", **({"sizeLimit": size_limit} if size_limit else {})}
    assert volumes == [{"name": "dshm", "emptyDir": empty_dir}]
    assert mounts == [{"name": "dshm", "mountPath": "/dev/shm"}]


def test_a_dev_shm_of_the_users_own_wins() -> None:
    # Their volume named dshm (mounted anywhere): theirs, once; two volumes of one name are refused.
    theirs = {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}
    pod = build_pod(JOB, spec(template={"volumes": [theirs],
                                        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}), 0, 0, "auto")
    assert _shm(pod) == ([theirs], [{"name": "dshm", "mountPath": "/dev/shm"}])
    # Another volume mounted at /dev/shm: ours is left out (two mounts at one path are refused).
    scratch = {"name": "scratch", "emptyDir": {}}
    pod = build_pod(JOB, spec(template={"volumes": [scratch],
                                        "volumeMounts": [{"name": "scratch", "mountPath": "/dev/shm/"}]}),
                    0, 0, "auto")
    assert _shm(pod) == ([scratch], [{"name": "scratch", "mountPath": "/dev/shm/"}])
    names = [v["name"] for v in pod["spec"]["volumes"]]
    assert len(names) == len(set(names))
