"""The training hot path does no host sync of its own: no .item()/.tolist()/float() between logging points."""
from __future__ import annotations

from typing import Any, List

import pytest
import torch

import volt

from conftest import TinyModel, loader, quiet_trainer

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
