"""volt.utilities' Lightning names: values computed by hand."""
from __future__ import annotations

import collections
import dataclasses
import random

import pytest
import torch
from torch import nn

from volt.callbacks import BasePredictionWriter, Timer
from volt.callbacks.prediction_writer import WriteInterval
from volt.callbacks.timer import Interval
from volt.trainer.states import RunningStage, TrainerStatus
from volt.utilities import (
    AttributeDict,
    GradClipAlgorithmType,
    MisconfigurationException,
    apply_to_collection,
    find_shared_parameters,
    grad_norm,
    is_picklable,
    measure_flops,
    set_shared_parameters,
    suggested_max_num_workers,
)
from volt.utilities.seed import isolate_rng


def test_grad_norm_per_parameter_and_total() -> None:
    layer = nn.Linear(2, 1)
    layer.weight.grad = torch.tensor([[3.0, 4.0]])
    layer.bias.grad = torch.tensor([12.0])
    norms = grad_norm(layer, 2)
    assert set(norms) == {"grad_2.0_norm/weight", "grad_2.0_norm/bias", "grad_2.0_norm_total"}
    assert norms["grad_2.0_norm/weight"].item() == pytest.approx(5.0)
    assert norms["grad_2.0_norm/bias"].item() == pytest.approx(12.0)
    assert norms["grad_2.0_norm_total"].item() == pytest.approx(13.0)  # sqrt(9 + 16 + 144)
    assert grad_norm(layer, "inf", group_separator="_")["grad_inf_norm_total"].item() == pytest.approx(12.0)
    assert grad_norm(nn.Linear(2, 1), 2) == {}  # no gradients yet
    with pytest.raises(ValueError, match="norm_type"):
        grad_norm(layer, 0)


def test_apply_to_collection_keeps_shapes() -> None:
    Pair = collections.namedtuple("Pair", "a b")

    @dataclasses.dataclass
    class Box:
        x: torch.Tensor
        label: str

    data = {"t": torch.ones(2), "l": [torch.zeros(1), 3], "p": Pair(torch.ones(1), "s"), "d": Box(torch.ones(1), "k")}
    out = apply_to_collection(data, torch.Tensor, lambda t, k: t * k, 5)
    assert out["t"].tolist() == [5.0, 5.0] and out["l"][0].tolist() == [0.0] and out["l"][1] == 3
    assert isinstance(out["p"], Pair) and out["p"].a.tolist() == [5.0] and out["p"].b == "s"
    assert isinstance(out["d"], Box) and out["d"].x.tolist() == [5.0]
    dropped = apply_to_collection({"a": 1, "b": "x"}, int, lambda v: None, include_none=False)
    assert dropped == {"b": "x"}
    assert apply_to_collection([True, 2], int, lambda v: -v, wrong_dtype=bool) == [True, -2]


def test_isolate_rng_restores_every_stream() -> None:
    torch.manual_seed(3)
    random.seed(3)
    expected = (torch.rand(1).item(), random.random())
    torch.manual_seed(3)
    random.seed(3)
    with isolate_rng():
        torch.rand(5), random.random()
    assert (torch.rand(1).item(), random.random()) == expected


def test_shared_parameters_found_and_retied() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight
    groups = find_shared_parameters(model)
    assert groups == [["0.weight", "1.weight"]]
    model[1].weight = nn.Parameter(model[0].weight.detach().clone())  # untied, as after some moves
    set_shared_parameters(model, groups)
    assert model[1].weight is model[0].weight


def test_small_helpers() -> None:
    assert measure_flops(nn.Linear(4, 3, bias=False), lambda: nn.Linear(4, 3, bias=False)(torch.ones(2, 4))) == 2 * 2 * 4 * 3
    assert suggested_max_num_workers(1) >= 1
    with pytest.raises(ValueError, match="local_world_size"):
        suggested_max_num_workers(0)
    hp = AttributeDict(lr=0.1)
    assert hp.lr == 0.1 and is_picklable(hp) and not is_picklable(lambda: 0)
    assert GradClipAlgorithmType.NORM == "norm" and GradClipAlgorithmType.VALUE == "VALUE"
    assert RunningStage.TRAINING == "train" and TrainerStatus.FINISHED == "finished"
    assert issubclass(MisconfigurationException, ValueError)


def test_interval_enums_are_accepted_as_their_strings() -> None:
    class Writer(BasePredictionWriter):
        def write_on_batch_end(self, *args, **kwargs) -> None:
            pass

    assert Writer(WriteInterval.BATCH_AND_EPOCH).write_interval == "batch_and_epoch"
    assert Timer(duration="00:00:00:01", interval=Interval.epoch)._interval == "epoch"
