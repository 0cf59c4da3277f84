"""configure_optimizers forms, schedulers (interval/frequency/monitor), manual optimization, 1.x multi-optimizer."""
from __future__ import annotations

from typing import Any, List

import pytest
import torch
from torch import nn

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(60)


def model_returning(fn: Any) -> TinyModel:
    class Model(TinyModel):
        def configure_optimizers(self) -> Any:
            return fn(self)

    return Model()


def sgd(m: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=0.1)


@pytest.mark.parametrize("form", [
    lambda m: sgd(m),
    lambda m: [sgd(m)],
    lambda m: ([sgd(m)], []),
    lambda m: {"optimizer": sgd(m)},
    lambda m: ({"optimizer": sgd(m)},),
])
def test_optimizer_forms(tmp_path: Any, form: Any) -> None:
    model = model_returning(form)
    before = model.layer.weight.detach().clone()
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(model, loader())
    assert trainer.global_step == 2 and len(trainer.optimizers) == 1
    assert not torch.equal(before, model.layer.weight)


def test_scheduler_forms_and_intervals(tmp_path: Any) -> None:
    def step_every_2(m: Any) -> Any:
        opt = sgd(m)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 2}}

    model = model_returning(step_every_2)
    trainer = quiet_trainer(tmp_path, max_steps=6)
    trainer.fit(model, loader())
    cfg = trainer.lr_scheduler_configs[0]
    assert (cfg.interval, cfg.frequency) == ("step", 2)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)

    def epoch_tuple(m: Any) -> Any:
        opt = sgd(m)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]

    model = model_returning(epoch_tuple)
    trainer = quiet_trainer(tmp_path, max_epochs=3, limit_train_batches=2)
    trainer.fit(model, loader())
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert model.lr_schedulers() is trainer.lr_scheduler_configs[0].scheduler


def test_reduce_on_plateau_reads_monitor(tmp_path: Any) -> None:
    class Model(TinyModel):
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("flat", 1.0)

        def configure_optimizers(self) -> Any:
            opt = sgd(self)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5)
            return {"optimizer": opt, "lr_scheduler": sched, "monitor": "flat"}

    trainer = quiet_trainer(tmp_path, max_epochs=3, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(Model(), loader(), loader())
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)

    class Missing(Model):
        def configure_optimizers(self) -> Any:
            opt = sgd(self)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "nope"}}

    with pytest.raises(ValueError, match="'nope', which was not logged"):
        quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1).fit(Missing(), loader(), loader())


def test_manual_optimization(tmp_path: Any) -> None:
    class GAN(TinyModel):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False
            self.other = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt_a, opt_b = self.optimizers()
            sched_a, _ = self.lr_schedulers()
            x, y = batch
            loss_a = nn.functional.mse_loss(self(x), y)
            opt_a.zero_grad()
            self.manual_backward(loss_a)
            self.clip_gradients(opt_a, gradient_clip_val=1.0)
            opt_a.step()
            sched_a.step()
            loss_b = nn.functional.mse_loss(self.other(x), y)
            opt_b.zero_grad()
            self.manual_backward(loss_b)
            opt_b.step()
            self.log_dict({"loss_a": loss_a, "loss_b": loss_b})

        def configure_optimizers(self) -> Any:
            a = torch.optim.SGD(self.layer.parameters(), lr=0.1)
            b = torch.optim.Adam(self.other.parameters(), lr=0.1)
            return [a, b], [torch.optim.lr_scheduler.StepLR(a, 1, 0.5), torch.optim.lr_scheduler.StepLR(b, 1, 0.5)]

    hooks: List[str] = []

    class Watch(GAN):
        def on_before_optimizer_step(self, optimizer: Any) -> None:
            hooks.append("before_step")

        def on_after_backward(self) -> None:
            hooks.append("after_backward")

    model = Watch()
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=3)
    trainer.fit(model, loader())
    assert trainer.global_step == 6  # two optimizer steps per batch
    assert hooks[:4] == ["after_backward", "before_step", "after_backward", "before_step"]
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    assert trainer.optimizers[1].param_groups[0]["lr"] == pytest.approx(0.1)  # user did not step it

    with pytest.raises(RuntimeError, match="manual optimization"):
        TinyModel().manual_backward(torch.tensor(1.0, requires_grad=True))


def test_1x_multiple_optimizers_with_optimizer_idx(tmp_path: Any) -> None:
    seen: List[int] = []

    class Model(TinyModel):
        def __init__(self) -> None:
            super().__init__()
            self.other = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int, optimizer_idx: int) -> torch.Tensor:
            seen.append(optimizer_idx)
            x, y = batch
            net = self.layer if optimizer_idx == 0 else self.other
            return nn.functional.mse_loss(net(x), y)

        def configure_optimizers(self) -> Any:
            return [torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.SGD(self.other.parameters(), lr=0.1)]

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    trainer.fit(Model(), loader())
    assert seen == [0, 1, 0, 1] and trainer.global_step == 4


def test_optimizer_step_override_and_lbfgs(tmp_path: Any) -> None:
    calls: List[int] = []

    class Warmup(TinyModel):
        def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
            for g in optimizer.param_groups:
                g["lr"] = 0.01 * (batch_idx + 1)
            calls.append(batch_idx)
            optimizer.step(closure=optimizer_closure)

    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(Warmup(), loader())
    assert calls == [0, 1, 2] and trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.03)

    class LBFGS(TinyModel):
        def configure_optimizers(self) -> Any:
            return torch.optim.LBFGS(self.parameters(), lr=0.5, max_iter=5)

    model = LBFGS()
    trainer = quiet_trainer(tmp_path, max_steps=3)
    trainer.fit(model, loader(32, batch_size=32))
    assert trainer.callback_metrics["train_loss"] < 5.0


def test_training_step_returning_none_skips(tmp_path: Any) -> None:
    outputs: List[Any] = []
    weights: List[torch.Tensor] = []

    class Skip(TinyModel):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return None if batch_idx % 2 else super().training_step(batch, batch_idx)

        def on_train_batch_end(self, out: Any, batch: Any, batch_idx: int) -> None:
            outputs.append(out)
            weights.append(self.layer.weight.detach().clone())

    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=4)
    trainer.fit(Skip(), loader())
    assert outputs[1] is None and outputs[3] is None and "loss" in outputs[0]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


def test_truncated_bptt_with_hiddens(tmp_path: Any) -> None:
    """Lightning 1.x TBPTT: the batch is split along time; hiddens flow from split to split."""
    received: List[Any] = []

    class RNN(TinyModel):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 3, batch_first=True)
            self.head = nn.Linear(3, 1)

        def training_step(self, batch: Any, batch_idx: int, hiddens: Any) -> Any:
            x, y = batch
            received.append(hiddens)
            out, hiddens = self.lstm(x, hiddens)
            loss = nn.functional.mse_loss(self.head(out), y)
            return {"loss": loss, "hiddens": hiddens}

    seq = [(torch.randn(2, 6, 4), torch.randn(2, 6, 1)) for _ in range(2)]
    trainer = quiet_trainer(tmp_path, max_epochs=1, truncated_bptt_steps=2)
    trainer.fit(RNN(), seq)
    assert trainer.global_step == 6  # 2 batches x 3 splits of length 2
    assert received[0] is None and received[1] is not None and not received[1][0].requires_grad
    assert received[3] is None  # hiddens restart with each batch


def test_estimated_stepping_batches_in_configure_optimizers(tmp_path: Any) -> None:
    """OneCycleLR(total_steps=trainer.estimated_stepping_batches), the common 2.x idiom."""
    requested: List[int] = []

    class Model(TinyModel):
        def train_dataloader(self) -> Any:
            requested.append(1)
            return loader(64)

        def configure_optimizers(self) -> Any:
            opt = sgd(self)
            total = self.trainer.estimated_stepping_batches
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=int(total))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    trainer = quiet_trainer(tmp_path, max_epochs=3, accumulate_grad_batches=2)
    trainer.fit(Model())
    assert trainer.estimated_stepping_batches == 12 == trainer.global_step  # 8 batches / 2 x 3 epochs
    assert requested == [1]  # loaded once, not again by the loop
