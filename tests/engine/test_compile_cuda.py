"""Trainer(compile=...) on a GPU: the CUDA graph and inductor steps give the weights eager training gives.

Skipped without CUDA. Needs only torch, pytest and volt's engine, so it also runs as
``python -m pytest --noconftest tests/engine/test_compile_cuda.py`` on a GPU machine that
lacks the operator's packages (bench/gpu_check.sh does). Models and tolerances:
compile_models.py.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

import pytest
import torch

from compile_models import BF16_TOL, FP32_TOL, Classifier, assert_same_weights, bare_trainer, fit, make_data

pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"), pytest.mark.timeout(300)]
GPU = dict(accelerator="gpu", devices=1)

CASES = [
    pytest.param("mlp", {}, FP32_TOL, id="mlp"),
    pytest.param("mlp", dict(gradient_clip_val=0.05), FP32_TOL, id="mlp-clip-norm"),
    pytest.param("mlp", dict(precision="bf16-mixed", gradient_clip_val=0.5, gradient_clip_algorithm="value"),
                 BF16_TOL, id="mlp-bf16-clip-value"),
    pytest.param("transformer", dict(gradient_clip_val=0.1), FP32_TOL, id="transformer-clip-norm"),
    pytest.param("transformer", dict(precision="bf16-mixed"), BF16_TOL, id="transformer-bf16"),
]


@pytest.mark.parametrize("compile", ["cudagraphs", True], ids=["cudagraphs", "inductor"])
@pytest.mark.parametrize("kind, settings, tol", CASES)
def test_the_gpu_step_trains_the_weights_eager_does(tmp_path: Any, compile: Any, kind: str,
                                                    settings: Dict[str, Any], tol: Dict[str, float]) -> None:
    eager, eager_trainer, eager_history = fit(tmp_path, "eager", False, kind, **GPU, **settings)
    compiled, trainer, history = fit(tmp_path, "compiled", compile, kind, **GPU, **settings)
    stats = trainer.compile_stats
    assert stats.active and stats.fallback_reason is None, stats
    if compile == "cudagraphs":
        assert stats.compiles == 1, stats  # recorded once, replayed for every later batch
    assert trainer.global_step == eager_trainer.global_step
    assert_same_weights(eager, compiled, tol)
    # self.log inside the replayed graph reached callbacks and callback_metrics, step by step
    torch.testing.assert_close(torch.tensor(history.losses), torch.tensor(eager_history.losses), **tol)
    for key in ("train_loss", "logit_mean"):
        torch.testing.assert_close(trainer.callback_metrics[key].cpu(), eager_trainer.callback_metrics[key].cpu(),
                                   **tol)


class HostSync(Classifier):
    """Reads a loss value on the host inside the step: a CUDA graph cannot record that."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().training_step(batch, batch_idx)
        if out["loss"].item() > 100.0:
            out["loss"] = out["loss"] * 0.5
        return out


@pytest.mark.parametrize("model, settings, reason", [
    (HostSync, {}, "CUDA graph capture failed"),
    (Classifier, dict(accumulate_grad_batches=2), "accumulate_grad_batches=2"),
])
def test_a_step_a_cuda_graph_cannot_replay_runs_eagerly_with_one_reason(
        caplog: Any, model: type, settings: Dict[str, Any], reason: str) -> None:
    def train(compile: Any) -> Any:
        net = model()
        trainer = bare_trainer(compile, **GPU, **settings)
        trainer.fit(net, make_data(48, (8,)))
        return net, trainer

    eager, _ = train(False)
    with caplog.at_level(logging.WARNING, logger="volt"):
        captured, trainer = train("cudagraphs")
    lines = [r.getMessage() for r in caplog.records if "Trainer(compile=" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0], lines
    assert not trainer.compile_stats.active and reason in trainer.compile_stats.fallback_reason
    assert_same_weights(eager, captured, FP32_TOL)


def test_a_batch_of_another_shape_is_refused_naming_the_constraint() -> None:
    ragged = make_data(44, (8,))  # 5 full batches of 8, then one of 4: the graph was recorded for 8
    with pytest.raises(ValueError, match="drop_last=True"):
        bare_trainer("cudagraphs", **GPU).fit(Classifier(), ragged)
