"""Regression with a small MLP on synthetic data: the TrainingJob example.

    python -m volt.examples.synthetic --max-epochs 3
    volt-run --nproc-per-node 2 python -m volt.examples.synthetic --max-steps 50

Trainer settings from a TrainingJob (``VOLT_TRAINER``) override the flags, the
checkpoint directory is ``VOLT_CHECKPOINT_DIR`` (else ``--ckpt-dir``), the
resume policy ``VOLT_RESUME`` (auto: latest checkpoint), and
``VOLT_CHECKPOINT_EVERY_N_STEPS`` sets ``--every-n-steps``'s default.
``--step-delay`` slows every step down to the pace of a bigger model; with
``--restart-step-delay`` a restarted gang (``VOLT_ATTEMPT`` >= 1) runs at another
pace, so that a demo or a test can break a slow first gang and watch a quick recovery.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from volt import LightningModule, Trainer, seed_everything
from volt.callbacks import ModelCheckpoint
from volt.cluster import cluster_environment
from volt.contract import JobContract, job_contract


class SyntheticRegression(Dataset):
    """``y = tanh(x @ w) + noise`` with ``x ~ N(0, 1)``.

    ``w`` depends on ``seed`` only, so splits share the target function; the
    samples depend on ``seed`` and ``split``. Items are ``(x, y, index)``.
    """

    SPLITS = ("train", "val", "test")

    def __init__(self, samples: int, features: int, seed: int = 0, split: str = "train") -> None:
        if samples < 1 or features < 1:
            raise ValueError(f"samples and features must be >= 1, got samples={samples}, features={features}")
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        weight = torch.randn(features, 1, generator=torch.Generator().manual_seed(seed))
        generator = torch.Generator().manual_seed(seed * 7919 + 1 + self.SPLITS.index(split))
        self.x = torch.randn(samples, features, generator=generator)
        self.y = torch.tanh(self.x @ weight) + 0.05 * torch.randn(samples, 1, generator=generator)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[index], self.y[index], index


class RegressionModel(LightningModule):
    """Two-layer MLP trained with SGD + momentum on mean squared error."""

    def __init__(self, features: int = 16, hidden: int = 32, lr: float = 0.05, step_delay: float = 0.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.lr = lr
        self.step_delay = step_delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self.step_delay:
            time.sleep(self.step_delay)  # stands in for a bigger model in demos
        x, y, _ = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y), sync_dist=True)

    def configure_optimizers(self) -> Dict[str, Any]:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def build_parser(job: Optional[JobContract] = None) -> argparse.ArgumentParser:
    """The example's flags; a TrainingJob's contract (``job``, else read from the environment) sets defaults."""
    job = job or job_contract()
    parser = argparse.ArgumentParser(prog="python -m volt.examples.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--val-samples", type=int, default=128)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds to sleep per training step (demos)")
    parser.add_argument("--restart-step-delay", type=float, default=None,
                        help="--step-delay for a restarted gang (VOLT_ATTEMPT >= 1); default: --step-delay")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ckpt-dir", default=job.checkpoint_dir or "checkpoints")
    parser.add_argument("--every-n-steps", type=int, default=job.checkpoint_every_n_steps,
                        help="checkpoint every N optimizer steps (default: VOLT_CHECKPOINT_EVERY_N_STEPS, else per epoch)")
    parser.add_argument("--ckpt-path", default=None, help="fit(ckpt_path=...): last | best | a path")
    parser.add_argument("--save-weights", default=None, help="write the final state_dict here (rank 0)")
    return parser


def step_delay(args: argparse.Namespace, attempt: Optional[int]) -> float:
    """The seconds to sleep per step in this gang: ``--restart-step-delay`` once the job has restarted."""
    if attempt and args.restart_step_delay is not None:
        return args.restart_step_delay
    return args.step_delay


def main(argv: Optional[Sequence[str]] = None) -> None:
    job = job_contract()
    parser = build_parser(job)
    args = parser.parse_args(argv)
    for flag, value in (("--step-delay", args.step_delay), ("--restart-step-delay", args.restart_step_delay)):
        if value is not None and value < 0:
            parser.error(f"{flag} must be >= 0, got {value}")
    seed_everything(args.seed)
    model = RegressionModel(args.features, args.hidden, args.lr, step_delay(args, job.attempt))
    train = DataLoader(SyntheticRegression(args.samples, args.features, args.seed), batch_size=args.batch_size,
                       shuffle=True)
    val = DataLoader(SyntheticRegression(args.val_samples, args.features, args.seed, "val"), batch_size=args.batch_size)
    checkpoint = ModelCheckpoint(dirpath=args.ckpt_dir, every_n_train_steps=args.every_n_steps, save_last=True)
    # Under volt-run/torchrun the layout is what the launcher started; VOLT_TRAINER overrides it anyway.
    cluster = cluster_environment(os.environ)
    devices, num_nodes = (cluster.local_world_size, cluster.num_nodes) if cluster.source != "local" else (1, 1)
    trainer = Trainer(
        accelerator="cpu", devices=devices, num_nodes=num_nodes, max_epochs=args.max_epochs, max_steps=args.max_steps,
        callbacks=[checkpoint], logger=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=10,
    )
    trainer.fit(model, train, val, ckpt_path=args.ckpt_path)
    if trainer.is_global_zero:
        metrics = {k: round(float(v), 5) for k, v in trainer.callback_metrics.items()}
        print(f"done: epoch={trainer.current_epoch} step={trainer.global_step} metrics={metrics}", flush=True)
        if args.save_weights:
            torch.save(model.state_dict(), args.save_weights)


if __name__ == "__main__":
    main()
