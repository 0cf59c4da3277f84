"""Fit a tiny model with ``Trainer(**json.loads(argv[1]))`` and print the world it trained in.

``{"strategy": {"DDPStrategy": {...}}}`` stands for a ``DDPStrategy(...)`` instance.
"""
import json
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, TensorDataset

import volt
from volt.strategies.ddp import DDPStrategy


class Regression(volt.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    kwargs = json.loads(sys.argv[1])
    if isinstance(kwargs.get("strategy"), dict):
        kwargs["strategy"] = DDPStrategy(**kwargs["strategy"]["DDPStrategy"])
    trainer = volt.Trainer(**kwargs, max_steps=10, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    trainer.fit(Regression(), DataLoader(data, batch_size=4))
    processes = dist.get_world_size() if dist.is_initialized() else 1
    print(f"trained: rank={trainer.global_rank} processes={processes} world_size={trainer.world_size} "
          f"devices={trainer.num_devices} num_nodes={trainer.num_nodes} accelerator={trainer.accelerator} "
          f"strategy={type(trainer.strategy).__name__} steps={trainer.global_step}", flush=True)
