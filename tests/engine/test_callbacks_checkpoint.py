"""ModelCheckpoint and OnExceptionCheckpoint through real training runs."""
from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest
import torch

import volt
from volt import checkpoint as ckpt_io
from volt.callbacks import ModelCheckpoint, OnExceptionCheckpoint

from tiny_models import TinyModel, loader, quiet_trainer


@pytest.fixture(autouse=True)
def _no_job_checkpoint_env(monkeypatch):
    monkeypatch.delenv("VOLT_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("VOLT_CHECKPOINT_EVERY_N_STEPS", raising=False)


class ScriptedValLoss(TinyModel):
    """Logs a chosen val_loss per epoch so top-k outcomes are known in advance."""

    def __init__(self, val_losses):
        super().__init__()
        self.val_losses = list(val_losses)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", torch.tensor(self.val_losses[self.current_epoch]))


def _fit(tmp_path, model, callbacks, epochs, **kwargs):
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks, enable_checkpointing=True, **kwargs)
    trainer.fit(model, loader(n=32, batch_size=8), loader(n=16, batch_size=8))
    return trainer


def _ckpts(dirpath):
    return sorted(f for f in os.listdir(dirpath) if f.endswith(".ckpt"))


def test_default_checkpoint_every_epoch_keeps_latest(tmp_path):
    trainer = quiet_trainer(tmp_path, max_epochs=2, enable_checkpointing=True)
    trainer.fit(TinyModel(), loader(n=32, batch_size=8))
    cb = trainer.checkpoint_callback
    assert isinstance(cb, ModelCheckpoint)
    assert cb.dirpath == os.path.realpath(tmp_path / "checkpoints")  # logger=False: default_root_dir/checkpoints
    assert _ckpts(cb.dirpath) == ["epoch=1-step=8.ckpt"]
    assert cb.best_model_path.endswith("epoch=1-step=8.ckpt")
    manifest = ckpt_io.read_manifest(cb.dirpath)
    assert (manifest.checkpoint, manifest.step, manifest.epoch) == ("epoch=1-step=8.ckpt", 8, 1)
    ckpt = ckpt_io.load(cb.best_model_path)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "callbacks", "loops", "epoch", "global_step"):
        assert key in ckpt
    assert ckpt["global_step"] == 8 and ckpt["epoch"] == 1
    assert any(k.startswith("ModelCheckpoint") for k in ckpt["callbacks"])


def test_dirpath_follows_the_logger(tmp_path):
    from volt.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="exp")
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True, logger=logger)
    trainer.fit(TinyModel(), loader(n=16, batch_size=8))
    assert trainer.checkpoint_callback.dirpath == os.path.realpath(tmp_path / "exp" / "version_0" / "checkpoints")


def test_top_k_by_monitor_min_and_last(tmp_path):
    losses = [0.5, 0.3, 0.4, 0.1, 0.2]
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=2, save_last=True,
                         filename="{epoch}-{val_loss:.2f}")
    _fit(tmp_path, ScriptedValLoss(losses), [cb], epochs=5)
    # 0.3 (epoch 1) was in the top 2 until 0.2 (epoch 4) arrived.
    assert _ckpts(cb.dirpath) == ["epoch=3-val_loss=0.10.ckpt", "epoch=4-val_loss=0.20.ckpt", "last.ckpt"]
    assert cb.best_model_path.endswith("epoch=3-val_loss=0.10.ckpt")
    assert cb.best_model_score.item() == pytest.approx(0.1)
    assert cb.kth_best_model_path.endswith("epoch=4-val_loss=0.20.ckpt")
    assert cb.kth_value.item() == pytest.approx(0.2)
    assert sorted(os.path.basename(p) for p in cb.best_k_models) == ["epoch=3-val_loss=0.10.ckpt", "epoch=4-val_loss=0.20.ckpt"]
    assert cb.last_model_path.endswith("last.ckpt")
    assert ckpt_io.load(cb.last_model_path)["epoch"] == 4
    assert ckpt_io.latest_checkpoint(cb.dirpath) == cb.last_model_path


def test_top_k_mode_max_all_and_none(tmp_path):
    losses = [0.5, 0.3, 0.4]
    best = ModelCheckpoint(dirpath=tmp_path / "max", monitor="val_loss", mode="max", filename="{epoch}")
    keep_all = ModelCheckpoint(dirpath=tmp_path / "all", monitor="val_loss", save_top_k=-1, filename="{epoch}")
    none = ModelCheckpoint(dirpath=tmp_path / "none", save_top_k=0, save_last=True)
    _fit(tmp_path, ScriptedValLoss(losses), [best, keep_all, none], epochs=3)
    assert _ckpts(best.dirpath) == ["epoch=0.ckpt"]
    assert _ckpts(keep_all.dirpath) == ["epoch=0.ckpt", "epoch=1.ckpt", "epoch=2.ckpt"]
    assert keep_all.best_model_path.endswith("epoch=1.ckpt")
    assert _ckpts(none.dirpath) == ["last.ckpt"] and none.best_model_path == ""


def test_every_n_train_steps_and_weights_only(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=3, save_top_k=-1, filename="{step}",
                         auto_insert_metric_name=False)
    weights = ModelCheckpoint(dirpath=tmp_path / "w", every_n_train_steps=5, save_weights_only=True)
    _fit(tmp_path, TinyModel(), [cb, weights], epochs=2)  # 4 batches x 2 epochs = 8 steps
    assert _ckpts(cb.dirpath) == ["3.ckpt", "6.ckpt"]
    assert ckpt_io.read_manifest(cb.dirpath).step == 6
    w = ckpt_io.load(weights.best_model_path)
    assert "state_dict" in w and "optimizer_states" not in w
    assert ckpt_io.read_manifest(weights.dirpath) is None  # not resumable: never "latest"


def test_every_n_epochs(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_epochs=2, save_top_k=-1)
    _fit(tmp_path, TinyModel(), [cb], epochs=5)
    assert _ckpts(cb.dirpath) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt"]


def test_train_time_interval(tmp_path):
    # Deterministic ends of the range: an interval shorter than any step saves
    # at every step, one longer than the run never does.
    every = ModelCheckpoint(dirpath=tmp_path / "every", train_time_interval=timedelta(microseconds=1),
                            save_top_k=-1, filename="{step}")
    never = ModelCheckpoint(dirpath=tmp_path / "never", train_time_interval=timedelta(hours=1), save_last=True)
    _fit(tmp_path, TinyModel(), [every, never], epochs=1)
    assert _ckpts(every.dirpath) == [f"step={s}.ckpt" for s in (1, 2, 3, 4)]
    assert not os.path.exists(never.dirpath) or _ckpts(never.dirpath) == []


def test_version_counter_and_env_dir(tmp_path, monkeypatch):
    job_dir = tmp_path / "job"
    monkeypatch.setenv("VOLT_CHECKPOINT_DIR", str(job_dir))
    cb = ModelCheckpoint(dirpath=tmp_path / "ignored", filename="fixed", save_top_k=-1)
    _fit(tmp_path, TinyModel(), [cb], epochs=2)
    assert cb.dirpath == os.path.realpath(job_dir)
    assert _ckpts(job_dir) == ["fixed-v1.ckpt", "fixed.ckpt"]
    assert not (tmp_path / "ignored").exists()


def test_env_every_n_steps_applies_to_a_trigger_free_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLT_CHECKPOINT_EVERY_N_STEPS", "2")
    cb = ModelCheckpoint(dirpath=tmp_path / "ck")
    assert cb.every_n_train_steps == 2 and cb.every_n_epochs == 0
    explicit = ModelCheckpoint(dirpath=tmp_path / "ck", every_n_epochs=1)
    assert explicit.every_n_train_steps == 0
    monkeypatch.setenv("VOLT_CHECKPOINT_EVERY_N_STEPS", "zero")
    with pytest.raises(ValueError, match="VOLT_CHECKPOINT_EVERY_N_STEPS"):
        ModelCheckpoint()


def test_missing_monitor_raises_after_validation(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="not_logged")
    with pytest.raises(KeyError, match="not_logged"):
        _fit(tmp_path, TinyModel(), [cb], epochs=1)


def test_resume_keeps_top_k_state(tmp_path):
    losses = [0.5, 0.3, 0.4, 0.2]
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=2, save_last=True)
    _fit(tmp_path, ScriptedValLoss(losses), [cb], epochs=2)
    cb2 = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val_loss", save_top_k=2, save_last=True)
    trainer = quiet_trainer(tmp_path, max_epochs=4, callbacks=[cb2], enable_checkpointing=True)
    trainer.fit(ScriptedValLoss(losses), loader(n=32, batch_size=8), loader(n=16, batch_size=8), ckpt_path="last")
    # Epoch 0 (0.5) was evicted by epoch 3 (0.2): the restored top-k took part in the ranking.
    assert _ckpts(cb2.dirpath) == ["epoch=1-step=8.ckpt", "epoch=3-step=16.ckpt", "last.ckpt"]
    assert cb2.best_model_score.item() == pytest.approx(0.2)
    assert cb2.last_model_path.endswith("last.ckpt")  # overwritten, not last-v1.ckpt


def test_invalid_arguments():
    with pytest.raises(ValueError, match="save_top_k"):
        ModelCheckpoint(save_top_k=-2)
    with pytest.raises(ValueError, match="monitor=None"):
        ModelCheckpoint(save_top_k=3)
    with pytest.raises(ValueError, match="mode"):
        ModelCheckpoint(monitor="x", mode="best")
    with pytest.raises(ValueError, match="mutually exclusive"):
        ModelCheckpoint(every_n_epochs=1, every_n_train_steps=5)
    with pytest.raises(TypeError, match="train_time_interval"):
        ModelCheckpoint(train_time_interval=10)
    with pytest.raises(ValueError, match="every_n_epochs"):
        ModelCheckpoint(every_n_epochs=-1)


def test_format_checkpoint_name():
    fmt = ModelCheckpoint._format_checkpoint_name
    assert fmt(None, {"epoch": 3, "step": 40}) == "epoch=3-step=40"
    assert fmt("{epoch:02d}-{val_loss:.2f}", {"epoch": 3, "val_loss": torch.tensor(0.1234)}) == "epoch=03-val_loss=0.12"
    assert fmt("{epoch}-{val/acc:.2f}", {"epoch": 1, "val/acc": 0.25}, auto_insert_metric_name=False) == "1-0.25"
    assert fmt("{missing}", {}) == "missing=0"
    assert fmt("{val}-{val_loss}", {"val": 1, "val_loss": 2}) == "val=1-val_loss=2"
    assert fmt("e{epoch}", {"epoch": 2}, prefix="run") == "run-eepoch=2"


class Boom(TinyModel):
    def training_step(self, batch, batch_idx):
        if self.global_step == 5:
            raise RuntimeError("boom at step 5")
        return super().training_step(batch, batch_idx)


def test_on_exception_checkpoint(tmp_path):
    cb = OnExceptionCheckpoint(dirpath=tmp_path / "exc")
    # A Checkpoint callback, as in Lightning: it needs checkpointing on, and takes the default
    # ModelCheckpoint's place.
    with pytest.raises(ValueError, match=r"enable_checkpointing=False.*\(OnExceptionCheckpoint\)"):
        quiet_trainer(tmp_path, callbacks=[cb])
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[cb], enable_checkpointing=True)
    assert trainer.checkpoint_callbacks == [cb]
    with pytest.raises(RuntimeError, match="boom at step 5"):
        trainer.fit(Boom(), loader(n=32, batch_size=8))
    ckpt = ckpt_io.load(cb.ckpt_path)
    assert ckpt["global_step"] == 5 and "optimizer_states" in ckpt
    assert ckpt_io.resolve_ckpt_path("last", cb.dirpath) == cb.ckpt_path
    with pytest.raises(ValueError, match="filename"):
        OnExceptionCheckpoint(tmp_path, filename="")


def test_save_last_link_points_at_the_newest_checkpoint(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", save_last="link", save_top_k=-1, every_n_epochs=1)
    _fit(tmp_path, TinyModel(), [cb], epochs=2)
    last = os.path.join(cb.dirpath, "last.ckpt")
    assert os.path.islink(last) and os.readlink(last) == "epoch=1-step=8.ckpt"  # relative: survives a remount
    assert ckpt_io.load(last)["global_step"] == 8


def test_period_is_the_1x_name_of_every_n_epochs(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", period=2)
    assert cb.every_n_epochs == 2
    with pytest.raises(ValueError, match="period"):
        ModelCheckpoint(period=2, every_n_epochs=1)


def test_weights_save_path_1x(tmp_path):
    from volt.loggers import CSVLogger

    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=True, weights_save_path=str(tmp_path / "w"),
                            logger=CSVLogger(tmp_path / "logs"))
    trainer.fit(TinyModel(), loader(n=16, batch_size=8))
    expected = tmp_path / "w" / "lightning_logs" / "version_0" / "checkpoints"
    assert trainer.checkpoint_callback.dirpath == os.path.realpath(expected)
    assert _ckpts(expected) == ["epoch=0-step=2.ckpt"]


def test_stale_temp_files_are_swept_at_fit_start(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / ".epoch=0-step=2.ckpt.abc123.tmp").write_bytes(b"half a checkpoint")
    cb = ModelCheckpoint(dirpath=d)
    _fit(tmp_path, TinyModel(), [cb], epochs=1)
    assert sorted(os.listdir(d)) == ["epoch=0-step=4.ckpt", "latest.json"]


def test_model_checkpoint_save_on_exception(tmp_path):
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", save_on_exception=True)
    with pytest.raises(RuntimeError, match="boom at step 5"):
        _fit(tmp_path, Boom(), [cb], epochs=3)
    path = tmp_path / "ck" / "epoch=1-step=5-exception.ckpt"
    assert ckpt_io.load(path)["global_step"] == 5
    assert ckpt_io.latest_checkpoint(cb.dirpath) == str(path)
    # Off by default.
    cb2 = ModelCheckpoint(dirpath=tmp_path / "ck2")
    with pytest.raises(RuntimeError):
        _fit(tmp_path, Boom(), [cb2], epochs=3)
    assert not [f for f in os.listdir(tmp_path / "ck2") if "exception" in f]
