"""Train the synthetic model, recording every sample index each rank trains on, per epoch.

Usage (under volt-run): resize_train.py OUT_DIR STRATEGY [--max-epochs N] [--max-steps S] [--ckpt-dir D] [--ckpt-path P]
    [--sharded] [--block-commit-at-step S] [--samples N] [--batch-size B] [--drop-last] [--every-n-steps K]
STRATEGY: ddp | fsdp. --sharded: DDP writes sharded checkpoints (ShardedCheckpointIO(async_save=True)).
--block-commit-at-step S: the async save of step S writes its shards, then never commits (rank 0
touches OUT_DIR/blocked first), so a test can kill the job inside an async save.
Writes OUT_DIR/seen-e<epoch>-r<rank>-w<world>.txt and, on rank 0, OUT_DIR/loss-e<epoch>-w<world>.txt.
"""
import argparse
import os
import threading
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from volt import Trainer, checkpoint_sharded, seed_everything
from volt.callbacks import ModelCheckpoint
from volt.checkpoint_sharded import ShardedCheckpointIO
from volt.cluster import cluster_environment
from volt.examples.synthetic import RegressionModel, SyntheticRegression

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("strategy", choices=["ddp", "fsdp"])
parser.add_argument("--max-epochs", type=int, default=1)
parser.add_argument("--max-steps", type=int, default=-1)
parser.add_argument("--ckpt-dir", required=True)
parser.add_argument("--ckpt-path", default=None)
parser.add_argument("--sharded", action="store_true")
parser.add_argument("--block-commit-at-step", type=int, default=None)
parser.add_argument("--samples", type=int, default=240)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--drop-last", action="store_true")
parser.add_argument("--every-n-steps", type=int, default=4, help="checkpoint every K optimizer steps")
args = parser.parse_args()
out = Path(args.out)

if args.block_commit_at_step is not None:
    commit = checkpoint_sharded._commit

    def _commit_or_block(tmp, path):
        if f".step{args.block_commit_at_step}." in tmp:
            (out / "blocked").touch()  # every shard is durable; the commit never comes
            threading.Event().wait()
        commit(tmp, path)

    checkpoint_sharded._commit = _commit_or_block


class Recording(RegressionModel):
    def on_train_epoch_start(self):
        self.losses = []

    def training_step(self, batch, batch_idx):
        world, rank, epoch = self.trainer.world_size, self.trainer.global_rank, self.current_epoch
        with open(out / f"seen-e{epoch}-r{rank}-w{world}.txt", "a") as f:  # appended as it goes: a stop mid-epoch keeps it
            f.write(" ".join(map(str, batch[2].tolist())) + " ")
        loss = super().training_step(batch, batch_idx)
        self.losses.append(loss.detach())
        return loss

    def on_train_epoch_end(self):
        world, rank, epoch = self.trainer.world_size, self.trainer.global_rank, self.current_epoch
        mean = self.trainer.strategy.reduce(torch.stack(self.losses).mean())
        if rank == 0:
            (out / f"loss-e{epoch}-w{world}.txt").write_text(f"{float(mean):.6f}")


seed_everything(0)
model = Recording(16, 32, 0.05)
loader = DataLoader(SyntheticRegression(args.samples, 16, 0), batch_size=args.batch_size, shuffle=True,
                    drop_last=args.drop_last)
cluster = cluster_environment(os.environ)
plugins = [ShardedCheckpointIO(async_save=True)] if args.sharded else []
trainer = Trainer(
    accelerator="cpu", devices=cluster.local_world_size, num_nodes=cluster.num_nodes, strategy=args.strategy,
    max_epochs=args.max_epochs, max_steps=args.max_steps, logger=False, enable_progress_bar=False, enable_model_summary=False,
    callbacks=[ModelCheckpoint(dirpath=args.ckpt_dir, save_last=True, every_n_train_steps=args.every_n_steps)], plugins=plugins,
    num_sanity_val_steps=0,
)
trainer.fit(model, loader, ckpt_path=args.ckpt_path)
if trainer.is_global_zero:
    print(f"done: world={trainer.world_size} epoch={trainer.current_epoch} step={trainer.global_step} "
          f"accumulate={trainer.accumulate_grad_batches}", flush=True)
