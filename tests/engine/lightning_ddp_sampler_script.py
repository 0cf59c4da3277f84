"""Which samples each rank sees under DDP, one script, two engines:
``python lightning_ddp_sampler_script.py volt|lightning OUT_DIR``.

``Trainer(accelerator="cpu", devices=2, strategy="ddp")`` starts the second process itself in both engines,
so every line runs once per rank. The dataset yields its own index; each scenario fits, tests or predicts
with fresh loaders (shuffle=True, shuffle=False, a custom sampler with ``set_epoch``, a BatchSampler
subclass, a DistributedSampler of the user's, ``drop_last``, ``use_distributed_sampler=False``,
``overfit_batches``, then shuffled and unshuffled again after ``seed_everything(123)``) and records, per
stage and epoch (``current_epoch``: a test or prediction after fit() runs at epoch 2), the indices the
rank's steps received (for a plain BatchSampler passed as ``batch_sampler=``, the batch sizes).
Each rank writes OUT_DIR/<engine>-<rank>.json. Only the import block depends on the engine.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any, Dict, Iterator, List

import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, Sampler, TensorDataset

ENGINE = sys.argv[1] if len(sys.argv) > 1 else "volt"
if ENGINE == "volt":
    import volt as pl
elif ENGINE == "lightning":
    import logging

    import lightning.pytorch as pl

    warnings.filterwarnings("ignore")  # num_workers, shuffled evaluation loaders etc.: noise, not behaviour
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
else:
    raise SystemExit(f"usage: {sys.argv[0]} volt|lightning OUT_DIR")

torch.set_num_threads(1)
SAMPLES = 13  # odd: the DistributedSampler pads rank 1 with one copy
BATCH = 2
EPOCHS = 2


class Rotating(Sampler):
    """A custom sampler: the indices in reverse, rotated by the epoch it was last given."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = list(reversed(range(self.n)))
        k = self.epoch % self.n
        return iter(order[k:] + order[:k])

    def __len__(self) -> int:
        return self.n


class Triples(BatchSampler):
    """A batch sampler of the user's: torch's, under another class name."""


def rank() -> int:
    """This process's rank (Lightning's launcher sets only LOCAL_RANK in the processes it starts)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def loader(kind: str, drop_last: bool = False) -> DataLoader:
    data = TensorDataset(torch.arange(SAMPLES).float().unsqueeze(1))
    if kind == "custom":
        return DataLoader(data, batch_size=BATCH, sampler=Rotating(SAMPLES), drop_last=drop_last)
    if kind == "batch_sampler":  # shuffled, batches of 3, drop_last: each rank's 7th sample dropped
        return DataLoader(data, batch_sampler=Triples(RandomSampler(data), 3, drop_last=True))
    if kind == "plain_batch_sampler":  # torch's own class, passed as batch_sampler=
        return DataLoader(data, batch_sampler=BatchSampler(RandomSampler(data), 3, drop_last=False))
    if kind == "user_distributed":
        return DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, 2, rank(), shuffle=False))
    return DataLoader(data, batch_size=BATCH, shuffle=kind == "shuffle", drop_last=drop_last)


class Recorder(pl.LightningModule):
    def __init__(self, sizes: bool) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1)
        self.sizes = sizes  # record each batch's size instead of its indices
        self.seen: Dict[str, List[int]] = {}

    def _record(self, stage: str, batch: Any) -> None:
        seen = self.seen.setdefault(f"{stage}/{self.current_epoch}", [])
        if self.sizes:
            seen.append(len(batch[0]))
        else:
            seen.extend(int(v) for v in batch[0].flatten())

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self._record("train", batch)
        return self.layer(batch[0]).sum() * 0.0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._record("val", batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._record("test", batch)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        self._record("predict", batch)
        return batch[0]

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def run(train: Any = None, val: Any = None, test: Any = None, predict: Any = None, sizes: bool = False,
        **trainer_args: Any) -> Dict:
    model = Recorder(sizes)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=EPOCHS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **trainer_args,
    )
    if train is not None:
        trainer.fit(model, train, val)
    if test is not None:
        trainer.test(model, test, verbose=False)
    if predict is not None:
        trainer.predict(model, predict)
    return model.seen


def main() -> None:
    out_dir = sys.argv[2]
    seen: Dict[str, Dict] = {}
    for kind in ("shuffle", "sequential", "custom", "batch_sampler", "user_distributed"):
        seen[f"fit_{kind}"] = run(train=loader(kind), val=loader(kind), test=loader(kind))
    seen["fit_plain_batch_sampler_sizes"] = run(train=loader("plain_batch_sampler"), sizes=True)
    for kind in ("shuffle", "sequential"):
        seen[f"fit_{kind}_drop_last"] = run(train=loader(kind, drop_last=True))
    for kind in ("shuffle", "sequential", "custom"):
        seen[f"evaluate_{kind}"] = run(test=loader(kind), predict=loader(kind))
    seen["not_distributed"] = run(train=loader("sequential"), val=loader("sequential"), test=loader("sequential"),
                                  predict=loader("sequential"), use_distributed_sampler=False)
    seen["overfit_batches"] = run(train=loader("shuffle"), overfit_batches=2)
    pl.seed_everything(123)
    seen["seeded_shuffle"] = run(train=loader("shuffle"), val=loader("shuffle"))
    seen["seeded_sequential"] = run(train=loader("sequential"))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{ENGINE}-{rank()}.json"), "w") as f:
        json.dump(seen, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
