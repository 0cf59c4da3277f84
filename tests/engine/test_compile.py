"""Trainer(compile=...): the whole step compiled gives the weights eager training gives.

Most tests compile with ``backend="aot_eager"``: dynamo captures the step and AOT autograd
builds its forward and backward graphs exactly as for inductor, without inductor's C++ code
generation, which costs tens of seconds per graph on a small CPU. One test runs the default
(inductor) backend end to end. The models and the tolerances are in compile_models.py;
test_compile_cuda.py runs the same comparisons on a GPU, with inductor and the CUDA graph.
"""
from __future__ import annotations

import json
import logging
import os
import urllib.request
from typing import Any, Dict, List

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from torch import nn
from torch.utils.data import DataLoader

import volt
from compile_models import AOT, BF16_TOL, FP32_TOL, Classifier, assert_same_weights, bare_trainer, fit, make_data
from volt.callbacks.prometheus import PrometheusCallback
from volt_operator.api import TrainerSettings

CASES = [
    pytest.param("mlp", {}, FP32_TOL, id="mlp"),
    pytest.param("mlp", dict(gradient_clip_val=0.05, accumulate_grad_batches=2), FP32_TOL, id="mlp-clip-accumulate"),
    pytest.param("mlp", dict(precision="bf16-mixed", gradient_clip_val=0.5, gradient_clip_algorithm="value"),
                 BF16_TOL, id="mlp-bf16-clip-value"),
    pytest.param("transformer", dict(gradient_clip_val=0.1, accumulate_grad_batches=3), FP32_TOL,
                 id="transformer-clip-accumulate"),
    pytest.param("transformer", dict(precision="bf16-mixed"), BF16_TOL, id="transformer-bf16"),
]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind, settings, tol", CASES)
def test_compiled_step_trains_the_weights_eager_does(tmp_path: Any, kind: str, settings: Dict[str, Any],
                                                      tol: Dict[str, float]) -> None:
    eager, eager_trainer, eager_history = fit(tmp_path, "eager", False, kind, **dict(settings))
    compiled, trainer, history = fit(tmp_path, "compiled", AOT, kind, **dict(settings))
    stats = trainer.compile_stats
    assert stats.active and stats.fallback_reason is None and stats.graph_breaks == [], stats
    assert stats.compiles >= 1
    assert_same_weights(eager, compiled, tol)
    assert trainer.global_step == eager_trainer.global_step
    # self.log inside the compiled step reached callbacks, callback_metrics and the logger
    torch.testing.assert_close(torch.tensor(history.losses), torch.tensor(eager_history.losses), **tol)
    for key in ("train_loss", "logit_mean"):
        torch.testing.assert_close(trainer.callback_metrics[key], eager_trainer.callback_metrics[key], **tol)
    metrics = os.path.join(trainer.logger.log_dir, "metrics.csv")
    with open(metrics) as f:
        header = f.readline()
    assert "train_loss" in header and "logit_mean" in header


@pytest.mark.timeout(240)
def test_compiled_step_with_inductor_matches_eager(tmp_path: Any) -> None:
    eager, _, _ = fit(tmp_path, "eager", False, max_epochs=1, steps_data=24)
    compiled, trainer, _ = fit(tmp_path, "compiled", True, max_epochs=1, steps_data=24)
    assert trainer.compile_stats.active and trainer.compile_stats.compiles >= 1
    assert_same_weights(eager, compiled, FP32_TOL)


class ManualModel(Classifier):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


class DataDependent(Classifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)["loss"]
        if loss.item() > 100.0:  # Python control flow on a tensor's value: dynamo breaks the graph here
            loss = loss * 0.5
        return loss


class GradientWatcher(volt.Callback):
    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("model, callbacks, reason", [
    (ManualModel, [], "manual optimization"),
    (Classifier, [GradientWatcher()], "on_after_backward"),
    (DataDependent, [], "graph break in the step"),
])
def test_a_step_that_cannot_be_captured_runs_eagerly_with_one_reason(tmp_path: Any, caplog: Any, model: type,
                                                                      callbacks: List[Any], reason: str) -> None:
    eager = model()
    bare_trainer(False, callbacks=list(callbacks)).fit(eager, make_data(32, (8,)))
    compiled = model()
    trainer = bare_trainer(AOT, callbacks=list(callbacks))
    with caplog.at_level(logging.WARNING, logger="volt"):
        trainer.fit(compiled, make_data(32, (8,)))
    lines = [r.getMessage() for r in caplog.records if "Trainer(compile=" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0], lines
    assert not trainer.compile_stats.active and reason in trainer.compile_stats.fallback_reason
    assert_same_weights(eager, compiled, FP32_TOL)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("first, second", [(AOT, False), (False, AOT)], ids=["compiled-then-eager",
                                                                              "eager-then-compiled"])
def test_a_checkpoint_resumes_across_compile_on_and_off(tmp_path: Any, first: Any, second: Any) -> None:
    straight, _, _ = fit(tmp_path, "straight", False, max_epochs=2)
    ckpt = str(tmp_path / "half.ckpt")
    _, half, _ = fit(tmp_path, "first", first, max_epochs=1)
    half.save_checkpoint(ckpt)
    resumed = Classifier()
    trainer = bare_trainer(second, max_epochs=2, num_sanity_val_steps=0)
    trainer.fit(resumed, make_data(48, (8,)), ckpt_path=ckpt)
    assert trainer.global_step == 12
    assert_same_weights(straight, resumed, FP32_TOL)
    assert "_orig_mod" not in "".join(torch.load(ckpt, weights_only=False)["state_dict"])


@pytest.mark.timeout(120)
def test_recompiles_are_logged_counted_and_bounded(tmp_path: Any, caplog: Any) -> None:
    loaders = [make_data(8 * n, (8 + n,)) for n in range(1, 5)]
    model = Resizing()
    trainer = bare_trainer(AOT, max_epochs=4, reload_dataloaders_every_n_epochs=1)
    model.loaders = loaders
    with caplog.at_level(logging.WARNING, logger="volt"), _dynamo_config(recompile_limit=3):
        trainer.fit(model)
    stats = trainer.compile_stats
    lines = [r.getMessage() for r in caplog.records if "compiled again" in r.getMessage()]
    assert stats.recompiles == 2 and len(lines) == 2, (stats, lines)
    # one version compiled + two recompiles fill the limit of 3: the last epoch trains eagerly
    assert not stats.active and "recompile_limit=3" in stats.fallback_reason
    assert trainer.global_step == 1 + 2 + 3 + 4


def _dynamo_config(recompile_limit: int) -> Any:
    """dynamo's own config patch (monkeypatch.setattr on torch._dynamo.config leaves an alias such as
    recompile_limit deleted after the test); without automatic dynamic shapes each new shape compiles anew."""
    import torch._dynamo

    return torch._dynamo.config.patch(recompile_limit=recompile_limit, automatic_dynamic_shapes=False)


class Resizing(Classifier):
    """Each epoch's loader has a wider input; the first layer reads its first 8 features."""

    loaders: List[DataLoader] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x[:, :8]), y)

    def train_dataloader(self) -> DataLoader:
        return self.loaders[self.trainer.current_epoch]


@pytest.mark.parametrize("value, match", [
    ("max-autotune", "compile='max-autotune'"),
    (1, "compile=1"),
    ({"backend": "aot_eager", "speed": 2}, "unknown keys \\['speed'\\]"),
    ("cudagraphs", "needs a CUDA device"),
])
def test_a_bad_compile_value_fails_at_construction(value: Any, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        volt.Trainer(accelerator="cpu", compile=value)


@pytest.mark.parametrize("field, mode", [("on", "compile"), ("off", "off")])
def test_the_training_job_compile_field_reaches_the_trainer(monkeypatch: Any, field: str, mode: str) -> None:
    settings = TrainerSettings.model_validate({"compile": field}).to_trainer_kwargs()
    monkeypatch.setenv("VOLT_TRAINER", json.dumps(settings))
    assert volt.Trainer().config.compile.mode == mode
    monkeypatch.setenv("VOLT_TRAINER", json.dumps({**settings, "compile": "cudagraphs"}))
    with pytest.raises(ValueError, match="compile='cudagraphs'.*needs a CUDA device"):
        volt.Trainer()  # the job asked for CPU processes



class RecompileScrape(volt.Callback):
    """Scrapes the rank's /metrics at each epoch end: the compile counters as Prometheus sees them."""

    def __init__(self, prometheus: PrometheusCallback) -> None:
        self.prometheus = prometheus
        self.seen: List[Dict[str, float]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.prometheus.port}/metrics", timeout=10) as response:
            text = response.read().decode()
        self.seen.append({sample.name: sample.value for family in text_string_to_metric_families(text)
                          for sample in family.samples if sample.name.startswith("volt_compile_")})


@pytest.mark.timeout(120)
def test_recompiles_and_fallbacks_are_prometheus_counters(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("VOLT_METRICS_PORT", raising=False)
    model = Resizing()
    model.loaders = [make_data(8 * n, (8 + n,)) for n in range(1, 4)]
    prometheus = PrometheusCallback(port=0, host="127.0.0.1")
    scrape = RecompileScrape(prometheus)
    trainer = bare_trainer(AOT, max_epochs=3, reload_dataloaders_every_n_epochs=1, callbacks=[prometheus, scrape])
    with _dynamo_config(recompile_limit=2):
        trainer.fit(model)
    # epoch 0 compiles the step; epoch 1's wider input recompiles it, which fills the limit of 2
    # compiled versions, so the step falls back to eager there and epoch 2 compiles nothing
    assert [s["volt_compile_recompiles_total"] for s in scrape.seen] == [0, 1, 1], scrape.seen
    assert [s["volt_compile_fallbacks_total"] for s in scrape.seen] == [0, 1, 1], scrape.seen
    assert trainer.compile_stats.recompiles == 1 and trainer.compile_stats.fallbacks == 1
    assert trainer.global_step == 1 + 2 + 3
