"""Checkpoint dict keys, save_checkpoint, resume (ckpt_path, resume_from_checkpoint), load_from_checkpoint."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import pytest
import torch

import volt
from volt.callbacks.base import Callback

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(90)


class Stateful(Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.count += 1

    def state_dict(self) -> Dict[str, Any]:
        return {"count": self.count}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.count = state["count"]


def scheduled() -> TinyModel:
    class Model(TinyModel):
        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=0.01)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1, 0.9)]

    torch.manual_seed(0)
    return Model()


def test_checkpoint_has_lightning_keys(tmp_path: Any) -> None:
    model = scheduled()
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[Stateful()])
    trainer.fit(model, loader())
    path = str(tmp_path / "manual.ckpt")
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=False)
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "callbacks", "loops", "hyper_parameters",
                "epoch", "global_step", "volt_version"):
        assert key in ckpt, key
    assert ckpt["global_step"] == 4 and ckpt["callbacks"]["Stateful"] == {"count": 4}
    assert ckpt["hyper_parameters"] == {"dim": 4, "lr": 0.05}
    assert ckpt["loops"]["fit_loop"]["global_step"] == 4
    trainer.save_checkpoint(str(tmp_path / "weights.ckpt"), weights_only=True)
    light = torch.load(str(tmp_path / "weights.ckpt"), weights_only=False)
    assert "optimizer_states" not in light and "state_dict" in light


def test_resume_at_epoch_boundary_matches_uninterrupted(tmp_path: Any) -> None:
    full = scheduled()
    t_full = quiet_trainer(tmp_path, max_epochs=4, limit_train_batches=3)
    t_full.fit(full, loader())

    first = scheduled()
    cb = Stateful()
    t1 = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=3, callbacks=[cb])
    t1.fit(first, loader())
    path = str(tmp_path / "epoch2.ckpt")
    t1.save_checkpoint(path)

    resumed = scheduled()  # fresh weights: everything must come from the checkpoint
    cb2 = Stateful()
    t2 = quiet_trainer(tmp_path, max_epochs=4, limit_train_batches=3, callbacks=[cb2])
    t2.fit(resumed, loader(), ckpt_path=path)
    assert t2.global_step == 12 and t2.current_epoch == 4 and cb2.count == 12
    for p, q in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(p, q)
    assert t2.optimizers[0].param_groups[0]["lr"] == pytest.approx(t_full.optimizers[0].param_groups[0]["lr"])

    # the 1.x spelling
    again = scheduled()
    t3 = volt.Trainer(max_epochs=4, limit_train_batches=3, resume_from_checkpoint=path, logger=False,
                      enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False)
    t3.fit(again, loader())
    for p, q in zip(full.parameters(), again.parameters()):
        torch.testing.assert_close(p, q)


def test_resume_mid_epoch_continues_after_done_batches(tmp_path: Any) -> None:
    seen: List[int] = []

    class Model(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(batch_idx)
            return super().training_step(batch, batch_idx)

    t1 = quiet_trainer(tmp_path, max_steps=3)
    t1.fit(Model(), loader())
    path = str(tmp_path / "mid.ckpt")
    t1.save_checkpoint(path)
    seen.clear()
    t2 = quiet_trainer(tmp_path, max_epochs=1)
    t2.fit(Model(), loader(), ckpt_path=path)
    assert seen == [3, 4, 5, 6, 7] and t2.global_step == 8


def test_model_checkpoint_default_and_best_and_last(tmp_path: Any) -> None:
    from volt.callbacks import ModelCheckpoint

    ckpt_cb = ModelCheckpoint(dirpath=str(tmp_path / "ckpts"), monitor="val_loss", save_last=True)
    trainer = volt.Trainer(default_root_dir=str(tmp_path), max_epochs=2, limit_train_batches=2, logger=False,
                           callbacks=[ckpt_cb], enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(TinyModel(), loader(), loader())
    assert os.path.isfile(ckpt_cb.best_model_path)
    res = trainer.test(dataloaders=loader(), verbose=False)  # ckpt_path None after fit -> "best"
    assert trainer.ckpt_path == ckpt_cb.best_model_path and "test_loss" in res[0]
    model = TinyModel.load_from_checkpoint(ckpt_cb.best_model_path)
    assert model.hparams.lr == 0.05
    t2 = volt.Trainer(default_root_dir=str(tmp_path), max_epochs=3, limit_train_batches=2, logger=False,
                      callbacks=[ModelCheckpoint(dirpath=str(tmp_path / "ckpts"), save_last=True)],
                      enable_progress_bar=False, enable_model_summary=False)
    t2.fit(TinyModel(), loader(), ckpt_path="last")
    assert t2.global_step == 6


def test_ckpt_path_last_without_checkpoint_starts_fresh(tmp_path: Any) -> None:
    trainer = volt.Trainer(default_root_dir=str(tmp_path), max_steps=2, logger=False, enable_progress_bar=False,
                           enable_model_summary=False)
    trainer.fit(TinyModel(), loader(), ckpt_path="last")
    assert trainer.global_step == 2


def test_hooks_on_save_and_load_checkpoint(tmp_path: Any) -> None:
    class Model(TinyModel):
        def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
            checkpoint["extra"] = 42

        def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
            self.loaded_extra = checkpoint["extra"]

    t = quiet_trainer(tmp_path, max_steps=1)
    t.fit(Model(), loader())
    t.save_checkpoint(str(tmp_path / "x.ckpt"))
    m = Model()
    quiet_trainer(tmp_path, max_steps=2).fit(m, loader(), ckpt_path=str(tmp_path / "x.ckpt"))
    assert m.loaded_extra == 42


def test_module_copies_and_pickles_without_its_trainer(tmp_path: Any) -> None:
    import copy
    import io

    model = TinyModel()
    quiet_trainer(tmp_path, max_steps=1).fit(model, loader())
    assert model._trainer is not None
    clone = copy.deepcopy(model)
    assert clone._trainer is None and model._trainer is not None
    torch.testing.assert_close(clone.layer.weight, model.layer.weight)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False)._trainer is None
