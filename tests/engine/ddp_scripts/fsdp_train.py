"""Train the synthetic regression model under DDP or FSDP; rank 0 writes the full final weights.

Usage (under volt-run): fsdp_train.py STRATEGY OUT [--clip C] [--max-epochs N] [--ckpt-dir D] [--ckpt-path P]
STRATEGY: ddp | fsdp (FSDPStrategy with every nn.Linear its own unit) | fsdp-name (strategy="fsdp").
"""
import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader

from volt import Trainer, seed_everything
from volt.callbacks import ModelCheckpoint
from volt.examples.synthetic import RegressionModel, SyntheticRegression
from volt.strategies.fsdp import FSDPStrategy

parser = argparse.ArgumentParser()
parser.add_argument("strategy", choices=["ddp", "fsdp", "fsdp-name"])
parser.add_argument("out")
parser.add_argument("--clip", type=float, default=0.0)
parser.add_argument("--max-epochs", type=int, default=3)
parser.add_argument("--ckpt-dir", default=None)
parser.add_argument("--ckpt-path", default=None)
args = parser.parse_args()

seed_everything(0)
model = RegressionModel(16, 32, 0.05)
loader = DataLoader(SyntheticRegression(256, 16, 0), batch_size=32, shuffle=True)
strategy = {"ddp": "ddp", "fsdp-name": "fsdp", "fsdp": FSDPStrategy(auto_wrap_policy={nn.Linear})}[args.strategy]
callbacks = [ModelCheckpoint(dirpath=args.ckpt_dir, save_last=True)] if args.ckpt_dir else []
trainer = Trainer(
    accelerator="cpu", devices=2, strategy=strategy, max_epochs=args.max_epochs, logger=False,
    enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=callbacks,
    gradient_clip_val=args.clip or None, num_sanity_val_steps=0,
)
trainer.fit(model, loader, ckpt_path=args.ckpt_path)
weights = trainer.strategy.lightning_module_state_dict()  # every rank: FSDP gathers the shards
if trainer.is_global_zero:
    print(f"done: strategy={type(trainer.strategy).__name__} epoch={trainer.current_epoch} step={trainer.global_step}",
          flush=True)
    torch.save({k: v.detach().cpu() for k, v in weights.items()}, args.out)
