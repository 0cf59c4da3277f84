"""One LightningCLI script, two engines: ``python cli_diff_script.py volt|lightning OUT.json CLI-ARGS...``.

Only the imports depend on the engine. The CLI parses CLI-ARGS (a subcommand, ``--config``, overrides,
``--print_config``); the script records what it built and what the fit did into OUT.json.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Dict

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ENGINE, OUT, ARGS = sys.argv[1], sys.argv[2], sys.argv[3:]
if ENGINE == "lightning":
    import warnings

    import lightning.pytorch as pl
    from lightning.pytorch.cli import LightningCLI

    warnings.filterwarnings("ignore")
else:
    import volt as pl
    from volt.cli import LightningCLI

torch.set_num_threads(1)


class Regressor(pl.LightningModule):
    """A small regression net; its arguments become --model.* options."""

    def __init__(self, hidden: int = 8, activation: str = "tanh") -> None:
        super().__init__()
        self.save_hyperparameters()
        act = nn.Tanh() if activation == "tanh" else nn.ReLU()
        self.net = nn.Sequential(nn.Linear(4, hidden), act, nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))


class Data(pl.LightningDataModule):
    """Fixed random regression data; --data.* options."""

    def __init__(self, batch_size: int = 8, samples: int = 32) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(samples, 4, generator=g)
        self.data = TensorDataset(x, x.sum(dim=1, keepdim=True))
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size)


def main() -> None:
    cli = LightningCLI(Regressor, Data, args=ARGS, save_config_kwargs={"overwrite": True})
    t = cli.trainer
    out: Dict[str, Any] = {
        "subcommand": cli.subcommand,
        "global_step": t.global_step,
        "max_epochs": t.max_epochs,
        "hparams": dict(cli.model.hparams),
        "batch_size": cli.datamodule.batch_size,
        "optimizer": type(t.optimizers[0]).__name__ if t.optimizers else None,
        "lr": [g["lr"] for g in t.optimizers[0].param_groups] if t.optimizers else None,
        "callbacks": sorted({type(c).__name__ for c in t.callbacks} & {"EarlyStopping", "SaveConfigCallback"}),
        "callback_metrics": {k: float(v) for k, v in sorted(t.callback_metrics.items())},
        "weights": {k: v.flatten().tolist() for k, v in cli.model.state_dict().items()},
        "seed": cli.config[cli.subcommand]["seed_everything"] if cli.subcommand else cli.config["seed_everything"],
    }
    with open(OUT, "w") as fh:
        json.dump(out, fh)


if __name__ == "__main__":
    main()
