"""A character-level language model on real text: the example with a LightningDataModule.

    python -m volt.examples.charlm                          # 300 steps: about 15 s of CPU time
    volt-run --nproc-per-node 2 python -m volt.examples.charlm --max-steps 150
    python -m volt.examples.charlm --text docs/*.md         # train on text files of your own

The corpus ships with Python itself, so nothing is downloaded: the pages of its
interactive help (``pydoc_data.topics``, part of the standard library; about 79
pages, 465 kB of English prose and code examples). A GRU reads 64 characters
and predicts each next one. The loss starts near ln(vocabulary) (about 4.6 nats)
and falls below 2.5 within a few hundred steps; the script validates once before
training and once after, prints both losses, and ends with a line of text
sampled from the trained model.

As in every volt example, Trainer settings from a TrainingJob (``VOLT_TRAINER``)
override the flags, checkpoints go to ``VOLT_CHECKPOINT_DIR`` (else
``--ckpt-dir``) and a restarted job resumes from the latest one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pydoc_data.topics
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from volt import LightningDataModule, LightningModule, Trainer, seed_everything
from volt.callbacks import ModelCheckpoint
from volt.cluster import cluster_environment
from volt.contract import job_contract


def load_corpus(paths: Sequence[str] = ()) -> str:
    """The text of ``paths`` joined by blank lines; without paths, Python's help pages in a fixed order."""
    if paths:
        return "\n\n".join(Path(path).read_text(encoding="utf-8") for path in paths)
    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[name] for name in sorted(topics))


class CharWindows(Dataset):
    """Non-overlapping windows of ``context`` characters; item ``i`` is (input, the same shifted by one)."""

    def __init__(self, codes: torch.Tensor, context: int) -> None:
        if context < 1 or codes.numel() < context + 1:
            raise ValueError(f"need more than context={context} characters, got {codes.numel()}")
        self.codes, self.context = codes, context

    def __len__(self) -> int:
        return (self.codes.numel() - 1) // self.context

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        start = index * self.context
        window = self.codes[start:start + self.context + 1]
        return window[:-1], window[1:]


class CharDataModule(LightningDataModule):
    """The corpus as character codes: the first 90% to train on, the last 10% to validate on.

    The vocabulary is known as soon as the module exists (the model needs its size);
    ``setup`` encodes the text. Every rank reads the same text, and under DDP the
    Trainer gives each rank its share of the training windows.
    """

    def __init__(self, paths: Sequence[str] = (), context: int = 64, batch_size: int = 32,
                 val_fraction: float = 0.1, num_workers: int = 0) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.text = load_corpus(paths)
        self.vocab: List[str] = sorted(set(self.text))
        self.context, self.batch_size = context, batch_size
        self.val_fraction, self.num_workers = val_fraction, num_workers
        self.train_set: Optional[CharWindows] = None
        self.val_set: Optional[CharWindows] = None

    def encode(self, text: str) -> torch.Tensor:
        index = {char: code for code, char in enumerate(self.vocab)}
        return torch.tensor([index[char] for char in text], dtype=torch.long)

    def decode(self, codes: Sequence[int]) -> str:
        return "".join(self.vocab[code] for code in codes)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        codes = self.encode(self.text)
        split = int(codes.numel() * (1.0 - self.val_fraction))
        self.train_set = CharWindows(codes[:split], self.context)
        self.val_set = CharWindows(codes[split:], self.context)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)


class CharLM(LightningModule):
    """Embedding, a GRU and a linear read-out: next-character logits at every position."""

    def __init__(self, vocab_size: int, embedding: int = 48, hidden: int = 128, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab_size, embedding)
        self.rnn = nn.GRU(embedding, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)
        self.lr = lr

    def forward(self, codes: torch.Tensor, state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        out, state = self.rnn(self.embed(codes), state)
        return self.head(out), state

    def _loss(self, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        logits, _ = self(inputs)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), sync_dist=True)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)

    @torch.no_grad()
    def sample(self, prompt: torch.Tensor, length: int, temperature: float = 0.8, seed: int = 0) -> List[int]:
        """``length`` codes drawn one at a time after ``prompt`` (a 1-D tensor of codes)."""
        generator = torch.Generator().manual_seed(seed)
        logits, state = self(prompt.unsqueeze(0))
        out: List[int] = []
        for _ in range(length):
            probs = torch.softmax(logits[0, -1] / temperature, dim=-1)
            code = int(torch.multinomial(probs, 1, generator=generator))
            out.append(code)
            logits, state = self(torch.tensor([[code]]), state)
        return out


def build_parser() -> argparse.ArgumentParser:
    job = job_contract()
    parser = argparse.ArgumentParser(prog="python -m volt.examples.charlm", description=__doc__.splitlines()[0])
    parser.add_argument("--text", nargs="*", default=[], metavar="FILE",
                        help="text files to train on (default: Python's help pages, pydoc_data.topics)")
    parser.add_argument("--max-epochs", type=int, default=-1, help="-1: until --max-steps")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto (a TrainingJob's trainer overrides it)")
    parser.add_argument("--context", type=int, default=64, help="characters per training window")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--embedding", type=int, default=48)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--val-batches", type=int, default=20, help="validation batches per run (limit_val_batches)")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ckpt-dir", default=job.checkpoint_dir or "checkpoints")
    parser.add_argument("--every-n-steps", type=int, default=job.checkpoint_every_n_steps,
                        help="checkpoint every N optimizer steps (default: VOLT_CHECKPOINT_EVERY_N_STEPS, else per epoch)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train; return (and on global rank 0 print, as the line after ``done: ``) the losses before and after."""
    args = build_parser().parse_args(argv)
    seed_everything(args.seed)
    data = CharDataModule(args.text, args.context, args.batch_size, num_workers=args.num_workers)
    model = CharLM(len(data.vocab), args.embedding, args.hidden, args.lr)
    checkpoint = ModelCheckpoint(dirpath=args.ckpt_dir, every_n_train_steps=args.every_n_steps, save_last=True)
    # Under volt-run/torchrun the layout is what the launcher started; VOLT_TRAINER overrides it anyway.
    cluster = cluster_environment(os.environ)
    devices, num_nodes = (cluster.local_world_size, cluster.num_nodes) if cluster.source != "local" else (1, 1)
    trainer = Trainer(
        accelerator=args.accelerator, devices=devices, num_nodes=num_nodes, max_epochs=args.max_epochs,
        max_steps=args.max_steps, limit_val_batches=args.val_batches, callbacks=[checkpoint],
        enable_model_summary=False, log_every_n_steps=20,
    )
    before = trainer.validate(model, datamodule=data, verbose=False)[0]["val_loss"]
    trainer.fit(model, datamodule=data)
    after = trainer.validate(model, datamodule=data, verbose=False)[0]["val_loss"]
    result: Dict[str, Any] = {
        "step": trainer.global_step, "vocab": len(data.vocab), "chance_loss": round(math.log(len(data.vocab)), 4),
        "val_loss_before": round(float(before), 4), "val_loss_after": round(float(after), 4),
    }
    if trainer.is_global_zero:
        prompt = data.encode("The ")
        result["sample"] = "The " + data.decode(model.cpu().sample(prompt, 120, seed=args.seed))
        print("done: " + json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
