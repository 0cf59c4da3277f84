"""The training hot path does no host sync of its own: no .item()/.tolist()/float() between logging points."""
from __future__ import annotations

from typing import Any, List

import pytest
import torch

import volt

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(60)


class SyncCounter(volt.Callback):
    """Counts tensor-to-Python conversions from the first training batch to the end of the epoch.

    (Creating the DataLoader iterator calls .item() once on torch's side; that is before batch 0.)
    """

    def __init__(self) -> None:
        self.calls: List[str] = []
        self._originals: Any = None

    def _wrap(self, name: str) -> Any:
        original = getattr(torch.Tensor, name)
        calls = self.calls

        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(tensor, *args, **kwargs)

        return original, counted

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._originals is not None:
            return
        self._originals = {}
        for name in ("item", "tolist", "__float__", "__bool__"):
            original, counted = self._wrap(name)
            self._originals[name] = original
            setattr(torch.Tensor, name, counted)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.restore()

    def restore(self) -> None:
        for name, original in (self._originals or {}).items():
            setattr(torch.Tensor, name, original)
        self._originals = None


class Logging(TinyModel):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        self.log("step_and_epoch", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log_dict({"a": loss * 2, "b": 3.0})
        return loss


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_no_host_sync_between_logging_points(tmp_path: Any, precision: str) -> None:
    counter = SyncCounter()
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=1000, callbacks=[counter], precision=precision,
                            accumulate_grad_batches=2, gradient_clip_val=1.0)
    try:
        trainer.fit(Logging(), loader(160))  # 20 batches, 10 optimizer steps
    finally:
        counter.restore()
    assert trainer.global_step == 10
    assert counter.calls == []


def test_logging_point_converts_once(tmp_path: Any) -> None:
    """At a logging point all values reach the loggers with one transfer, not one .item() per value."""
    from volt.loggers import CSVLogger

    counter = SyncCounter()
    trainer = quiet_trainer(tmp_path, max_epochs=1, log_every_n_steps=5, callbacks=[counter],
                            logger=CSVLogger(str(tmp_path)))
    try:
        trainer.fit(Logging(), loader(80))  # 10 batches: logging points after batches 5 and 10
    finally:
        counter.restore()
    assert counter.calls.count("item") == 0
    assert counter.calls.count("tolist") == 2


# --- the one-frame batch path (fit_loop._run_simple_batch) ---------------------------------------
class Recorder(volt.Callback):
    """Records what on_train_batch_end sees (a read of outputs: a host sync, fine in this test)."""

    def __init__(self) -> None:
        self.seen: List[Any] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = None if outputs is None else (float(outputs["loss"]), outputs["extra"])
        self.seen.append((batch_idx, trainer.global_step, trainer.is_last_batch, loss))


class GeneralPath(Recorder):
    """Overriding on_before_zero_grad (as a no-op) makes the loop take the general path."""

    def on_before_zero_grad(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        pass


class EpochLogging(TinyModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        self.log("mean_loss", loss, on_step=False, on_epoch=True)
        return None if batch_idx == 3 else {"loss": loss, "extra": batch_idx}  # batch 3: skipped


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_simple_and_general_batch_paths_train_identically(tmp_path: Any, precision: str) -> None:
    from volt.loggers import CSVLogger

    results = []
    for recorder in (Recorder(), GeneralPath()):
        volt.seed_everything(0)
        trainer = quiet_trainer(tmp_path, max_epochs=2, precision=precision, callbacks=[recorder],
                                logger=CSVLogger(str(tmp_path), name=type(recorder).__name__), log_every_n_steps=3)
        model = EpochLogging()
        trainer.fit(model, loader(64, shuffle=True))
        results.append((trainer, model, recorder))
    (simple, m1, r1), (general, m2, r2) = results
    assert simple.run_state.hot.simple and not general.run_state.hot.simple
    assert simple.global_step == general.global_step == 16
    assert r1.seen == r2.seen and len(r1.seen) == 16
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert simple.logged_metrics.keys() == general.logged_metrics.keys()
    for name, value in simple.logged_metrics.items():
        assert torch.equal(value, general.logged_metrics[name]), name
    assert simple.callback_metrics.keys() == general.callback_metrics.keys()


class SwitchesAccumulation(volt.Callback):
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 1:
            trainer.accumulate_grad_batches = 4


def test_a_callback_changing_accumulation_between_epochs_leaves_the_simple_path(tmp_path: Any) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[SwitchesAccumulation()])
    trainer.fit(TinyModel(), loader(64))  # 8 batches: 8 steps, then 2
    assert trainer.run_state.hot.simple
    assert trainer.global_step == 8 + 2
