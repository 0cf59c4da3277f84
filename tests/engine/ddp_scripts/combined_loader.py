"""DDP training and validation on CombinedLoaders: every inner DataLoader is sharded by rank.

Training combines two loaders (max_size_cycle), validation runs two in turn (sequential). Every rank
writes the sample indices each loader gave it to ``$OUT_DIR/rank<r>.json``.
"""
import json
import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from volt import LightningModule, Trainer, seed_everything
from volt.utilities import CombinedLoader


def indexed(n):
    """Samples ``(x, index)`` so a rank can report which ones it got."""
    return TensorDataset(torch.randn(n, 3), torch.arange(n))


class Recording(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 1)
        self.seen = {"a": [], "b": [], "val0": [], "val1": []}

    def training_step(self, batch, batch_idx):
        if self.trainer.current_epoch == 0:
            for key in ("a", "b"):
                self.seen[key] += batch[key][1].tolist()
        return sum(self.layer(batch[key][0]).pow(2).mean() for key in ("a", "b"))

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if not self.trainer.sanity_checking and self.trainer.current_epoch == 0:
            self.seen[f"val{dataloader_idx}"] += batch[1].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


if __name__ == "__main__":
    seed_everything(0)
    model = Recording()
    trainer = Trainer(strategy="ddp", accelerator="cpu", devices=2, max_epochs=2, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    train = CombinedLoader({"a": DataLoader(indexed(16), batch_size=2), "b": DataLoader(indexed(8), batch_size=2)},
                           "max_size_cycle")
    val = CombinedLoader([DataLoader(indexed(6), batch_size=3), DataLoader(indexed(4), batch_size=2)], "sequential")
    trainer.fit(model, train, val)
    out = {"global_step": trainer.global_step, "num_training_batches": trainer.num_training_batches, **model.seen}
    with open(os.path.join(os.environ["OUT_DIR"], f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump(out, f)
    sys.exit(0)
