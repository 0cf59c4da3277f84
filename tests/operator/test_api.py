"""The TrainingJob models: seed names, normalisation to Trainer kwargs, clear errors."""
from __future__ import annotations

from typing import Any, Dict

import pytest
from pydantic import ValidationError

from invalid_specs import INVALID, VALID, spec_with
from volt_operator.api import TrainingJobSpec, TrainingJobStatus

pytestmark = pytest.mark.timeout(30)


def make(**trainer: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate(
        {"image": "img", "command": ["python", "train.py"], "trainer": trainer}
    )


def error(body: Dict[str, Any]) -> str:
    base = {"image": "img", "command": ["python", "train.py"]}
    base.update(body)
    with pytest.raises(ValidationError) as info:
        TrainingJobSpec.model_validate(base)
    return str(info.value)


@pytest.mark.parametrize(
    "trainer, nproc, kwargs",
    [
        ({}, 1, {"num_nodes": 1, "devices": 1, "accelerator": "cpu"}),
        ({"numNodes": 2, "devices": 2, "accelerator": "cpu"}, 2,
         {"num_nodes": 2, "devices": 2, "accelerator": "cpu", "strategy": "ddp"}),
        # 1.x: gpus implies the GPU accelerator; "0,1" and [0, 1] are two devices.
        ({"gpus": 2}, 2, {"devices": 2, "accelerator": "gpu", "strategy": "ddp"}),
        ({"gpus": "0,1"}, 2, {"devices": 2, "accelerator": "gpu"}),
        ({"gpus": "0, 1, 2"}, 3, {"devices": 3, "accelerator": "gpu"}),
        # 1.x: accelerator=ddp_cpu is a strategy; num_processes sets the count.
        ({"accelerator": "ddp_cpu", "numProcesses": 4}, 4,
         {"devices": 4, "accelerator": "cpu", "strategy": "ddp"}),
        ({"accelerator": "ddp", "gpus": 1, "numNodes": 4}, 1,
         {"devices": 1, "accelerator": "gpu", "strategy": "ddp", "num_nodes": 4}),
        ({"accelerator": "cuda", "devices": 8}, 8, {"accelerator": "gpu", "devices": 8}),
        ({"maxEpochs": 3, "precision": "bf16-mixed", "accumulateGradBatches": 4,
          "gradientClipVal": 0.5, "limitTrainBatches": 0.25, "valCheckInterval": 100,
          "ampLevel": "O2", "extra": {"fast_dev_run": 1, "terminate_on_nan": True,
                                     "track_grad_norm": "inf", "overfit_batches": 0.1}},
         1,
         {"max_epochs": 3, "precision": "bf16-mixed", "accumulate_grad_batches": 4,
          "gradient_clip_val": 0.5, "limit_train_batches": 0.25, "val_check_interval": 100,
          "amp_level": "O2", "fast_dev_run": 1, "terminate_on_nan": True,
          "track_grad_norm": "inf", "overfit_batches": 0.1}),
        ({"precision": 16}, 1, {"precision": 16}),
        # JSON cannot tell 1 from 1.0: whole numbers are batch counts.
        ({"limitValBatches": 1.0}, 1, {"limit_val_batches": 1}),
    ],
)
def test_trainer_normalisation(trainer: Dict[str, Any], nproc: int, kwargs: Dict[str, Any]) -> None:
    spec = make(**trainer)
    assert spec.processes_per_node() == nproc
    got = spec.trainer.to_trainer_kwargs(spec.gpu_limit())
    for key, value in kwargs.items():
        assert got[key] == value, key
        assert type(got[key]) is type(value), key


def test_gpu_count_from_resources_with_auto() -> None:
    spec = TrainingJobSpec.model_validate(
        {"image": "i", "command": ["c"], "trainer": {"accelerator": "auto", "devices": "auto"},
         "resources": {"limits": {"nvidia.com/gpu": 4}}}
    )
    assert spec.processes_per_node() == 4 and spec.gpus_per_node() == 4


@pytest.mark.parametrize(
    "body, field",
    [
        ({"trainer": {"numNodes": 0}}, "numNodes"),
        ({"trainer": {"gpus": 2, "devices": 2}}, "trainer.gpus or trainer.devices"),
        ({"trainer": {"gpus": -1}}, "trainer.gpus=-1"),
        ({"trainer": {"devices": "two"}}, "trainer.devices"),
        ({"trainer": {"gpus": [0, 1]}}, "gpus"),
        ({"trainer": {"precision": "fp8"}}, "precision"),
        ({"trainer": {"accelerator": "tpu"}}, "accelerator"),
        ({"trainer": {"limitTrainBatches": 1.5}}, "trainer.limitTrainBatches"),
        ({"trainer": {"maxTime": "1 hour"}}, "maxTime"),
        ({"trainer": {"minEpochs": 5, "maxEpochs": 2}}, "trainer.minEpochs"),
        ({"trainer": {"numNodes": 2, "strategy": "dp"}}, "trainer.strategy"),
        ({"trainer": {"extra": {"num_nodes": 3}}}, "trainer.extra.num_nodes"),
        ({"trainer": {"extra": {"fast_dev_run": [1]}}}, "trainer.extra.fast_dev_run"),
        ({"trainer": {"extra": {"track_grad_norm": "two"}}}, "track_grad_norm"),
        ({"trainer": {"extra": {"overfit_batches": 2.5}}}, "trainer.extra.overfit_batches"),
        ({"trainer": {"maxEpochz": 3}}, "maxEpochz"),
        ({"resume": "FromPath"}, "spec.fromPath"),
        ({"fromPath": "/x"}, "spec.fromPath"),
        ({"resume": "Sometimes"}, "resume"),
        ({"cleanPodPolicy": "Some"}, "cleanPodPolicy"),
        ({"env": [{"name": "WORLD_SIZE", "value": "8"}]}, "WORLD_SIZE"),
        ({"template": {"env": [{"name": "RANK", "value": "0"}]}}, "RANK"),
        ({"failurePolicy": {"rules": [{"action": "FailJob"}]}}, "onExitCodes or onReasons"),
        ({"failurePolicy": {"maxRestarts": -1}}, "maxRestarts"),
        ({"metrics": {"port": 29500}}, "spec.metrics.port"),
        ({"resources": {"limits": {"nvidia.com/gpu": "1.5"}}}, "nvidia.com/gpu"),
        ({"trainer": {"gpus": 2}, "resources": {"limits": {"nvidia.com/gpu": 4}}},
         "nvidia.com/gpu=4"),
        ({"checkpoint": {"claimName": "c", "path": "relative"}}, "path"),
        ({"command": []}, "command"),
    ],
)
def test_invalid_specs_name_the_field(body: Dict[str, Any], field: str) -> None:
    assert field in error(body)


def test_missing_image_is_refused() -> None:
    with pytest.raises(ValidationError, match="image"):
        TrainingJobSpec.model_validate({"command": ["x"]})


def test_round_trip_is_camel_case_without_nulls() -> None:
    spec = make(numNodes=2, maxEpochs=1)
    out = spec.to_api()
    assert out["trainer"] == {"numNodes": 2, "maxEpochs": 1, "extra": {}}
    assert TrainingJobSpec.model_validate(out) == spec


def test_status_ignores_unknown_fields_and_defaults() -> None:
    status = TrainingJobStatus.model_validate({"phase": "Running", "kopf": {"x": 1}})
    assert status.phase == "Running" and status.restarts == 0 and status.ready_nodes == "0/0"


@pytest.mark.parametrize("case", list(INVALID))
def test_operator_refuses_what_the_api_server_refuses(case: str) -> None:
    """The same table the API server is tested with (test_operator_integration.py)."""
    change, names = INVALID[case]
    with pytest.raises(ValidationError) as info:
        TrainingJobSpec.model_validate(spec_with(change))
    for name in names:
        assert name in str(info.value), f"{case}: {name!r} not in {info.value}"


@pytest.mark.parametrize("case", list(VALID))
def test_near_misses_are_accepted(case: str) -> None:
    TrainingJobSpec.model_validate(spec_with(VALID[case]))
