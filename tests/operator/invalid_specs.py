"""TrainingJob specs a user can write wrongly, each with what its error must name.

One table for both sides: tests/operator/test_api.py checks that the
operator's models refuse each one, tests/operator/test_operator_integration.py
that the real API server refuses it at `kubectl apply`. Every entry changes a
valid base spec in one place; each string in ``names`` must appear in the error
(the field, and for rules the words that say why).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

# Idle "training": these specs are about validation, nothing runs.
BASE: Dict[str, Any] = {
    "image": "volt-trainer:test",
    "command": ["python", "-c", "import time; time.sleep(3600)"],
    "trainer": {"numNodes": 2, "devices": 1, "accelerator": "cpu", "maxEpochs": 1},
    "terminationGracePeriodSeconds": 5,
}

CPU4 = {"numNodes": 1, "devices": 4, "accelerator": "cpu"}
DATA_VOLUME = {"name": "data", "emptyDir": {}}


def rule(**match: Any) -> Dict[str, Any]:
    return {"failurePolicy": {"rules": [{"action": "FailJob", **match}]}}


def spec_with(change: Dict[str, Any]) -> Dict[str, Any]:
    """BASE with ``change`` applied to its top-level fields."""
    return {**BASE, **change}


# name -> (change to BASE, strings the error must contain)
INVALID: Dict[str, Tuple[Dict[str, Any], Tuple[str, ...]]] = {
    # -- out-of-range counts
    "numNodes above the maximum": ({"trainer": {"numNodes": 5000}}, ("trainer.numNodes",)),
    "devices above the maximum": (
        {"trainer": {"devices": 129, "accelerator": "cpu"}},
        ("trainer.devices", "128 processes per node")),
    "devices as a count string above the maximum": (
        {"trainer": {"devices": "200", "accelerator": "cpu"}},
        ("trainer.devices", "128 processes per node")),
    "a device count too large for an integer": (
        {"trainer": {"devices": "9" * 30, "accelerator": "cpu"}},
        ("trainer.devices", "128 processes per node")),
    "a device list longer than the maximum": (
        {"trainer": {"devices": ",".join(str(i) for i in range(130)), "accelerator": "cpu"}},
        ("trainer", "128 processes per node")),
    "numProcesses above the maximum": (
        {"trainer": {"accelerator": "ddp_cpu", "numProcesses": 200}},
        ("trainer.numProcesses",)),
    "a GPU resource above the per-node maximum": (
        {"trainer": {"accelerator": "gpu"}, "resources": {"limits": {"nvidia.com/gpu": 200}}},
        ("nvidia.com/gpu", "128 processes per node")),
    "maxRestarts above the maximum": (
        {"failurePolicy": {"maxRestarts": 1001}}, ("failurePolicy.maxRestarts",)),
    "maxFreeRestarts above the maximum": (
        {"failurePolicy": {"maxFreeRestarts": 10001}}, ("failurePolicy.maxFreeRestarts",)),
    "negative backoff": ({"failurePolicy": {"backoffSeconds": -1}},
                         ("failurePolicy.backoffSeconds",)),
    "negative stall timeout": ({"failurePolicy": {"stallTimeoutSeconds": -5}},
                               ("failurePolicy.stallTimeoutSeconds",)),
    "keepLast of zero": ({"checkpoint": {"claimName": "c", "keepLast": 0}},
                         ("checkpoint.keepLast",)),
    # -- contradictions
    "gpus with accelerator cpu": (
        {"trainer": {"gpus": 2, "accelerator": "cpu"}}, ("trainer.gpus", "trainer.accelerator")),
    "gpus against a different nvidia.com/gpu limit": (
        {"trainer": {"gpus": 2}, "resources": {"limits": {"nvidia.com/gpu": 4}}},
        ("spec.resources", "nvidia.com/gpu", "differs from the")),
    "an nvidia.com/gpu limit on a CPU trainer": (
        {"resources": {"limits": {"nvidia.com/gpu": 1}}},
        ("spec.resources", "nvidia.com/gpu", "runs on CPU")),
    # -- ports
    "metrics port 0": ({"metrics": {"port": 0}}, ("metrics.port",)),
    "rendezvous port above 65535": ({"rendezvous": {"port": 70000}}, ("rendezvous.port",)),
    "rendezvous port on a per-rank metrics port": (
        {"trainer": CPU4, "metrics": {"port": 9090}, "rendezvous": {"port": 9092}},
        ("spec.rendezvous.port", "per-rank metrics ports")),
    "per-rank metrics ports past 65535": (
        {"trainer": CPU4, "metrics": {"port": 65534}}, ("spec.metrics.port", "65535")),
    # -- resources
    "memory request above its limit": (
        {"resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}}},
        ("spec.resources.requests", "limits")),
    "cpu request above its limit in other units": (
        {"resources": {"limits": {"cpu": "500m"}, "requests": {"cpu": 1}}},
        ("spec.resources.requests", "limits")),
    "a limit that is not a quantity": (
        {"resources": {"limits": {"memory": "lots"}}}, ("resources.limits", "quantit")),
    "a fraction of a GPU": (
        {"trainer": {"gpus": 1}, "resources": {"limits": {"nvidia.com/gpu": "0.5"}}},
        ("nvidia.com/gpu", "whole number")),
    # -- environment
    "env name with a space": ({"env": [{"name": "MY VAR", "value": "1"}]},
                              ("env", "name", "match")),
    "env name starting with a digit": ({"env": [{"name": "1X", "value": "1"}]},
                                       ("env", "name", "match")),
    "template env name with '='": ({"template": {"env": [{"name": "A=B", "value": "1"}]}},
                                   ("template", "env", "name", "match")),
    "env with both value and valueFrom": (
        {"env": [{"name": "X", "value": "1",
                  "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        ("env", "value or valueFrom")),
    "env setting the job uid": ({"env": [{"name": "VOLT_JOB_UID", "value": "x"}]},
                                ("spec.env", "VOLT_JOB_UID")),
    # -- paths
    "checkpoint path /": ({"checkpoint": {"claimName": "c", "path": "/"}},
                          ("checkpoint.path",)),
    "checkpoint path with ..": ({"checkpoint": {"claimName": "c", "path": "/ckpt/../etc"}},
                                ("checkpoint.path", "..")),
    "relative fromPath": ({"resume": "FromPath", "fromPath": "ckpt/last.ckpt"},
                          ("fromPath", "match")),
    "fromPath with ..": ({"resume": "FromPath", "fromPath": "/ckpt/../other/last.ckpt"},
                         ("spec.fromPath", "..")),
    "relative volume mountPath": (
        {"template": {"volumes": [DATA_VOLUME],
                      "volumeMounts": [{"name": "data", "mountPath": "data"}]}},
        ("mountPath", "match")),
    # -- time
    "maxTime in hours": ({"trainer": {"maxTime": "1h"}}, ("trainer.maxTime",)),
    "maxTime with 25 hours": ({"trainer": {"maxTime": "00:25:00:00"}}, ("trainer.maxTime",)),
    # -- failure rules
    "exit code 0 with operator In": (
        rule(onExitCodes={"operator": "In", "values": [0, 1]}), ("onExitCodes", "exit code 0")),
    "exit code above 255": (rule(onExitCodes={"values": [256]}), ("onExitCodes.values",)),
    "a duplicate exit code": (rule(onExitCodes={"values": [3, 3]}), ("onExitCodes.values",)),
    "an empty onReasons": (rule(onReasons=[]), ("onReasons",)),
    # -- names volt uses itself
    "a volume named like the checkpoint volume": (
        {"template": {"volumes": [{"name": "volt-checkpoints", "emptyDir": {}}]}},
        ("volumes", "volt-checkpoints")),
    "two volumes of one name": (
        {"template": {"volumes": [DATA_VOLUME, {"name": "data", "emptyDir": {}}]}},
        ("template.volumes",)),
    "a volume name that is not a DNS label": (
        {"template": {"volumes": [{"name": "Data_1", "emptyDir": {}}]}}, ("volumes", "name")),
    "a mount of a volume that does not exist": (
        {"template": {"volumeMounts": [{"name": "nope", "mountPath": "/data"}]}},
        ("template.volumeMounts",)),
    "a mount over the checkpoint path": (
        {"checkpoint": {"claimName": "c", "path": "/ckpt"},
         "template": {"volumes": [DATA_VOLUME],
                      "volumeMounts": [{"name": "data", "mountPath": "/ckpt"}]}},
        ("template.volumeMounts", "checkpoint.path")),
    "two mounts on one path": (
        {"template": {"volumes": [DATA_VOLUME, {"name": "more", "emptyDir": {}}],
                      "volumeMounts": [{"name": "data", "mountPath": "/d"},
                                       {"name": "more", "mountPath": "/d"}]}},
        ("template.volumeMounts", "mountPath")),
    "the operator's job label": ({"template": {"labels": {"volt.dev/job": "other"}}},
                                 ("template.labels", "volt.dev/job")),
    "the operator's scrape annotation": (
        {"template": {"annotations": {"prometheus.io/port": "1234"}}},
        ("template.annotations", "prometheus.io/port")),
    # -- tolerations the API server would refuse on the pod
    "tolerationSeconds without NoExecute": (
        {"template": {"tolerations": [{"key": "k", "operator": "Exists",
                                       "effect": "NoSchedule", "tolerationSeconds": 5}]}},
        ("tolerations", "tolerationSeconds")),
    "a value with operator Exists": (
        {"template": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
        ("tolerations", "Exists")),
    # -- elastic bounds: 1 <= minNodes <= numNodes <= maxNodes
    "elastic minNodes above numNodes": (
        {"elastic": {"minNodes": 3}}, ("spec.elastic.minNodes", "spec.trainer.numNodes")),
    "numNodes above elastic maxNodes": (
        {"elastic": {"minNodes": 1, "maxNodes": 1}},
        ("spec.trainer.numNodes", "spec.elastic.maxNodes")),
    "elastic minNodes of 0": ({"elastic": {"minNodes": 0}}, ("elastic.minNodes",)),
    "elastic without minNodes": ({"elastic": {"maxNodes": 4}}, ("elastic.minNodes",)),
    "elastic shrinkAfterSeconds of 0": (
        {"elastic": {"minNodes": 1, "shrinkAfterSeconds": 0}}, ("elastic.shrinkAfterSeconds",)),
    # -- precision: the message lists each allowed value once
    "an unknown precision": ({"trainer": {"precision": "fp8"}},
                             ("trainer.precision", "one of 16, 32, 64, bf16, 16-mixed, bf16-mixed,")),
    "an unknown precision number": ({"trainer": {"precision": 8}}, ("trainer.precision", "one of 16, 32")),
    # -- the /dev/shm size
    "a sharedMemory sizeLimit that is no quantity": (
        {"sharedMemory": {"sizeLimit": "lots"}}, ("sharedMemory.sizeLimit", "quantity")),
    "a sharedMemory sizeLimit of 0": (
        {"sharedMemory": {"sizeLimit": "0"}}, ("sharedMemory.sizeLimit", "above 0")),
}

# Near misses of the rules above that must be accepted (no false refusals).
VALID: Dict[str, Dict[str, Any]] = {
    "precision as a number and as text": {"trainer": {"precision": 16}},
    "precision bf16-mixed": {"trainer": {"precision": "bf16-mixed"}},
    "a sharedMemory sizeLimit in bytes": {"sharedMemory": {"sizeLimit": 1073741824}},
    "a /dev/shm of the user's own": {
        "sharedMemory": {"sizeLimit": "512Mi"},
        "template": {"volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}],
                     "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}},
    "gpus with a matching limit": {
        "trainer": {"gpus": "0,1", "accelerator": "gpu"},
        "resources": {"limits": {"nvidia.com/gpu": 2, "memory": "8Gi"},
                      "requests": {"memory": "4Gi", "cpu": "500m"}}},
    "a GPU count from the resource alone": {
        "trainer": {"devices": "auto"}, "resources": {"limits": {"nvidia.com/gpu": "4"}}},
    "gpus 0 on cpu": {"trainer": {"gpus": 0, "accelerator": "cpu"}},
    "128 processes per node": {"trainer": {"devices": 128, "accelerator": "cpu"}},
    "rendezvous just past the metrics ports": {
        "trainer": CPU4, "metrics": {"port": 9090}, "rendezvous": {"port": 9094}},
    "rendezvous just below the metrics ports": {
        "trainer": CPU4, "metrics": {"port": 9090}, "rendezvous": {"port": 9089}},
    "request equal to the limit in other units": {
        "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1000m"}}},
    "exit code 0 with NotIn": rule(onExitCodes={"operator": "NotIn", "values": [0, 75]}),
    "a nested checkpoint path and an absolute fromPath": {
        "checkpoint": {"claimName": "c", "path": "/mnt/ckpt.d/run..1", "keepLast": 5,
                       "allowForeignCheckpoints": True},
        "resume": "FromPath", "fromPath": "/mnt/seed/last.ckpt"},
    "the checkpoint volume mounted a second time": {
        "checkpoint": {"claimName": "c", "path": "/ckpt"},
        "template": {"volumes": [DATA_VOLUME],
                     "volumeMounts": [{"name": "volt-checkpoints", "mountPath": "/ro",
                                       "readOnly": True},
                                      {"name": "data", "mountPath": "/data"}]}},
    "env names with dots and dashes": {"env": [{"name": "my.var-1", "value": "x"},
                                               {"name": "_X", "value": ""}]},
    "maxTime of 12 hours": {"trainer": {"maxTime": "00:12:00:00"}},
    "a NoExecute toleration with seconds": {
        "template": {"tolerations": [{"key": "node.kubernetes.io/unreachable",
                                      "operator": "Exists", "effect": "NoExecute",
                                      "tolerationSeconds": 30},
                                     {"operator": "Exists"}],
                     "labels": {"team": "vision"}}},
    "failure policy at its bounds": {"failurePolicy": {
        "maxRestarts": 1000, "maxFreeRestarts": 0, "stallTimeoutSeconds": 0}},
    "elastic from 1 to 4 nodes": {"elastic": {"minNodes": 1, "maxNodes": 4,
                                              "shrinkAfterSeconds": 30}},
    "elastic at exactly numNodes": {"elastic": {"minNodes": 2, "maxNodes": 2}},
}
