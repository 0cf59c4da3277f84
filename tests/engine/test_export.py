"""LightningModule.to_torchscript() and to_onnx()."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import volt

from tiny_models import loader, quiet_trainer
from ddp_support import child_env

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.jit is deprecated, still supported
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]


class Branchy(volt.LightningModule):
    """Data-dependent control flow (scripting keeps it, tracing freezes one path) and dropout (eval matters)."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 1))
        self.example_input_array = torch.randn(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if bool(x.sum() > 0):
            y = y * 2.0
        return y

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class TwoInputs(volt.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.layer(x) * scale


def test_script_matches_eager_on_both_branches_and_saves(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Branchy()
    model.train()
    scripted = model.to_torchscript(file_path=tmp_path / "m.pt")
    assert model.training  # the caller's mode is restored
    assert isinstance(scripted, torch.jit.ScriptModule) and not scripted.training
    loaded = torch.jit.load(str(tmp_path / "m.pt"))
    model.eval()
    for x in (torch.ones(2, 4), -torch.ones(2, 4)):  # both sides of the data-dependent branch
        expected = model(x)
        assert torch.equal(scripted(x), expected) and torch.equal(loaded(x), expected)


def test_trace_uses_example_input_array_or_example_inputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Branchy()
    model.example_input_array = -torch.ones(3, 4)  # the x.sum() <= 0 branch
    traced = model.to_torchscript(method="trace")
    model.eval()
    negative, positive = -torch.rand(5, 4), torch.rand(5, 4)
    assert torch.equal(traced(negative), model(negative))
    assert not torch.equal(traced(positive), model(positive))  # a trace, not a script: the branch is frozen

    two = TwoInputs()
    traced_two = two.to_torchscript(method="trace", example_inputs=(torch.randn(3, 4), torch.tensor(2.0)),
                                    file_path=str(tmp_path / "two.pt"))
    args = (torch.randn(3, 4), torch.tensor(3.0))
    assert torch.equal(traced_two(*args), two(*args))
    assert torch.equal(torch.jit.load(str(tmp_path / "two.pt"))(*args), two(*args))
    with pytest.raises(ValueError, match="example_inputs"):
        two.to_torchscript(method="trace")  # no example_input_array
    with pytest.raises(ValueError, match="'script' or 'trace'"):
        two.to_torchscript(method="compile")


def test_script_after_fit_while_attached(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Branchy()
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2).fit(model, loader())
    scripted = model.to_torchscript()
    x = torch.randn(4, 4)
    assert torch.equal(scripted(x), model.eval()(x))
    assert model.trainer is not None  # export leaves the attachment alone


@pytest.mark.skipif(importlib.util.find_spec("onnx") is not None, reason="onnx is installed in this environment")
def test_to_onnx_without_onnx_names_the_package(tmp_path: Path) -> None:
    model = Branchy()
    with pytest.raises(ImportError, match=r"'onnx'.*pip install onnx"):
        model.to_onnx(tmp_path / "m.onnx", dynamo=False)
    with pytest.raises(ImportError, match="dynamo=False"):  # torch's default exporter needs onnxscript too
        model.to_onnx(tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ValueError, match="input_sample"):
        TwoInputs().to_onnx(tmp_path / "m.onnx", dynamo=False)


_ONNX_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import onnx
    from onnx import numpy_helper
    import volt

    class Net(volt.LightningModule):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
            self.example_input_array = torch.randn(3, 4)
        def forward(self, x):
            return self.body(x)

    torch.manual_seed(0)
    model = Net()
    model.to_onnx(sys.argv[1], dynamo=False, input_names=["x"], output_names=["y"],
                  dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    proto = onnx.load(sys.argv[1])
    onnx.checker.check_model(proto)
    weights = {t.name: numpy_helper.to_array(t).tolist() for t in proto.graph.initializer}
    state = {k: v.tolist() for k, v in model.state_dict().items()}
    json.dump({"ops": [n.op_type for n in proto.graph.node], "inputs": [i.name for i in proto.graph.input],
               "weights_match": weights == state, "training": model.training}, sys.stdout)
""")


def test_to_onnx_writes_a_valid_model(tmp_path: Path) -> None:
    """Run where onnx is installed: the test-only reference venv (`make lightning-env`)."""
    python = os.environ.get("VOLT_LIGHTNING_PYTHON")
    if not python:
        pytest.skip("VOLT_LIGHTNING_PYTHON is not set: `make lightning-env` builds the venv with onnx "
                    "(`make test`/`make test-engine` set it)")
    script = tmp_path / "export.py"
    script.write_text(_ONNX_SCRIPT)
    proc = subprocess.run([python, str(script), str(tmp_path / "net.onnx")], env=child_env(), capture_output=True,
                          text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result == {"ops": ["Gemm", "Relu", "Gemm"], "inputs": ["x"], "weights_match": True, "training": True}
