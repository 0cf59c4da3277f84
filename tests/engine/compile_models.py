"""The models, data and helpers of the compiled-step tests (test_compile.py on CPU, test_compile_cuda.py on a GPU).

Tolerance: compiled graphs may reorder float reductions, so weights agree to
``rtol=1e-4, atol=1e-5`` in fp32 and ``rtol=2e-2, atol=2e-3`` under bf16-mixed (bf16 keeps
8 bits of mantissa).
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import volt

AOT = {"backend": "aot_eager"}
FP32_TOL = dict(rtol=1e-4, atol=1e-5)
BF16_TOL = dict(rtol=2e-2, atol=2e-3)


def make_data(n: int, shape: tuple, classes: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


class Classifier(volt.LightningModule):
    """A tiny MLP or a 1-layer transformer encoder; logs its loss and a second metric every step."""

    def __init__(self, kind: str = "mlp") -> None:
        super().__init__()
        torch.manual_seed(0)
        if kind == "mlp":
            self.net: nn.Module = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        else:
            layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
            self.net = nn.Sequential(nn.TransformerEncoder(layer, 1, enable_nested_tensor=False), MeanPool(),
                                     nn.Linear(8, 4))

    def training_step(self, batch: Any, batch_idx: int) -> Dict[str, torch.Tensor]:
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("logit_mean", logits.float().mean(), on_step=False, on_epoch=True)
        return {"loss": loss}

    def configure_optimizers(self) -> Any:
        # SGD with momentum, not Adam: Adam's normalised update turns the last-bit differences of a
        # gradient near zero into lr-sized weight differences, which no tolerance separates from a bug
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class MeanPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class LossHistory(volt.Callback):
    """Reads what each step logged and returned, as a metrics-consuming callback does."""

    def __init__(self) -> None:
        self.losses: List[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(trainer.callback_metrics["train_loss"]))


def fit(tmp_path: Any, name: str, compile: Any, kind: str = "mlp", steps_data: int = 48, **kwargs: Any) -> Any:
    shape = (8,) if kind == "mlp" else (6, 8)
    model = Classifier(kind)
    history = LossHistory()
    trainer = volt.Trainer(max_epochs=kwargs.pop("max_epochs", 2), logger=volt.loggers.CSVLogger(str(tmp_path), name=name),
                           enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                           num_sanity_val_steps=0, default_root_dir=str(tmp_path), callbacks=[history],
                           log_every_n_steps=1, compile=compile, **kwargs)
    trainer.fit(model, make_data(steps_data, shape))
    return model, trainer, history


def assert_same_weights(a: nn.Module, b: nn.Module, tol: Dict[str, float]) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, msg=lambda m: f"{name}: {m}", **tol)


def bare_trainer(compile: Any, max_epochs: int = 1, **settings: Any) -> volt.Trainer:
    """A Trainer with no logger, checkpoints, progress bar or summary: only the step under test."""
    return volt.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, compile=compile, **settings)
