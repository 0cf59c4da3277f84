"""Precision: parsing of every accepted spelling, and the dtypes the steps actually see."""
from __future__ import annotations

import logging
from typing import Any, Dict

import pytest
import torch

import volt
from volt.precision import parse_precision

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("value,expected", [
    (32, "32-true"), ("32", "32-true"), (64, "64-true"), ("64", "64-true"), (16, "16-mixed"), ("16", "16-mixed"),
    ("bf16", "bf16-mixed"), ("bf16-mixed", "bf16-mixed"), ("16-true", "16-true"), ("bf16-true", "bf16-true"),
    (None, "32-true"),
])
def test_parse_precision(value: Any, expected: str) -> None:
    assert parse_precision(value) == expected


@pytest.mark.parametrize("precision,level,expected", [
    (None, "O0", "32-true"), (None, "O1", "32-true"), (None, "O2", "32-true"), (16, "O1", "16-mixed"),
    (16, "O3", "16-mixed"), (32, "O2", "32-true"), ("bf16-mixed", "O1", "bf16-mixed"),
])
def test_amp_level_is_ignored_with_the_native_backend(precision: Any, level: str, expected: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="volt.precision")
    assert parse_precision(precision, amp_level=level, amp_backend="native") == expected
    assert parse_precision(precision, amp_level=level) == expected  # 1.x's default backend was native
    notes = [r.getMessage() for r in caplog.records if "amp_level" in r.getMessage()]
    assert notes == [f"amp_level={level!r} is ignored: it applies only to amp_backend='apex' (as in Lightning "
                     f"1.x); precision is {expected!r}"] * 2


def test_the_1x_default_signature_constructs(tmp_path: Any) -> None:
    # the defaults as Lightning 1.x's Trainer printed them
    trainer = volt.Trainer(precision=32, amp_backend="native", amp_level="O2", gpus=None, num_processes=1,
                           auto_select_gpus=False, tpu_cores=None, logger=False, default_root_dir=str(tmp_path))
    assert trainer.precision == "32-true"


def test_precision_errors() -> None:
    with pytest.raises(ValueError, match="amp_backend='apex'"):
        volt.Trainer(logger=False, precision=16, amp_backend="apex")
    with pytest.raises(ValueError, match=r"amp_backend='apex' \(with amp_level='O2'\) is not supported"):
        volt.Trainer(logger=False, amp_backend="apex", amp_level="O2")
    with pytest.raises(ValueError, match="precision=8"):
        volt.Trainer(logger=False, precision=8)
    with pytest.raises(ValueError, match="amp_level"):
        volt.Trainer(logger=False, amp_level="O4")


class DtypeProbe(TinyModel):
    def __init__(self) -> None:
        super().__init__()
        self.seen: Dict[str, torch.dtype] = {}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)
        self.seen.update(input=x.dtype, output=out.dtype, param=self.layer.weight.dtype)
        return torch.nn.functional.mse_loss(out.float(), y.float())


@pytest.mark.parametrize("precision,param,inp,out", [
    ("32", torch.float32, torch.float32, torch.float32),
    ("64", torch.float64, torch.float64, torch.float64),
    ("bf16-mixed", torch.float32, torch.float32, torch.bfloat16),
    ("bf16-true", torch.bfloat16, torch.bfloat16, torch.bfloat16),
    ("16-mixed", torch.float32, torch.float32, torch.float16),
])
def test_step_dtypes(tmp_path: Any, precision: str, param: torch.dtype, inp: torch.dtype, out: torch.dtype) -> None:
    model = DtypeProbe()
    trainer = quiet_trainer(tmp_path, max_steps=2, precision=precision)
    trainer.fit(model, loader())
    assert model.seen == {"input": inp, "output": out, "param": param}
    if precision == "16-mixed":
        scaler = trainer.precision_plugin.scaler
        assert scaler is not None and scaler.get_scale() > 0
        ckpt = volt.trainer.checkpoint_connector.dump_checkpoint(trainer)
        assert "native_amp_scaling_state" in ckpt


def test_init_module_creates_parameters_in_the_precision_dtype(tmp_path: Any) -> None:
    trainer = quiet_trainer(tmp_path, precision="64-true", max_steps=1)
    with trainer.init_module():
        model = TinyModel()
    assert model.layer.weight.dtype == torch.float64
    assert torch.get_default_dtype() == torch.float32
    trainer.fit(model, loader())
    with quiet_trainer(tmp_path, precision="bf16-mixed").init_module():
        assert TinyModel().layer.weight.dtype == torch.float32  # mixed keeps fp32 weights
