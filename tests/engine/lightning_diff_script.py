"""One script body, two engines: ``python lightning_diff_script.py volt|lightning OUT.json``.

Only the import block below depends on the engine; every scenario is the same
code. Each scenario returns plain JSON data (hook call lists, floats, keys), so
``test_lightning_differential.py`` compares what the engines did, not how.
Lightning runs from its own test-only venv (``make lightning-env``); volt never
imports Lightning.
"""
from __future__ import annotations

import inspect
import json
import os
import sys
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ENGINE = sys.argv[1] if len(sys.argv) > 1 else "volt"
if ENGINE == "volt":
    import volt as pl
    from volt.callbacks import EarlyStopping, ModelCheckpoint
    from volt.loggers import CSVLogger
elif ENGINE == "lightning":
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    warnings.filterwarnings("ignore")  # num_workers, log batch-size inference etc.: noise, not behaviour
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
else:
    raise SystemExit(f"usage: {sys.argv[0]} volt|lightning OUT.json")

torch.set_num_threads(1)

# Lightning 2.x LightningModule hooks (the 1.x-only hooks are volt extras and would not be called by Lightning).
MODULE_HOOKS = [
    "prepare_data", "setup", "teardown", "configure_model", "configure_callbacks", "configure_optimizers",
    "train_dataloader", "val_dataloader", "test_dataloader",
    "on_fit_start", "on_fit_end", "on_train_start", "on_train_end",
    "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_validation_model_eval", "on_validation_model_train", "on_validation_model_zero_grad",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end", "on_test_model_eval", "on_test_model_train",
    "on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer",
    "training_step", "validation_step", "test_step",
    "on_before_zero_grad", "optimizer_zero_grad", "on_before_backward", "backward", "on_after_backward",
    "on_before_optimizer_step", "configure_gradient_clipping", "optimizer_step", "lr_scheduler_step",
    "on_save_checkpoint",
]
CALLBACK_HOOKS = [
    "setup", "teardown", "on_fit_start", "on_fit_end", "on_sanity_check_start", "on_sanity_check_end",
    "on_train_start", "on_train_end", "on_train_epoch_start", "on_train_epoch_end",
    "on_train_batch_start", "on_train_batch_end",
    "on_validation_start", "on_validation_end", "on_validation_epoch_start", "on_validation_epoch_end",
    "on_validation_batch_start", "on_validation_batch_end",
    "on_test_start", "on_test_end", "on_test_epoch_start", "on_test_epoch_end",
    "on_test_batch_start", "on_test_batch_end",
    "on_before_zero_grad", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
    "on_save_checkpoint", "state_dict",
]
# Arguments worth recording: they say which batch/stage a call was for, whatever the calling convention.
RECORDED_ARGS = ("stage", "batch_idx", "dataloader_idx")


def recording(cls: type, names: List[str], calls: List[str], prefix: str = "") -> type:
    """A subclass of ``cls`` whose ``names`` append ``prefix + name(args)`` to ``calls``, then run as before."""

    def wrap(name: str) -> Callable[..., Any]:
        original = getattr(cls, name)
        signature = inspect.signature(original)

        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                bound = signature.bind(self, *args, **kwargs)
                bound.apply_defaults()
                # getattr(.., "value"): Lightning passes stage as a str enum (TrainerFn.FITTING == "fit")
                shown = [f"{k}={getattr(bound.arguments[k], 'value', bound.arguments[k])}"
                         for k in RECORDED_ARGS if k in bound.arguments]
            except TypeError:
                shown = ["<unbindable>"]
            calls.append(prefix + name + (f"({', '.join(shown)})" if shown else ""))
            return original(self, *args, **kwargs)

        # No functools.wraps: Lightning's is_overridden follows __wrapped__ and would see the base
        # hook, not an override. __signature__ keeps signature checks (dataloader_idx, outputs) right.
        hook.__name__ = hook.__qualname__ = name
        hook.__signature__ = signature  # type: ignore[attr-defined]
        return hook

    return type(cls.__name__, (cls,), {n: wrap(n) for n in names})


def dataset(n: int, dim: int = 4, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = x @ torch.arange(1.0, dim + 1).unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loader(n: int, batch_size: int = 8, seed: int = 0) -> DataLoader:
    return DataLoader(dataset(n, seed=seed), batch_size=batch_size, shuffle=False)


def trainer(root: str, **kwargs: Any) -> Any:
    defaults: Dict[str, Any] = dict(
        default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def floats(d: Dict[str, Any]) -> Dict[str, float]:
    return {k: float(v) for k, v in sorted(d.items())}


class Net(pl.LightningModule):
    """A two-layer regression net; what each scenario varies is in its subclass."""

    def __init__(self, optimizer: str = "sgd", scheduler: Optional[str] = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self(x), y))
        self.log("test_xsum", x.sum(), reduce_fx="sum")

    def configure_optimizers(self) -> Any:
        if self.hparams.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(self.parameters(), lr=0.01)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        if self.hparams.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.hparams.scheduler == "epoch":
            return [opt], [torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.7)]
        return opt


def weights(module: nn.Module) -> Dict[str, List[float]]:
    return {k: v.detach().flatten().tolist() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# scenarios
# ------------------------------------------------------------------------------------------------
def hook_order(root: str) -> Dict[str, Any]:
    """Every module and callback hook of a fit with a sanity check, mid-epoch validation, 2 epochs, then test."""
    calls: List[str] = []
    model_cls = recording(Net, MODULE_HOOKS, calls)
    callback_cls = recording(pl.Callback, CALLBACK_HOOKS, calls, prefix="Callback.")
    torch.manual_seed(0)
    model = model_cls()
    t = trainer(root, max_epochs=2, limit_train_batches=3, limit_val_batches=2, val_check_interval=2,
                num_sanity_val_steps=1, callbacks=[callback_cls()])
    t.fit(model, loader(32), loader(24))
    fit_calls = list(calls)
    calls.clear()
    t.test(model, loader(16), verbose=False)
    return {"fit": fit_calls, "test": list(calls)}


def optimization(root: str) -> Dict[str, Any]:
    """Final weights after SGD/Adam with step/epoch schedulers, clipping and accumulation over a partial window."""
    out: Dict[str, Any] = {}
    for opt, sched, clip_algo in (("sgd", "epoch", "norm"), ("adam", "step", "value"), ("sgd", None, None)):
        torch.manual_seed(0)
        model = Net(opt, sched)
        t = trainer(root, max_epochs=2, limit_train_batches=5, accumulate_grad_batches=2,
                    gradient_clip_val=0.3 if clip_algo else None, gradient_clip_algorithm=clip_algo,
                    limit_val_batches=0)
        t.fit(model, loader(48))
        out[f"{opt}-{sched}-{clip_algo}"] = {
            "weights": weights(model), "global_step": t.global_step, "current_epoch": t.current_epoch,
            "lr": t.optimizers[0].param_groups[0]["lr"],
        }
    return out


class LogNet(Net):
    """``self.log`` in each kind of hook with on_step/on_epoch/prog_bar/logger/reduce_fx/batch_size."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        s = x.sum().detach()
        self.log("loss", loss, prog_bar=True)
        self.log("both", s, on_step=True, on_epoch=True, prog_bar=True)
        self.log("ep_max", s, on_step=False, on_epoch=True, reduce_fx="max")
        self.log("ep_sum", s, on_step=False, on_epoch=True, reduce_fx="sum")
        self.log("ep_min", s, on_step=False, on_epoch=True, reduce_fx=torch.min)
        self.log("weighted", s, on_step=False, on_epoch=True, batch_size=batch_idx + 1)
        self.log("bar_only", s, logger=False, prog_bar=True)
        self.log_dict({"d1": 2 * s, "d2": 3 * s}, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        s = x.sum()
        self.log("val_loss", nn.functional.mse_loss(self(x), y), prog_bar=True)
        self.log("val_max", s, reduce_fx="max")
        self.log("val_stepped", s, on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        self.log("epoch_end_value", float(self.current_epoch) + 0.5)

    def on_validation_epoch_end(self) -> None:
        self.log("val_epoch_end_value", torch.tensor(7.0 + self.current_epoch))


class MetricsSnapshot(pl.Callback):
    """The metric dicts as a callback sees them at a few points."""

    def __init__(self) -> None:
        self.snapshots: Dict[str, Any] = {}

    def _take(self, trainer: Any, label: str) -> None:
        self.snapshots[label] = {"callback": sorted(trainer.callback_metrics),
                                 "progress_bar": sorted(trainer.progress_bar_metrics)}

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.current_epoch == 0 and batch_idx == 1:
            self._take(trainer, "epoch0_batch1")

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._take(trainer, f"validation_end_{trainer.current_epoch}_{trainer.global_step}")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._take(trainer, f"train_epoch_end_{trainer.current_epoch}")


def logging_metrics(root: str) -> Dict[str, Any]:
    """callback_metrics / logged_metrics / progress_bar_metrics and the CSV rows after a fit."""
    torch.manual_seed(0)
    model = LogNet()
    snap = MetricsSnapshot()
    logger = CSVLogger(os.path.join(root, "csv"), name="run", version=0)
    t = trainer(root, max_epochs=2, limit_train_batches=5, val_check_interval=3, log_every_n_steps=2,
                num_sanity_val_steps=2, logger=logger, callbacks=[snap])
    t.fit(model, loader(36), loader(20))  # last train batch has 4 rows, last val batch 4
    import csv

    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return {
        "callback_metrics": floats(t.callback_metrics),
        "logged_metrics": floats(t.logged_metrics),
        "progress_bar_metrics": floats(t.progress_bar_metrics),
        "snapshots": snap.snapshots,
        "csv_rows": rows,
    }


def evaluation(root: str) -> Dict[str, Any]:
    """trainer.test()/validate() return values, one loader and two."""
    torch.manual_seed(0)
    model = Net()
    t = trainer(root)
    return {
        "test_one": t.test(model, loader(20), verbose=False),
        "test_two": t.test(model, [loader(20), loader(12, seed=1)], verbose=False),
        "validate_one": t.validate(model, loader(20), verbose=False),
    }


def checkpoint(root: str) -> Dict[str, Any]:
    """What ModelCheckpoint writes: file names, top-level keys, weights, counters."""
    torch.manual_seed(0)
    model = Net("adam", "epoch")
    ckpt_dir = os.path.join(root, "ckpt")
    cb = ModelCheckpoint(dirpath=ckpt_dir, monitor="val_loss", save_top_k=2, save_last=True)
    t = trainer(root, max_epochs=3, limit_train_batches=4, limit_val_batches=2, enable_checkpointing=True,
                callbacks=[cb])
    t.fit(model, loader(40), loader(16))
    best = torch.load(cb.best_model_path, map_location="cpu", weights_only=False)
    last = torch.load(cb.last_model_path, map_location="cpu", weights_only=False)
    return {
        "files": sorted(os.listdir(ckpt_dir)),
        "best": os.path.basename(cb.best_model_path),
        "last": os.path.basename(cb.last_model_path),
        "best_score": float(cb.best_model_score),
        "keys": sorted(last),
        "epoch": last["epoch"], "global_step": last["global_step"],
        "best_epoch": best["epoch"], "best_global_step": best["global_step"],
        "callback_keys": sorted(last["callbacks"]),
        "hyper_parameters": dict(last["hyper_parameters"]),
        "optimizer_state_keys": sorted(last["optimizer_states"][0]),
        "lr_schedulers": [sorted(s) for s in last["lr_schedulers"]],
        "state_dict": {k: v.flatten().tolist() for k, v in last["state_dict"].items()},
        "final_weights": weights(model),
    }


class CountingNet(Net):
    def __init__(self) -> None:
        super().__init__()
        self.counts = {"train": 0, "val_epochs": 0, "train_epoch_ends": 0}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.counts["train"] += 1
        return super().training_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.counts["val_epochs"] += 1

    def on_train_epoch_end(self) -> None:
        self.counts["train_epoch_ends"] += 1


def counters(root: str) -> Dict[str, Any]:
    """global_step/current_epoch and how many steps/validations ran, for the loop limits."""
    cases: Dict[str, Dict[str, Any]] = {
        "max_steps_mid_epoch": dict(max_epochs=5, max_steps=3, limit_train_batches=5),
        "max_steps_accumulate": dict(max_epochs=5, max_steps=4, limit_train_batches=5, accumulate_grad_batches=2),
        "limit_fraction": dict(max_epochs=2, limit_train_batches=0.5),
        "limit_int": dict(max_epochs=2, limit_train_batches=3),
        "val_check_fraction": dict(max_epochs=1, val_check_interval=0.25),
        "val_every_2_epochs": dict(max_epochs=3, limit_train_batches=2, check_val_every_n_epoch=2),
        "val_check_int_across_epochs": dict(max_epochs=3, limit_train_batches=3, val_check_interval=2,
                                            check_val_every_n_epoch=None),
        "fast_dev_run": dict(fast_dev_run=2),
        "overfit_batches": dict(max_epochs=2, overfit_batches=2),
        "min_steps_over_max_epochs": dict(max_epochs=1, min_steps=7, limit_train_batches=5),
    }
    out: Dict[str, Any] = {}
    for name, kwargs in cases.items():
        torch.manual_seed(0)
        model = CountingNet()
        t = trainer(root, num_sanity_val_steps=0, limit_val_batches=1, **kwargs)
        t.fit(model, loader(80), loader(8))
        out[name] = {"global_step": t.global_step, "current_epoch": t.current_epoch,
                     "num_training_batches": float(t.num_training_batches), **model.counts}
    return out


class ManualNet(Net):
    """Manual optimization, GAN-style: two optimizers toggled in turn, manual clipping, a stepped scheduler."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        first, second = self.optimizers()
        for opt in (first, second):
            self.toggle_optimizer(opt)
            loss = nn.functional.mse_loss(self(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            self.clip_gradients(opt, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
            opt.step()
            self.untoggle_optimizer(opt)
        if batch_idx % 2 == 1:
            self.lr_schedulers().step()
        self.log("manual_loss", loss)

    def configure_optimizers(self) -> Any:
        first = torch.optim.SGD(self.net[0].parameters(), lr=0.05)
        second = torch.optim.Adam(self.net[2].parameters(), lr=0.01)
        return [first, second], [torch.optim.lr_scheduler.StepLR(first, step_size=1, gamma=0.5)]


def manual_optimization(root: str) -> Dict[str, Any]:
    calls: List[str] = []
    names = ["training_step", "on_before_backward", "backward", "on_after_backward", "on_before_optimizer_step",
             "on_before_zero_grad", "optimizer_step", "optimizer_zero_grad", "on_train_batch_end",
             "configure_gradient_clipping", "lr_scheduler_step"]
    torch.manual_seed(0)
    model = recording(ManualNet, names, calls)()
    t = trainer(root, max_epochs=2, limit_train_batches=3, limit_val_batches=0)
    t.fit(model, loader(32))
    return {"weights": weights(model), "global_step": t.global_step, "calls": calls,
            "lr": [o.param_groups[0]["lr"] for o in t.optimizers], "callback_metrics": floats(t.callback_metrics)}


class PlateauNet(Net):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0, factor=0.5, threshold=10.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}


class LrAtEpochStart(pl.Callback):
    def __init__(self) -> None:
        self.lrs: List[float] = []

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def early_stopping_and_plateau(root: str) -> Dict[str, Any]:
    """EarlyStopping's stop epoch and ReduceLROnPlateau's lr, both watching val_loss."""
    torch.manual_seed(0)
    model = PlateauNet()
    lrs = LrAtEpochStart()
    stop = EarlyStopping(monitor="val_loss", patience=1, min_delta=5.0)
    t = trainer(root, max_epochs=8, limit_train_batches=3, limit_val_batches=2, callbacks=[lrs, stop])
    t.fit(model, loader(32), loader(16))
    return {"lrs": lrs.lrs, "stopped_epoch": stop.stopped_epoch, "wait_count": stop.wait_count,
            "best_score": float(stop.best_score), "global_step": t.global_step, "current_epoch": t.current_epoch,
            "weights": weights(model), "should_stop": t.should_stop}


class DM(pl.LightningDataModule):
    def __init__(self, calls: List[str]) -> None:
        super().__init__()
        self.calls = calls

    def prepare_data(self) -> None:
        self.calls.append("dm.prepare_data")

    def setup(self, stage: str) -> None:
        self.calls.append(f"dm.setup({getattr(stage, 'value', stage)})")

    def teardown(self, stage: str) -> None:
        self.calls.append(f"dm.teardown({getattr(stage, 'value', stage)})")

    def train_dataloader(self) -> DataLoader:
        self.calls.append("dm.train_dataloader")
        return loader(24)

    def val_dataloader(self) -> List[DataLoader]:
        self.calls.append("dm.val_dataloader")
        return [loader(16), loader(8, seed=1)]

    def test_dataloader(self) -> DataLoader:
        self.calls.append("dm.test_dataloader")
        return loader(16)

    def predict_dataloader(self) -> List[DataLoader]:
        self.calls.append("dm.predict_dataloader")
        return [loader(8), loader(4, seed=1)]


class MultiValNet(Net):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))
        self.log("val_sum", x.sum(), reduce_fx="sum", prog_bar=True)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self(batch[0])


def datamodule_and_predict(root: str) -> Dict[str, Any]:
    """A datamodule's hooks, two validation loaders' metric keys, test() and predict() through it."""
    calls: List[str] = []
    model_calls: List[str] = []
    torch.manual_seed(0)
    model = recording(MultiValNet, ["setup", "teardown", "prepare_data"], model_calls)()
    dm = DM(calls)
    t = trainer(root, max_epochs=2, limit_train_batches=2, num_sanity_val_steps=1)
    t.fit(model, datamodule=dm)
    metrics = floats(t.callback_metrics)
    tested = t.test(model, datamodule=dm, verbose=False)
    predictions = t.predict(model, datamodule=dm)
    return {"dm_calls": calls, "module_calls": model_calls, "callback_metrics": metrics, "test": tested,
            "predictions": [[p.flatten().tolist() for p in per_loader] for per_loader in predictions]}


class StopEarlyInEpoch(Net):
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Optional[int]:
        return -1 if batch_idx == 2 and self.current_epoch == 0 else None


def resume_and_batch_start_stop(root: str) -> Dict[str, Any]:
    """fit(ckpt_path=last) from an epoch boundary; on_train_batch_start returning -1 ends an epoch."""
    torch.manual_seed(0)
    model = Net("adam", "epoch")
    ckpt = ModelCheckpoint(dirpath=os.path.join(root, "ck"), save_last=True)
    trainer(root, max_epochs=2, limit_train_batches=3, limit_val_batches=1, enable_checkpointing=True,
            callbacks=[ckpt]).fit(model, loader(32), loader(8))
    torch.manual_seed(1)  # different initial weights: the checkpoint must replace them
    resumed = Net("adam", "epoch")
    t = trainer(root, max_epochs=4, limit_train_batches=3, limit_val_batches=1)
    t.fit(resumed, loader(32), loader(8), ckpt_path=ckpt.last_model_path)
    torch.manual_seed(0)
    stopper = StopEarlyInEpoch()
    t2 = trainer(root, max_epochs=2, limit_train_batches=4, limit_val_batches=0)
    t2.fit(stopper, loader(32))
    return {"resumed": {"weights": weights(resumed), "global_step": t.global_step, "current_epoch": t.current_epoch,
                        "lr": t.optimizers[0].param_groups[0]["lr"]},
            "batch_start_stop": {"global_step": t2.global_step, "current_epoch": t2.current_epoch,
                                 "weights": weights(stopper)}}


def bf16_mixed(root: str) -> Dict[str, Any]:
    """bf16-mixed autocast on CPU: weights after a few steps (same autocast regions in both engines)."""
    torch.manual_seed(0)
    model = Net("adam", None)
    t = trainer(root, max_epochs=1, limit_train_batches=4, precision="bf16-mixed", limit_val_batches=0)
    t.fit(model, loader(32))
    x = dataset(4)[:][0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    return {"weights": weights(model), "output_dtype": str(out.dtype), "param_dtype": str(model.net[0].weight.dtype)}


def describe(value: Any) -> Any:
    """The shape of a hook argument: type names and dict keys, not values."""
    if isinstance(value, dict):
        return {k: describe(v) for k, v in sorted(value.items())}
    if isinstance(value, torch.Tensor):
        return f"Tensor(requires_grad={value.requires_grad})"
    return type(value).__name__


class DictStepNet(Net):
    """training_step returns a dict with an extra key; outputs as the batch-end hooks receive them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: List[Any] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        return {"loss": loss, "extra": loss.detach() * 2} if batch_idx % 2 else loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(describe(outputs))


class CallbackLogger(pl.Callback):
    """Callbacks log through pl_module.log and see the outputs too."""

    def __init__(self) -> None:
        self.seen: List[Any] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(describe(outputs))
        pl_module.log("cb_step", float(batch_idx))

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        pl_module.log("cb_val_epoch", float(trainer.current_epoch) + 10.0)


def callbacks_and_files(root: str) -> Dict[str, Any]:
    """Batch-end outputs, callback logging, LearningRateMonitor with accumulation, checkpoint file names,
    validate(ckpt_path="best")."""
    from importlib import import_module

    callbacks_module = import_module(pl.__name__ + ".callbacks")
    torch.manual_seed(0)
    model = DictStepNet()
    cb = CallbackLogger()
    every = ModelCheckpoint(dirpath=os.path.join(root, "every"), every_n_train_steps=2, save_top_k=-1,
                            filename="{epoch}-{step}")
    named = ModelCheckpoint(dirpath=os.path.join(root, "named"), monitor="val_loss", save_top_k=2,
                            filename="{epoch}-{val_loss:.2f}")
    plain = ModelCheckpoint(dirpath=os.path.join(root, "plain"), monitor="val_loss", mode="max",
                            filename="e{epoch:02d}_v{val_loss:.3f}", auto_insert_metric_name=False)
    lr_monitor = callbacks_module.LearningRateMonitor(logging_interval="step")
    logger = CSVLogger(os.path.join(root, "csv"), name="run", version=0)
    t = trainer(root, max_epochs=3, limit_train_batches=5, limit_val_batches=2, accumulate_grad_batches=2,
                log_every_n_steps=1, enable_checkpointing=True, logger=logger,
                callbacks=[cb, every, named, plain, lr_monitor])
    t.fit(model, loader(48), loader(16))
    import csv

    with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    validated = t.validate(ckpt_path="best", dataloaders=loader(16), verbose=False)
    return {
        "module_outputs": model.seen, "callback_outputs": cb.seen, "csv_rows": rows,
        "files": {d: sorted(os.listdir(os.path.join(root, d))) for d in ("every", "named", "plain")},
        "best_k": sorted(os.path.basename(k) for k in named.best_k_models),
        "validate_best": validated, "callback_metrics": floats(t.callback_metrics),
    }


class SavedDM(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.served = 0

    def train_dataloader(self) -> DataLoader:
        self.served += 1
        return loader(24, batch_size=self.hparams.batch_size)

    def state_dict(self) -> Dict[str, Any]:
        return {"served": self.served}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.served = state_dict["served"]


class ToggledManual(ManualNet):
    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for opt in self.optimizers():
            with self.toggled_optimizer(opt):
                loss = nn.functional.mse_loss(self(x), y)
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()


def lightning_api(root: str) -> Dict[str, Any]:
    """LambdaCallback, GradientAccumulationScheduler, toggled_optimizer, LightningDataModule.load_from_checkpoint."""
    from importlib import import_module

    callbacks_module = import_module(pl.__name__ + ".callbacks")
    calls: List[str] = []
    lam = callbacks_module.LambdaCallback(
        setup=lambda trainer, pl_module, stage: calls.append(f"setup:{getattr(stage, 'value', stage)}"),
        on_train_epoch_start=lambda trainer, pl_module: calls.append(f"epoch_start:{trainer.current_epoch}"),
        on_train_batch_end=lambda trainer, pl_module, outputs, batch, batch_idx: calls.append(f"batch:{batch_idx}"),
    )
    schedule = callbacks_module.GradientAccumulationScheduler({1: 3, 2: 2})
    torch.manual_seed(0)
    model = Net("sgd", None)
    dm = SavedDM(batch_size=6)
    t = trainer(root, max_epochs=3, limit_train_batches=5, limit_val_batches=0, callbacks=[lam, schedule],
                enable_checkpointing=True)
    t.fit(model, datamodule=dm)
    path = os.path.join(root, "dm.ckpt")
    t.save_checkpoint(path)
    restored = SavedDM.load_from_checkpoint(path)
    torch.manual_seed(0)
    toggled = ToggledManual()
    trainer(root, max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(toggled, loader(32))
    return {"calls": calls, "weights": weights(model), "global_step": t.global_step,
            "restored": {"batch_size": restored.hparams.batch_size, "served": restored.served},
            "toggled_weights": weights(toggled),
            "requires_grad": [p.requires_grad for p in toggled.parameters()]}


class PropertyProbe(pl.Callback):
    """Trainer properties as hooks see them."""

    def __init__(self) -> None:
        self.seen: List[str] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append(f"fit_start evaluating={trainer.evaluating} scaler={trainer.scaler is not None} "
                         f"sampler_kwargs={trainer.distributed_sampler_kwargs} sigterm={trainer.received_sigterm}")

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append(f"train_start enable_validation={trainer.enable_validation}")

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.seen.append(f"batch {batch_idx} last={trainer.is_last_batch} evaluating={trainer.evaluating}")

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append(f"validation evaluating={trainer.evaluating} sanity={trainer.sanity_checking}")


def trainer_properties(root: str) -> Dict[str, Any]:
    probe = PropertyProbe()
    torch.manual_seed(0)
    trainer(root, max_epochs=2, limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=1,
            callbacks=[probe]).fit(Net(), loader(32), loader(8))
    no_val = PropertyProbe()
    trainer(root, max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[no_val],
            precision="16-mixed").fit(Net(), loader(32), loader(8))
    return {"with_validation": probe.seen, "without_validation": no_val.seen}


class OneCycleNet(Net):
    """OneCycleLR sized by trainer.estimated_stepping_batches; loaders owned by the module (reloaded)."""

    def __init__(self) -> None:
        super().__init__()
        self.loader_calls: List[str] = []
        self.stepping: List[float] = []

    def configure_optimizers(self) -> Any:
        total = self.trainer.estimated_stepping_batches
        self.stepping.append(float(total))
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self) -> DataLoader:
        self.loader_calls.append(f"train@{self.current_epoch}")
        return loader(40)

    def val_dataloader(self) -> DataLoader:
        self.loader_calls.append(f"val@{self.current_epoch}")
        return loader(24)


class BatchCounts(pl.Callback):
    def __init__(self) -> None:
        self.seen: List[Any] = []

    def on_sanity_check_end(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append(("sanity", [float(n) for n in trainer.num_sanity_val_batches]))

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.seen.append(("train", float(trainer.num_training_batches), [float(n) for n in trainer.num_val_batches]))


def more_loops(root: str) -> Dict[str, Any]:
    """estimated_stepping_batches, reload_dataloaders_every_n_epochs, all sanity batches, a val fraction,
    ModelCheckpoint every_n_epochs/save_on_train_epoch_end, EarlyStopping on train epoch end, test() after fit."""
    torch.manual_seed(0)
    model = OneCycleNet()
    counts = BatchCounts()
    ckpt = ModelCheckpoint(dirpath=os.path.join(root, "ck"), monitor="val_loss", every_n_epochs=2, save_top_k=-1,
                           save_on_train_epoch_end=True, filename="{epoch}")
    stop = EarlyStopping(monitor="val_loss", check_on_train_epoch_end=True, stopping_threshold=3.0)
    t = trainer(root, max_epochs=5, accumulate_grad_batches=2, reload_dataloaders_every_n_epochs=2,
                num_sanity_val_steps=-1, limit_val_batches=0.5, enable_checkpointing=True, callbacks=[counts, ckpt, stop])
    t.fit(model)
    tested = t.test(dataloaders=loader(16), verbose=False)  # no model: the best checkpoint
    return {"stepping": model.stepping, "loader_calls": model.loader_calls, "counts": counts.seen,
            "files": sorted(f for f in os.listdir(os.path.join(root, "ck")) if f.endswith(".ckpt")),
            "stopped_epoch": stop.stopped_epoch, "global_step": t.global_step, "current_epoch": t.current_epoch,
            "lr": t.optimizers[0].param_groups[0]["lr"], "weights": weights(model), "test": tested,
            "ckpt_path": os.path.basename(t.ckpt_path or "")}


def default_outputs(root: str) -> Dict[str, Any]:
    """Trainer defaults: the logger, its directories, where ModelCheckpoint writes, and a second run's version."""
    out: Dict[str, Any] = {}
    for run in ("first", "second"):
        torch.manual_seed(0)
        t = pl.Trainer(default_root_dir=root, accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2,
                       limit_val_batches=1, enable_progress_bar=False, enable_model_summary=False)
        t.fit(Net(), loader(32), loader(8))
        files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                       if f.endswith(".ckpt") or f in ("hparams.yaml", "metrics.csv"))
        out[run] = {"logger": type(t.logger).__name__, "log_dir": os.path.relpath(t.log_dir, root),
                    "best": os.path.relpath(t.checkpoint_callback.best_model_path, root), "files": files,
                    "version": t.logger.version, "name": t.logger.name}
    return out


def prediction_writer(root: str) -> Dict[str, Any]:
    """BasePredictionWriter: batch indices (a shuffled loader too), per-batch and end-of-epoch writes."""
    from importlib import import_module

    base = import_module(pl.__name__ + ".callbacks").BasePredictionWriter
    written: List[Any] = []

    class Writer(base):  # type: ignore[misc, valid-type]
        def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: Any, batch_indices: Any, batch: Any,
                               batch_idx: int, dataloader_idx: int) -> None:
            written.append(["batch", batch_idx, dataloader_idx, list(batch_indices), prediction.flatten().tolist()])

        def write_on_epoch_end(self, trainer: Any, pl_module: Any, predictions: Any, batch_indices: Any) -> None:
            written.append(["epoch", [[p.flatten().tolist() for p in per] for per in predictions], batch_indices])

    torch.manual_seed(0)
    model = MultiValNet()
    shuffled = DataLoader(dataset(10), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3))
    t = trainer(root, callbacks=[Writer("batch_and_epoch")])
    returned = t.predict(model, [shuffled, loader(6, batch_size=4, seed=1)])
    return {"written": written, "returned": [[p.flatten().tolist() for p in per] for per in returned]}


def logged_without_logger(root: str) -> Dict[str, Any]:
    """logger=False: logged_metrics still hold what would have been logged (step values too, no epoch)."""
    torch.manual_seed(0)
    model = LogNet()
    t = trainer(root, max_epochs=2, limit_train_batches=5, val_check_interval=3, log_every_n_steps=2,
                num_sanity_val_steps=0)
    t.fit(model, loader(36), loader(20))
    return {"logged_metrics": floats(t.logged_metrics), "callback_metrics": floats(t.callback_metrics)}


def lr_monitor_metrics(root: str) -> Dict[str, Any]:
    """LearningRateMonitor's values in callback_metrics (a callback's view mid-run and after fit)."""
    from importlib import import_module

    callbacks_module = import_module(pl.__name__ + ".callbacks")
    torch.manual_seed(0)
    seen: List[Dict[str, float]] = []

    class Peek(pl.Callback):
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            seen.append({k: v for k, v in floats(trainer.callback_metrics).items() if k.startswith("lr")})

    monitors = [callbacks_module.LearningRateMonitor(logging_interval="epoch"), Peek()]
    t = trainer(root, max_epochs=2, limit_train_batches=3, limit_val_batches=1, log_every_n_steps=1,
                logger=CSVLogger(os.path.join(root, "csv"), name="run", version=0), callbacks=monitors)
    t.fit(Net(scheduler="epoch"), loader(24), loader(8))
    return {"seen": seen, "after_fit": {k: v for k, v in floats(t.callback_metrics).items() if k.startswith("lr")}}


def misconfiguration(root: str) -> Dict[str, Any]:
    """validate()/test()/predict() on a module without the step (or forward) raise MisconfigurationException."""

    class Bare(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.layer(batch[0]).sum()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    out: Dict[str, Any] = {}
    for fn in ("validate", "test", "predict"):
        try:
            getattr(trainer(root), fn)(Bare(), loader(8))
            out[fn] = "ran"
        except Exception as err:  # the class name is what ports catch
            out[fn] = type(err).__name__
    return out


def _torchmetrics_module() -> Any:
    import torchmetrics

    class MetricNet(Net):
        """torchmetrics objects logged with every on_step/on_epoch combination, and computed by hand at epoch end."""

        def __init__(self) -> None:
            super().__init__()
            make = lambda: torchmetrics.MeanAbsoluteError()  # noqa: E731
            self.mae_step, self.mae_both, self.mae_epoch = make(), make(), make()
            self.mean_updated = torchmetrics.MeanMetric()  # update() only: no batch value to log per step
            self.mae_by_hand = make()
            self.val_mae_both, self.val_mae_epoch, self.val_by_hand = make(), make(), make()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            pred = self(x)
            loss = nn.functional.mse_loss(pred, y)
            for metric in (self.mae_step, self.mae_both, self.mae_epoch):
                metric(pred.detach(), y)
            self.log("mae_step_only", self.mae_step, on_step=True, on_epoch=False)
            self.log("mae_both", self.mae_both, on_step=True, on_epoch=True, prog_bar=True)
            self.log("mae_epoch_only", self.mae_epoch, on_step=False, on_epoch=True)
            self.mean_updated.update(loss.detach())
            self.log("mean_updated", self.mean_updated, on_step=True, on_epoch=True)
            self.mae_by_hand.update(pred.detach(), y)
            return loss

        def on_train_epoch_end(self) -> None:
            self.log("mae_by_hand", self.mae_by_hand.compute())
            self.mae_by_hand.reset()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            pred = self(x)
            self.val_mae_both(pred, y)
            self.log("val_mae_both", self.val_mae_both, on_step=True, on_epoch=True)
            self.val_mae_epoch.update(pred, y)
            self.log("val_mae_epoch_only", self.val_mae_epoch)
            self.val_by_hand.update(pred, y)

        def on_validation_epoch_end(self) -> None:
            self.log("val_by_hand", self.val_by_hand.compute())
            self.val_by_hand.reset()

    return MetricNet


def torchmetrics_logging(root: str) -> Dict[str, Any]:
    """torchmetrics objects in self.log: the metric dicts, what a callback sees, the CSV rows; and logger=False.

    Needs torchmetrics (Lightning's dependency, not volt's): the volt side runs in the Lightning test venv."""
    try:
        metric_net = _torchmetrics_module()
    except ImportError:
        return {"skipped": "torchmetrics is not installed"}
    out: Dict[str, Any] = {}
    for with_logger in (True, False):
        torch.manual_seed(0)
        model = metric_net()
        snap = MetricsSnapshot()
        logger = CSVLogger(os.path.join(root, "csv"), name="run", version=int(with_logger)) if with_logger else False
        t = trainer(root, max_epochs=2, limit_train_batches=5, val_check_interval=3, log_every_n_steps=2,
                    num_sanity_val_steps=1, logger=logger, callbacks=[snap])
        t.fit(model, loader(36), loader(20))
        case: Dict[str, Any] = {"callback_metrics": floats(t.callback_metrics), "logged_metrics": floats(t.logged_metrics),
                                "progress_bar_metrics": floats(t.progress_bar_metrics), "snapshots": snap.snapshots}
        if with_logger:
            import csv

            with open(os.path.join(logger.log_dir, "metrics.csv")) as f:
                case["csv_rows"] = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
        case["validate"] = t.validate(model, loader(20), verbose=False)
        out["logger" if with_logger else "no_logger"] = case
    return out


class CombinedNet(Net):
    """Records what training_step and validation_step receive from combined loaders."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: List[Any] = []

    @staticmethod
    def _describe(batch: Any) -> Any:
        if isinstance(batch, dict):
            return {k: CombinedNet._describe(v) for k, v in sorted(batch.items())}
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
            return [round(float(batch[0].sum()), 4), int(batch[0].shape[0])]
        if isinstance(batch, (list, tuple)):
            return [CombinedNet._describe(v) for v in batch]
        return None if batch is None else repr(batch)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.seen.append(["train", batch_idx, self._describe(batch)])
        parts = batch.values() if isinstance(batch, dict) else batch
        losses = [nn.functional.mse_loss(self(x), y) for x, y in (p for p in parts if p is not None)]
        return torch.stack(losses).sum()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.seen.append(["val", batch_idx, dataloader_idx, self._describe(batch)])
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))


def combined_loaders(root: str) -> Dict[str, Any]:
    """CombinedLoader in each mode (and a dict/list of loaders) for training and validation: the batches
    each step receives, the loop counters and the metric keys."""
    combined_cls = import_module_attr("utilities.combined_loader", "CombinedLoader")
    out: Dict[str, Any] = {}
    cases = {
        "dict_train": (lambda: {"a": loader(24, 8, 1), "b": loader(40, 8, 2)}, lambda: loader(8)),
        "list_train_list_val": (lambda: [loader(24, 8, 1), loader(16, 8, 2)], lambda: [loader(8, 4, 3), loader(12, 4, 4)]),
        "min_size": (lambda: combined_cls({"a": loader(24, 8, 1), "b": loader(40, 8, 2)}, "min_size"), lambda: loader(8)),
        "max_size": (lambda: combined_cls([loader(24, 8, 1), loader(40, 8, 2)], "max_size"), lambda: loader(8)),
        "max_size_cycle": (lambda: combined_cls({"a": loader(16, 8, 1), "b": loader(24, 8, 2)}, "max_size_cycle"),
                           lambda: combined_cls([loader(8, 4, 3), loader(12, 4, 4)], "sequential")),
    }
    for name, (train, val) in cases.items():
        torch.manual_seed(0)
        model = CombinedNet()
        t = trainer(root, max_epochs=2, limit_val_batches=2, num_sanity_val_steps=0)
        t.fit(model, train(), val())
        out[name] = {"seen": model.seen, "global_step": t.global_step, "num_training_batches": t.num_training_batches,
                     "callback_metrics": sorted(t.callback_metrics), "weights": weights(model)}
    try:
        trainer(root, max_epochs=1).fit(CombinedNet(), combined_cls([loader(8)], "sequential"))
        out["sequential_train"] = "ran"
    except Exception as err:
        out["sequential_train"] = type(err).__name__
    return out


def import_module_attr(path: str, name: str) -> Any:
    from importlib import import_module

    return getattr(import_module(pl.__name__ + "." + path), name)


SCENARIOS: Dict[str, Callable[[str], Dict[str, Any]]] = {
    "combined_loaders": combined_loaders,
    "logged_without_logger": logged_without_logger,
    "lr_monitor_metrics": lr_monitor_metrics,
    "misconfiguration": misconfiguration,
    "torchmetrics_logging": torchmetrics_logging,
    "prediction_writer": prediction_writer,
    "default_outputs": default_outputs,
    "more_loops": more_loops,
    "trainer_properties": trainer_properties,
    "lightning_api": lightning_api,
    "callbacks_and_files": callbacks_and_files,
    "hook_order": hook_order, "optimization": optimization, "logging": logging_metrics,
    "evaluation": evaluation, "checkpoint": checkpoint, "counters": counters,
    "manual_optimization": manual_optimization, "early_stopping_and_plateau": early_stopping_and_plateau,
    "datamodule_and_predict": datamodule_and_predict, "resume_and_batch_start_stop": resume_and_batch_start_stop,
    "bf16_mixed": bf16_mixed,
}


def main() -> None:
    out_path = sys.argv[2]
    results: Dict[str, Any] = {"engine": ENGINE, "torch": torch.__version__}
    only = [n for n in os.environ.get("VOLT_DIFF_ONLY", "").split(",") if n]  # a subset, e.g. for another venv
    for name, scenario in SCENARIOS.items():
        if only and name not in only:
            continue
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"diff-{ENGINE}-{name}-") as root:
            try:
                results[name] = scenario(root)
            except Exception as err:  # reported per scenario, so one failure does not hide the others
                import traceback

                results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
