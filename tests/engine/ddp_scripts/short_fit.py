"""A few DDP steps, then exit at once: the shortest path from the last collective to interpreter shutdown.

    python short_fit.py <out_dir>

Each rank writes ``<out_dir>/threads-rank<k>.json`` from an exit handler that runs
after volt's: the scheduler state of its gloo collective threads at that moment.
"""
import atexit
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import volt
from volt.strategies import ddp


class Regression(volt.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def record_threads() -> None:  # registered before fit(): runs after volt's exit handler
    rank = os.environ["RANK"]
    with open(os.path.join(sys.argv[1], f"threads-rank{rank}.json"), "w") as handle:
        json.dump(ddp._collective_thread_states(), handle)


atexit.register(record_threads)
data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
trainer = volt.Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                       enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Regression(), DataLoader(data, batch_size=8))
