"""torchmetrics under DDP, one script, two engines: ``python lightning_ddp_metrics_script.py volt|lightning OUT``.

``Trainer(accelerator="cpu", devices=2, strategy="ddp")`` starts the second process itself in both engines
(volt re-runs the script under ``volt-run``; Lightning's subprocess launcher re-runs it too), so every line
here runs once per rank. torchmetrics syncs a metric's state across ranks with torch.distributed, so the
logged epoch values are global while a step value is the rank's own batch. Rank 0 writes OUT.json: the
metric dicts, what a callback saw at each epoch end on every rank, the CSV rows and the final weights.
Only the import block depends on the engine.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
import warnings
from typing import Any, Dict, List

import torch
import torch.distributed as dist
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ENGINE = sys.argv[1] if len(sys.argv) > 1 else "volt"
if ENGINE == "volt":
    import volt as pl
    from volt.loggers import CSVLogger
elif ENGINE == "lightning":
    import logging

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    warnings.filterwarnings("ignore")  # num_workers, batch-size inference etc.: noise, not behaviour
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
else:
    raise SystemExit(f"usage: {sys.argv[0]} volt|lightning OUT.json")

torch.set_num_threads(1)


def loader(n: int, seed: int, shuffle: bool) -> DataLoader:
    """Regression data; each rank gets its share through the DistributedSampler both engines add (shuffled
    with seed 0 and the epoch where ``shuffle``: Lightning shuffles a training loader's even without)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.arange(1.0, 5.0).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=shuffle)


class MetricNet(pl.LightningModule):
    """torchmetrics objects logged with every on_step/on_epoch combination, and computed by hand at epoch end."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.mse_step, self.mse_both, self.mse_epoch = (torchmetrics.MeanSquaredError() for _ in range(3))
        self.acc_both = torchmetrics.classification.BinaryAccuracy()  # sign of the target, from the prediction
        self.mean_loss = torchmetrics.MeanMetric()  # update() only: no batch value, the step value is compute()
        self.mse_by_hand = torchmetrics.MeanSquaredError()
        self.acc_by_hand = torchmetrics.classification.BinaryAccuracy()
        self.val_mse_both, self.val_mse_epoch = torchmetrics.MeanSquaredError(), torchmetrics.MeanSquaredError()
        self.val_acc_epoch = torchmetrics.classification.BinaryAccuracy()
        self.val_by_hand = torchmetrics.MeanSquaredError()
        self.seen: List[List[float]] = []  # [batch sum, loss] per training step: what this rank trained on

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        pred = self(x)
        loss = nn.functional.mse_loss(pred, y)
        self.seen.append([round(float(x.sum()), 4), float(loss)])
        p, labels = pred.detach(), (y > 0).int()
        for metric in (self.mse_step, self.mse_both, self.mse_epoch):
            metric(p, y)
        self.log("mse_step_only", self.mse_step, on_step=True, on_epoch=False)
        self.log("mse_both", self.mse_both, on_step=True, on_epoch=True, prog_bar=True)
        self.log("mse_epoch_only", self.mse_epoch, on_step=False, on_epoch=True)
        self.acc_both(torch.sigmoid(p), labels)
        self.log("acc_both", self.acc_both, on_step=True, on_epoch=True)
        self.mean_loss.update(loss.detach())
        self.log("mean_loss", self.mean_loss, on_step=True, on_epoch=True)
        self.log("loss_synced", loss, on_step=False, on_epoch=True, sync_dist=True)  # a tensor, for comparison
        self.mse_by_hand.update(p, y)
        self.acc_by_hand.update(torch.sigmoid(p), labels)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("mse_by_hand", self.mse_by_hand.compute())  # compute() syncs: the same value on every rank
        self.log("acc_by_hand", self.acc_by_hand.compute())
        self.mse_by_hand.reset()
        self.acc_by_hand.reset()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        pred = self(x)
        self.val_mse_both(pred, y)
        self.log("val_mse_both", self.val_mse_both, on_step=True, on_epoch=True)
        self.val_mse_epoch.update(pred, y)
        self.log("val_mse_epoch_only", self.val_mse_epoch)
        self.val_acc_epoch.update(torch.sigmoid(pred), (y > 0).int())
        self.log("val_acc_epoch_only", self.val_acc_epoch, on_step=False, on_epoch=True)
        self.val_by_hand.update(pred, y)
        self.log("val_loss_synced", nn.functional.mse_loss(pred, y), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self.log("val_by_hand", self.val_by_hand.compute())
        self.val_by_hand.reset()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def floats(d: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in sorted(d.items())}


class EpochEndSnapshots(pl.Callback):
    """callback_metrics at each epoch end, gathered from every rank (epoch values must agree)."""

    def __init__(self) -> None:
        self.snapshots: Dict[str, List[Dict[str, float]]] = {}

    def _take(self, trainer: Any, label: str) -> None:
        gathered: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, floats(trainer.callback_metrics))
        self.snapshots[label] = gathered

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._take(trainer, f"validation_epoch_end_{trainer.current_epoch}")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._take(trainer, f"train_epoch_end_{trainer.current_epoch}")
        seen: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(seen, pl_module.seen)
        self.snapshots[f"seen_{trainer.current_epoch}"] = seen


def main() -> None:
    out_path = sys.argv[2]
    root = os.environ.get("DDP_METRICS_ROOT") or tempfile.mkdtemp(prefix=f"ddp-metrics-{ENGINE}-")
    os.environ["DDP_METRICS_ROOT"] = root  # the re-run ranks write next to rank 0
    torch.manual_seed(0)
    model = MetricNet()
    snapshots = EpochEndSnapshots()
    logger = CSVLogger(os.path.join(root, "csv"), name="run", version=0)
    trainer = pl.Trainer(
        default_root_dir=root, accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, log_every_n_steps=2,
        num_sanity_val_steps=1, logger=logger, callbacks=[snapshots], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, loader(32, seed=0, shuffle=True), loader(16, seed=1, shuffle=False))
    if trainer.global_rank != 0:
        return
    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        csv_rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    results = {
        "engine": ENGINE, "world_size": trainer.world_size, "global_step": trainer.global_step,
        "callback_metrics": floats(trainer.callback_metrics), "logged_metrics": floats(trainer.logged_metrics),
        "progress_bar_metrics": floats(trainer.progress_bar_metrics), "epoch_end": snapshots.snapshots,
        "csv_rows": csv_rows, "weights": {k: v.flatten().tolist() for k, v in model.net.state_dict().items()},
    }
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
