"""TrainerConfig (volt/trainer/config.py): one parser, one table of Lightning 1.x names, a frozen result."""
from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any, Dict

import pytest
import torch

import volt
from volt.trainer.config import LIGHTNING_1X, TRAINER_ATTRIBUTES, TrainerConfig


def _trainer(tmp_path: Any, **kwargs: Any) -> volt.Trainer:
    defaults: Dict[str, Any] = dict(default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False,
                                    accelerator="cpu", devices=1)
    return volt.Trainer(**{**defaults, **kwargs})


def _lightning_1x_parameters() -> list:
    """The Trainer's parameters from its "Lightning 1.x names" block (checkpoint_callback onwards)."""
    names = [n for n in inspect.signature(volt.Trainer.__init__).parameters if n != "self"]
    return names[names.index("checkpoint_callback"):]


def test_every_1x_parameter_is_in_the_table_once() -> None:
    table = [legacy.name for legacy in LIGHTNING_1X]
    assert sorted(table) == sorted(_lightning_1x_parameters())
    assert len(table) == len(set(table))
    parameters = set(inspect.signature(volt.Trainer.__init__).parameters)
    for legacy in LIGHTNING_1X:
        if legacy.target is not None:
            assert legacy.target in parameters and legacy.to_2x is not None, legacy


def test_the_config_is_frozen_and_the_trainer_reads_it(tmp_path: Any) -> None:
    trainer = _trainer(tmp_path, max_epochs=3, limit_train_batches=2, precision="bf16-mixed")
    config = trainer.config
    assert isinstance(config, TrainerConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_epochs = 5  # type: ignore[misc]
    assert trainer.precision == config.precision == "bf16-mixed"
    assert trainer.accelerator == config.placement.accelerator == "cpu"
    for name in TRAINER_ATTRIBUTES:
        assert getattr(trainer, name) is getattr(config, name), name
    # Lightning's attributes stay writable (GradientAccumulationScheduler, the tuner); the config keeps what was asked
    trainer.accumulate_grad_batches = 4
    assert config.accumulate_grad_batches == 1


@pytest.mark.parametrize("given, field, expected", [
    (dict(checkpoint_callback=False), "enable_checkpointing", False),
    (dict(replace_sampler_ddp=False), "use_distributed_sampler", False),
    (dict(reload_dataloaders_every_epoch=True), "reload_dataloaders_every_n_epochs", 1),
    (dict(progress_bar_refresh_rate=0), "enable_progress_bar", False),
    (dict(progress_bar_refresh_rate=5, enable_progress_bar=True), "progress_bar_refresh_rate", 5),
    (dict(weights_summary=None), "enable_model_summary", False),
    (dict(weights_summary="full"), "summary_depth", -1),
    (dict(weights_summary="top"), "enable_model_summary", True),
    (dict(gpus=0), "devices", None),
    (dict(num_processes=1, accelerator="cpu", devices="auto"), "devices", None),
    (dict(amp_backend="native", amp_level="O2", precision=32), "precision", "32-true"),
])
def test_1x_names_land_on_their_2x_settings(tmp_path: Any, given: Dict[str, Any], field: str, expected: Any) -> None:
    config = _trainer(tmp_path, **{"enable_progress_bar": None, **given}).config
    if field == "devices":  # placement: one DeviceChoice, on one CPU process
        assert (config.placement.accelerator, config.placement.device_ids) == ("cpu", [0])
    else:
        assert getattr(config, field) == expected


@pytest.mark.parametrize("given, names", [
    (dict(checkpoint_callback=False, enable_checkpointing=True), ("checkpoint_callback", "enable_checkpointing")),
    (dict(progress_bar_refresh_rate=0, enable_progress_bar=True), ("progress_bar_refresh_rate", "enable_progress_bar")),
    (dict(weights_summary=None, enable_model_summary=True), ("weights_summary", "enable_model_summary")),
])
def test_a_1x_name_and_its_2x_name_that_disagree_raise_naming_both(tmp_path: Any, given: Dict[str, Any],
                                                                     names: tuple) -> None:
    with pytest.raises(ValueError) as err:
        _trainer(tmp_path, **given)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize("given, error, name", [
    (dict(weights_summary="all"), ValueError, "weights_summary"),
    (dict(progress_bar_refresh_rate=-1), ValueError, "progress_bar_refresh_rate"),
    (dict(reload_dataloaders_every_epoch="yes"), TypeError, "reload_dataloaders_every_epoch"),
    (dict(replace_sampler_ddp=1), TypeError, "replace_sampler_ddp"),
    (dict(auto_scale_batch_size="bisect"), ValueError, "auto_scale_batch_size"),
    (dict(callbacks=[object()]), TypeError, "callbacks"),
    (dict(logger=object()), TypeError, "logger"),
    (dict(resume_from_checkpoint=3), TypeError, "resume_from_checkpoint"),
    (dict(profiler="fancy"), ValueError, "profiler"),
])
def test_a_bad_argument_raises_at_construction_naming_it(tmp_path: Any, given: Dict[str, Any], error: type,
                                                         name: str) -> None:
    with pytest.raises(error, match=name):
        _trainer(tmp_path, **given)


def test_contradicting_determinism_raises_before_changing_torch(tmp_path: Any) -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with pytest.raises(ValueError, match="deterministic"):
        _trainer(tmp_path, deterministic=True, benchmark=True)
    assert torch.are_deterministic_algorithms_enabled() == before


def test_the_jobs_settings_are_in_the_config(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLT_TRAINER", json.dumps({"max_epochs": 3, "devices": 1, "accelerator": "cpu"}))
    config = _trainer(tmp_path, max_epochs=10, num_processes=2, accelerator="ddp_cpu", devices=None).config
    assert config.max_epochs == 3
    assert (config.placement.accelerator, config.placement.num_devices, config.placement.strategy) == ("cpu", 1, "auto")


def test_barebones_and_fast_dev_run_turn_things_off_in_the_config(tmp_path: Any) -> None:
    bare = _trainer(tmp_path, barebones=True, enable_progress_bar=None).config
    assert (bare.logger, bare.enable_checkpointing, bare.enable_progress_bar, bare.enable_model_summary,
            bare.num_sanity_val_steps) == (False, False, False, False, 0)
    fast = _trainer(tmp_path, fast_dev_run=2, logger=True).config
    assert (fast.logger, fast.max_steps, fast.max_epochs, fast.limit_val_batches, fast.num_sanity_val_steps) == (
        False, 2, 1, 2, 0)
