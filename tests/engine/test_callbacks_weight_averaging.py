"""StochasticWeightAveraging, WeightAveraging and EMAWeightAveraging: real fits on CPU, no mocks.

Expected averages are computed here from the weights a recording callback saw (it runs before the
averaging callback), the SWA learning rates from the annealing formula, the BatchNorm statistics with
``torch.optim.swa_utils.update_bn``. The last tests run ``weight_averaging_diff_script.py`` under volt and
under Lightning 2.6.6 (``VOLT_LIGHTNING_PYTHON``) and compare what the two did.
"""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import SWALR, update_bn

import volt
from volt.callbacks import ModelCheckpoint
from volt.callbacks.stochastic_weight_avg import StochasticWeightAveraging
from volt.callbacks.weight_averaging import EMAWeightAveraging, WeightAveraging

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = [
    pytest.mark.timeout(180),
    # resumed runs checkpoint into their own directory, which ModelCheckpoint notes
    pytest.mark.filterwarnings("ignore:The checkpoint directory changed"),
]

BATCHES = 4  # loader(32) with batch_size 8


class Recorder(volt.Callback):
    """Weights at each epoch start and after each optimizer step, lrs at each batch."""

    def __init__(self) -> None:
        self.epoch_start: List[torch.Tensor] = []
        self.after_step: List[torch.Tensor] = []
        self.epoch_lrs: List[List[float]] = []
        self._step = 0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.epoch_start.append(flat(pl_module))
        self.epoch_lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            self.after_step.append(flat(pl_module))


def flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


class Scheduled(TinyModel):
    """TinyModel with SGD momentum and a StepLR (halves the lr every epoch)."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


class TwoGroups(TinyModel):
    """Weight and bias in two param groups of Adam."""

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam([{"params": [self.layer.weight]}, {"params": [self.layer.bias], "lr": 0.02}], lr=0.01)


class BatchNormModel(TinyModel):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.bn(x))


def fit(tmp_path: Path, model: volt.LightningModule, callback: volt.Callback, *, val: bool = False,
        checkpoint: Optional[ModelCheckpoint] = None, ckpt_path: Optional[str] = None,
        **kwargs: Any) -> tuple:
    rec = Recorder()
    callbacks = [rec, callback] + ([checkpoint] if checkpoint is not None else [])
    trainer = quiet_trainer(tmp_path, callbacks=callbacks, enable_checkpointing=checkpoint is not None,
                            num_sanity_val_steps=0, **kwargs)
    trainer.fit(model, loader(32), loader(16, seed=1) if val else None, ckpt_path=ckpt_path)
    return trainer, rec


def annealed(lr: float, swa_lr: float, k: int, epochs: int, strategy: str) -> float:
    """SWALR's lr after k epoch steps, from the lr it started with (torch's documented schedule)."""
    t = min(1.0, k / max(1, epochs)) if epochs else 1.0
    alpha = (1 - math.cos(math.pi * t)) / 2 if strategy == "cos" else t
    return swa_lr * alpha + lr * (1 - alpha)


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, name", [
    (dict(swa_lrs=0.0), ValueError, "swa_lrs"),
    (dict(swa_lrs=[0.1, -1.0]), ValueError, "swa_lrs"),
    (dict(swa_lrs="0.1"), ValueError, "swa_lrs"),
    (dict(swa_lrs=[]), ValueError, "swa_lrs"),
    (dict(swa_lrs=0.1, swa_epoch_start=0), ValueError, "swa_epoch_start"),
    (dict(swa_lrs=0.1, swa_epoch_start=1.5), ValueError, "swa_epoch_start"),
    (dict(swa_lrs=0.1, swa_epoch_start="2"), TypeError, "swa_epoch_start"),
    (dict(swa_lrs=0.1, swa_epoch_start=True), TypeError, "swa_epoch_start"),
    (dict(swa_lrs=0.1, annealing_epochs=-1), ValueError, "annealing_epochs"),
    (dict(swa_lrs=0.1, annealing_epochs=2.0), ValueError, "annealing_epochs"),
    (dict(swa_lrs=0.1, annealing_strategy="step"), ValueError, "annealing_strategy"),
    (dict(swa_lrs=0.1, avg_fn=3), TypeError, "avg_fn"),
    (dict(swa_lrs=0.1, device=0), TypeError, "device"),
    (dict(swa_lrs=0.1, device="nodevice"), ValueError, "device"),
])
def test_swa_rejects_bad_arguments(kwargs: Dict[str, Any], error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        StochasticWeightAveraging(**kwargs)


def test_swa_defaults_are_lightnings() -> None:
    swa = StochasticWeightAveraging(swa_lrs=1)
    assert (swa._swa_epoch_start, swa._annealing_epochs, swa._annealing_strategy) == (0.8, 10, "cos")
    assert swa._device == torch.device("cpu") and swa._swa_lrs == 1.0 and swa.n_averaged is None


@pytest.mark.parametrize("factory, error, name", [
    (lambda: WeightAveraging(device=1.5), TypeError, "device"),
    (lambda: WeightAveraging(device="nodevice"), ValueError, "device"),
    (lambda: WeightAveraging(use_buffers=1), TypeError, "use_buffers"),
    (lambda: WeightAveraging(decay=0.9), TypeError, "decay"),
    (lambda: WeightAveraging(avg_fn=1), TypeError, "avg_fn"),
    (lambda: WeightAveraging(avg_fn=lambda a, b, n: a, multi_avg_fn=lambda a, b, n: None), ValueError, "multi_avg_fn"),
    (lambda: EMAWeightAveraging(decay=1.5), ValueError, "decay"),
    (lambda: EMAWeightAveraging(decay="0.9"), ValueError, "decay"),
    (lambda: EMAWeightAveraging(update_every_n_steps=-1), ValueError, "update_every_n_steps"),
    (lambda: EMAWeightAveraging(update_starting_at_step=-2), ValueError, "update_starting_at_step"),
    (lambda: EMAWeightAveraging(update_starting_at_epoch=1.0), ValueError, "update_starting_at_epoch"),
    (lambda: EMAWeightAveraging(avg_fn=lambda a, b, n: a), TypeError, "avg_fn"),
])
def test_weight_averaging_rejects_bad_arguments(factory: Any, error: type, name: str) -> None:
    with pytest.raises(error, match=name):
        factory()


def test_swa_checks_the_optimizer_setup(tmp_path: Path) -> None:
    class TwoSchedulers(TinyModel):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.SGD(self.parameters(), lr=0.1)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1), torch.optim.lr_scheduler.StepLR(opt, 2)]

    with pytest.raises(ValueError, match="at most one LR scheduler"):
        fit(tmp_path, TwoSchedulers(), StochasticWeightAveraging(swa_lrs=0.1), max_epochs=2)
    with pytest.raises(ValueError, match="swa_lrs.*3 values.*2 param groups"):
        fit(tmp_path, TwoGroups(), StochasticWeightAveraging(swa_lrs=[0.1, 0.1, 0.1]), max_epochs=2)
    with pytest.raises(ValueError, match="swa_epoch_start.*max_epochs"):
        fit(tmp_path, TinyModel(), StochasticWeightAveraging(swa_lrs=0.1, swa_epoch_start=0.5), max_steps=4)


# --------------------------------------------------------------------------------------------
# StochasticWeightAveraging
# --------------------------------------------------------------------------------------------
def test_swa_averages_epoch_start_weights_and_anneals_the_lr(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Scheduled()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=3, annealing_epochs=2)
    trainer, rec = fit(tmp_path, model, swa, max_epochs=5)

    assert swa.swa_start == 2 and swa.swa_end == 4
    # the weights at the start of SWA epochs 2, 3, 4 (the results of epochs 1, 2, 3)
    expected = torch.stack(rec.epoch_start[2:5]).mean(0)
    torch.testing.assert_close(flat(model), expected)
    assert int(swa.n_averaged) == 3 and trainer.global_step == 5 * BATCHES
    # StepLR until SWA starts, then SWALR (cos) from the lr it found to swa_lrs over 2 epochs
    lrs = [lr[0] for lr in rec.epoch_lrs]
    assert lrs[:3] == pytest.approx([0.05, 0.025, 0.0125])
    assert lrs[2:] == pytest.approx([annealed(0.0125, 0.01, k, 2, "cos") for k in range(3)])
    assert lrs[3] == pytest.approx(0.01125)
    assert [type(c.scheduler) for c in trainer.lr_scheduler_configs] == [SWALR]
    assert trainer.max_epochs == 5


def test_swa_linear_annealing_per_group_lrs_and_avg_fn(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TwoGroups()
    swa = StochasticWeightAveraging(swa_lrs=[0.001, 0.004], swa_epoch_start=0.5, annealing_epochs=2,
                                    annealing_strategy="linear", avg_fn=lambda avg, new, n: 0.25 * avg + 0.75 * new)
    trainer, rec = fit(tmp_path, model, swa, max_epochs=4)

    assert swa.swa_start == 1  # int(0.5 * 4) = epoch 2, 1-based
    expected = rec.epoch_start[1]
    for weights in rec.epoch_start[2:4]:
        expected = 0.25 * expected + 0.75 * weights
    torch.testing.assert_close(flat(model), expected)
    for group, (lr0, swa_lr) in enumerate([(0.01, 0.001), (0.02, 0.004)]):
        got = [lrs[group] for lrs in rec.epoch_lrs]
        assert got == pytest.approx([lr0] + [annealed(lr0, swa_lr, k, 2, "linear") for k in range(3)])
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.001)


def test_swa_recomputes_batchnorm_statistics_in_one_more_epoch(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = BatchNormModel()
    swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=1)
    seen: Dict[str, Any] = {}

    class DuringTheExtraEpoch(volt.Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            seen["max_epochs"] = trainer.max_epochs

    rec = Recorder()
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[rec, swa, DuringTheExtraEpoch()])
    trainer.fit(model, loader(32))

    assert seen["max_epochs"] == 4 and trainer.max_epochs == 3 and trainer.current_epoch == 4
    assert len(rec.epoch_start) == 4
    average = torch.stack(rec.epoch_start[1:3]).mean(0)
    # the extra epoch's optimizer step (on its last batch: one more global step) changes nothing
    assert trainer.global_step == 3 * BATCHES + 1
    torch.testing.assert_close(flat(model), average)
    # statistics: a plain average over one pass of the training data, computed on the averaged model
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for p, value in zip(reference.parameters(), average.split([p.numel() for p in reference.parameters()])):
            p.copy_(value.view_as(p))
    update_bn(loader(32), reference)
    torch.testing.assert_close(model.bn.running_mean, reference.bn.running_mean)
    torch.testing.assert_close(model.bn.running_var, reference.bn.running_var)
    assert int(model.bn.num_batches_tracked) == BATCHES and model.bn.momentum == 0.1
    assert all(p.grad is None for p in model.parameters())
    assert trainer.accumulate_grad_batches == 1 and type(trainer.optimizers[0]).step is torch.optim.SGD.step


def test_swa_batchnorm_epoch_under_a_loss_scaler(tmp_path: Path) -> None:
    """The BatchNorm epoch's step is skipped past the GradScaler too (it still finds gradients to check)."""
    torch.manual_seed(2)
    model = BatchNormModel()
    trainer, rec = fit(tmp_path, model, StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2), max_epochs=3,
                       precision="16-mixed")
    assert trainer.scaler is not None and trainer.global_step == 3 * BATCHES + 1
    torch.testing.assert_close(flat(model), torch.stack(rec.epoch_start[1:3]).mean(0))


def test_swa_with_unlimited_epochs_averages_until_the_end(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = TinyModel()
    swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2)
    trainer, rec = fit(tmp_path, model, swa, max_epochs=-1, max_steps=4 * BATCHES)
    assert trainer.current_epoch == 4
    torch.testing.assert_close(flat(model), torch.stack(rec.epoch_start[1:4]).mean(0))


def test_swa_that_never_starts_leaves_the_weights(tmp_path: Path) -> None:
    torch.manual_seed(4)
    model = BatchNormModel()
    with pytest.warns(UserWarning, match="no weights will be averaged"):
        trainer, rec = fit(tmp_path, model, StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=9), max_epochs=2)
    assert trainer.max_epochs == 2 and trainer.global_step == 2 * BATCHES
    torch.testing.assert_close(flat(model), rec.after_step[-1])


@pytest.mark.parametrize("scheduled", [True, False], ids=["replaces-StepLR", "no-scheduler"])
@pytest.mark.parametrize("where", ["epoch_end", "mid_epoch"])
def test_swa_checkpoint_and_resume(tmp_path: Path, scheduled: bool, where: str) -> None:
    def run(sub: str, ckpt_path: Optional[str] = None) -> tuple:
        torch.manual_seed(5)
        model = Scheduled() if scheduled else TinyModel()
        every = dict(every_n_epochs=1) if where == "epoch_end" else dict(every_n_train_steps=10)
        mc = ModelCheckpoint(dirpath=str(tmp_path / sub), save_top_k=-1, **every)
        swa = StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=2, annealing_epochs=3)
        trainer, rec = fit(tmp_path / sub, model, swa, checkpoint=mc, ckpt_path=ckpt_path, max_epochs=5)
        return model, rec

    full, full_rec = run("full")
    name = "epoch=2-step=12.ckpt" if where == "epoch_end" else "epoch=2-step=10.ckpt"
    path = tmp_path / "full" / name
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt["callbacks"]["StochasticWeightAveraging"]
    assert sorted(state) == ["average_model_state", "latest_update_epoch", "n_averaged", "replaced_scheduler_states",
                             "scheduler_state"]
    # updated at the starts of epochs 1 and 2
    assert state["n_averaged"] == 2 and state["latest_update_epoch"] == 2
    average = torch.cat([state["average_model_state"][k].flatten() for k in ("layer.weight", "layer.bias")])
    torch.testing.assert_close(average, torch.stack(full_rec.epoch_start[1:3]).mean(0))
    assert state["scheduler_state"]["anneal_epochs"] == 3
    assert [sorted(s) for s in ckpt["lr_schedulers"]] == [sorted(state["scheduler_state"])]  # SWALR's, as Lightning
    assert len(state["replaced_scheduler_states"]) == int(scheduled)

    resumed, rec = run("resumed", str(path))
    assert torch.equal(flat(resumed), flat(full))
    assert rec.epoch_lrs == full_rec.epoch_lrs[2 if where == "mid_epoch" else 3:]


# --------------------------------------------------------------------------------------------
# WeightAveraging / EMAWeightAveraging
# --------------------------------------------------------------------------------------------
def test_weight_averaging_averages_optimizer_steps_and_validates_on_the_average(tmp_path: Path) -> None:
    val_weights: List[torch.Tensor] = []

    class Validated(TinyModel):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            if batch_idx == 0:
                val_weights.append(flat(self))
            super().validation_step(batch, batch_idx)

    torch.manual_seed(6)
    model = Validated()
    wa = WeightAveraging()
    trainer, rec = fit(tmp_path, model, wa, val=True, max_epochs=3, accumulate_grad_batches=3)

    steps = 2  # per epoch: after batches 3 and 4 (the epoch's last batch always steps)
    assert len(rec.after_step) == 3 * steps == trainer.global_step
    torch.testing.assert_close(flat(model), torch.stack(rec.after_step).mean(0))
    for epoch, weights in enumerate(val_weights):  # validation saw the average so far ...
        torch.testing.assert_close(weights, torch.stack(rec.after_step[:steps * (epoch + 1)]).mean(0))
    for epoch in (1, 2):  # ... and training went on from its own weights
        torch.testing.assert_close(rec.epoch_start[epoch], rec.after_step[steps * epoch - 1])
    assert wa._average_model.updates == int(wa._average_model.n_averaged) == 6


def test_ema_update_rules(tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = TinyModel()
    ema = EMAWeightAveraging(decay=0.5, update_every_n_steps=3, update_starting_at_step=2, update_starting_at_epoch=1)
    trainer, rec = fit(tmp_path, model, ema, max_epochs=3)
    # steps 3, 6 and 9 (0-based) pass the step rule; the ends of epochs 1 and 2 (steps 7 and 11) the epoch rule
    updates = [rec.after_step[i] for i in (3, 6, 7, 9, 11)]
    expected = updates[0]
    for weights in updates[1:]:
        expected = 0.5 * expected + 0.5 * weights
    torch.testing.assert_close(flat(model), expected)
    assert int(ema._average_model.n_averaged) == 5


@pytest.mark.parametrize("use_buffers", [True, False])
def test_weight_averaging_buffers(tmp_path: Path, use_buffers: bool) -> None:
    means: List[torch.Tensor] = []

    class Means(volt.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            means.append(pl_module.bn.running_mean.clone())

    torch.manual_seed(8)
    model = BatchNormModel()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[Means(), WeightAveraging(use_buffers=use_buffers)])
    trainer.fit(model, loader(32))
    # averaged like the parameters, or followed from the model at each update
    expected = torch.stack(means).mean(0) if use_buffers else means[-1]
    torch.testing.assert_close(model.bn.running_mean, expected)


@pytest.mark.parametrize("where", ["epoch_end", "mid_epoch"])
def test_weight_averaging_checkpoint_and_resume(tmp_path: Path, where: str) -> None:
    def run(sub: str, ckpt_path: Optional[str] = None) -> tuple:
        torch.manual_seed(9)
        model = TinyModel()
        every = dict(every_n_epochs=1) if where == "epoch_end" else dict(every_n_train_steps=6)
        mc = ModelCheckpoint(dirpath=str(tmp_path / sub), save_top_k=-1, **every)
        trainer, rec = fit(tmp_path / sub, model, EMAWeightAveraging(decay=0.6), checkpoint=mc, ckpt_path=ckpt_path,
                           max_epochs=3)
        return model, rec

    full, rec = run("full")
    path = tmp_path / "full" / ("epoch=1-step=8.ckpt" if where == "epoch_end" else "epoch=1-step=6.ckpt")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    steps = ckpt["global_step"]
    expected = rec.after_step[0]
    for weights in rec.after_step[1:steps]:
        expected = 0.4 * weights + 0.6 * expected
    weights = lambda state: torch.cat([state["layer.weight"].flatten(), state["layer.bias"]])  # noqa: E731
    torch.testing.assert_close(weights(ckpt["state_dict"]), expected)  # the average: what a loader gets
    torch.testing.assert_close(weights(ckpt["current_model_state"]), rec.after_step[steps - 1])
    assert int(ckpt["averaging_state"]["n_averaged"]) == steps
    assert ckpt["callbacks"]["EMAWeightAveraging"] == {"latest_update_step": steps}
    loaded = TinyModel.load_from_checkpoint(str(path))
    torch.testing.assert_close(flat(loaded), expected)

    resumed, _ = run("resumed", str(path))
    assert torch.equal(flat(resumed), flat(full))


# --------------------------------------------------------------------------------------------
# differential: the same script under volt and Lightning 2.6.6
# --------------------------------------------------------------------------------------------
SCRIPT = Path(__file__).with_name("weight_averaging_diff_script.py")


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Dict[str, Any]]:
    lightning_python = os.environ.get("VOLT_LIGHTNING_PYTHON")
    if not lightning_python:
        pytest.skip("VOLT_LIGHTNING_PYTHON is not set (the Lightning 2.6.6 test venv's python)")
    out = tmp_path_factory.mktemp("wa-differential")
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    runs = {engine: subprocess.Popen([python, str(SCRIPT), engine, str(out / f"{engine}.json")], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for engine, python in (("volt", sys.executable), ("lightning", lightning_python))}
    results = {}
    for engine, proc in runs.items():
        output, _ = proc.communicate(timeout=150)
        assert proc.returncode == 0, f"the {engine} run failed:\n{output[-4000:]}"
        results[engine] = json.loads((out / f"{engine}.json").read_text())
    return results


def scenario(engines: Dict[str, Dict[str, Any]], name: str) -> tuple:
    pair = engines["volt"][name], engines["lightning"][name]
    for engine, data in zip(("volt", "lightning"), pair):
        if "error" in data:
            pytest.fail(f"{name} failed under {engine}: {data['error']}\n{data['traceback']}")
    return pair


def assert_same(volt_value: Any, lightning_value: Any, path: str = "") -> None:
    if isinstance(lightning_value, dict):
        assert sorted(volt_value) == sorted(lightning_value), f"{path}: keys differ"
        for key in lightning_value:
            assert_same(volt_value[key], lightning_value[key], f"{path}/{key}")
    elif isinstance(lightning_value, list):
        assert len(volt_value) == len(lightning_value), f"{path}: lengths differ"
        for i, (a, b) in enumerate(zip(volt_value, lightning_value)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(lightning_value, float):
        assert volt_value == pytest.approx(lightning_value, rel=1e-5, abs=1e-6), path
    else:
        assert volt_value == lightning_value, path


@pytest.mark.parametrize("name", ["swa_cos_replaces_scheduler", "swa_linear_fraction", "swa_batchnorm",
                                  "weight_averaging_accumulated", "ema_batchnorm", "multi_avg_fn_without_buffers",
                                  "ema_resume"])
def test_same_as_lightning(engines: Dict[str, Dict[str, Any]], name: str) -> None:
    volt_run, lightning_run = scenario(engines, name)
    assert_same(volt_run, lightning_run)
    if name == "ema_resume":
        assert_same(volt_run["resumed"], volt_run["full"])


def test_swa_resume_same_as_lightning_with_one_more_state_key(engines: Dict[str, Dict[str, Any]]) -> None:
    volt_run, lightning_run = scenario(engines, "swa_resume")
    # volt also saves the scheduler SWALR replaced, to give it back on resume (Lightning ignores the key)
    assert volt_run.pop("state_keys") == sorted(lightning_run.pop("state_keys") + ["replaced_scheduler_states"])
    assert_same(volt_run, lightning_run)
    assert_same(volt_run["resumed"], volt_run["full"])


def test_swa_batchnorm_epoch_without_validation_differs_on_purpose(engines: Dict[str, Dict[str, Any]]) -> None:
    """Without a validation loop, Lightning's BatchNorm epoch steps the optimizer once with the gradients
    left over from the last training step and ends away from the average; volt ends on the average."""
    volt_run, lightning_run = scenario(engines, "swa_batchnorm_no_validation")
    average = torch.tensor(volt_run["epoch_start"][2:4]).mean(0)
    torch.testing.assert_close(torch.tensor(volt_run["final"]), average)
    assert not torch.allclose(torch.tensor(lightning_run["final"]), average)
    for key in ("final", "after_step"):
        volt_run.pop(key), lightning_run.pop(key)
    assert_same(volt_run, lightning_run)  # same statistics, lrs, counters and weights before the last step
