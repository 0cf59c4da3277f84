"""DDP training on IterableDatasets whose ranks yield different numbers of batches.

Each case below trains a fresh Trainer (2+ ranks under volt-run); rank r's stream
yields ``lengths[r]`` batches of 4 samples per epoch, split by rank the way the
sharding warning tells users to. Every rank writes what it ran to
``$OUT_DIR/<case>-rank<r>.json``.
"""
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from volt import LightningModule, Trainer, seed_everything

BATCH = 4


class RankStream(IterableDataset):
    """Rank r yields ``lengths[r] * BATCH`` samples, different ones on every rank."""

    def __init__(self, lengths, features=3):
        self.lengths = lengths
        self.features = features

    def __iter__(self):
        rank = dist.get_rank() if dist.is_initialized() else 0
        g = torch.Generator().manual_seed(1000 + rank)
        for _ in range(self.lengths[rank] * BATCH):
            x = torch.randn(self.features, generator=g)
            yield x, x.sum(0, keepdim=True)


class Counting(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.batches_per_epoch = {}

    def training_step(self, batch, batch_idx):
        epoch = self.trainer.current_epoch
        self.batches_per_epoch[epoch] = self.batches_per_epoch.get(epoch, 0) + 1
        x, y = batch
        return nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def run(case, lengths, max_epochs):
    seed_everything(0)
    model = Counting()
    trainer = Trainer(strategy="ddp", accelerator="cpu", devices=len(lengths), max_epochs=max_epochs,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(model, DataLoader(RankStream(lengths), batch_size=BATCH))
    out = {
        "global_step": trainer.global_step,
        "batches_per_epoch": [model.batches_per_epoch.get(e, 0) for e in range(max_epochs)],
        "weight": [float(v) for v in torch.cat([p.detach().flatten() for p in model.parameters()])],
    }
    with open(os.path.join(os.environ["OUT_DIR"], f"{case}-rank{trainer.global_rank}.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    # uneven, and the shortest (13) is not a multiple of the agreement window (4)
    run("uneven", [13, 21], max_epochs=2)
    # a difference inside the last window: the window after 8 holds 0 and 1 batches
    run("one_more", [8, 9], max_epochs=1)
    # equal streams: every batch is used and nothing is reported
    run("even", [6, 6], max_epochs=1)
    sys.exit(0)
