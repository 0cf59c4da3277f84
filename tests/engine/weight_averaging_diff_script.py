"""Weight averaging under two engines: ``python weight_averaging_diff_script.py volt|lightning OUT.json``.

Only the import block depends on the engine. Each scenario trains a small model on CPU with one of
StochasticWeightAveraging, WeightAveraging or EMAWeightAveraging and returns plain JSON (weights, lrs,
counters, checkpoint contents); ``test_callbacks_weight_averaging.py`` compares the two engines' files.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from typing import Any, Callable, Dict, List

import torch
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

ENGINE = sys.argv[1] if len(sys.argv) > 1 else "volt"
if ENGINE == "volt":
    import volt as pl
    from volt.callbacks import ModelCheckpoint
    from volt.callbacks.stochastic_weight_avg import StochasticWeightAveraging
    from volt.callbacks.weight_averaging import EMAWeightAveraging, WeightAveraging
elif ENGINE == "lightning":
    import logging

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import (EMAWeightAveraging, ModelCheckpoint, StochasticWeightAveraging,
                                             WeightAveraging)

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
else:
    raise SystemExit(f"usage: {sys.argv[0]} volt|lightning OUT.json")

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


def loader(n: int, seed: int = 0, batch_size: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


class Net(pl.LightningModule):
    """A small MLP (optionally with BatchNorm); the optimizer is picked by name."""

    def __init__(self, bn: bool = False, opt: str = "sgd", sched: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6) if bn else nn.Identity(), nn.ReLU())
        self.head = nn.Linear(6, 1)
        self.opt, self.sched = opt, sched
        self.val_weights: List[List[float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.mse_loss(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.val_weights.append(flat(self))
        self.log("val_loss", nn.functional.mse_loss(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> Any:
        if self.opt == "adam2":  # two param groups
            opt = torch.optim.Adam([{"params": self.body.parameters()}, {"params": self.head.parameters(), "lr": 0.02}],
                                   lr=0.01)
        else:
            opt = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        if self.sched:
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]
        return opt


def flat(module: nn.Module) -> List[float]:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).tolist()


def buffers(module: nn.Module) -> List[float]:
    return torch.cat([b.detach().flatten().double() for b in module.buffers()]).tolist()


class Recorder(pl.Callback):
    """Listed before the averaging callback: sees the weights it is about to see."""

    def __init__(self) -> None:
        self.lrs: List[List[float]] = []
        self.epoch_start: List[List[float]] = []
        self.after_step: List[List[float]] = []
        self._step = 0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.epoch_start.append(flat(pl_module))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step != self._step:
            self._step = trainer.global_step
            self.after_step.append(flat(pl_module))


def trainer(root: str, callbacks: List[Any], checkpoints: bool = False, **kwargs: Any) -> Any:
    return pl.Trainer(default_root_dir=root, accelerator="cpu", devices=1, logger=False,
                      enable_checkpointing=checkpoints, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, callbacks=callbacks, **kwargs)


def fit(root: str, model: Any, callback: Any, val: bool = False, checkpoint: Any = None, ckpt_path: Any = None,
        **kwargs: Any) -> Dict[str, Any]:
    rec = Recorder()
    callbacks = [rec, callback] + ([checkpoint] if checkpoint is not None else [])
    t = trainer(root, callbacks, checkpoints=checkpoint is not None, **kwargs)
    t.fit(model, loader(32), loader(16, seed=1) if val else None, ckpt_path=ckpt_path)
    return {"final": flat(model), "lrs": rec.lrs, "epoch_start": rec.epoch_start, "after_step": rec.after_step,
            "global_step": t.global_step, "current_epoch": t.current_epoch, "max_epochs": t.max_epochs,
            "val_weights": model.val_weights}


def swa_cos_replaces_scheduler(root: str) -> Dict[str, Any]:
    torch.manual_seed(0)
    swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=2)
    out = fit(root, Net(sched=True), swa, max_epochs=5)
    out["n_averaged"] = int(swa.n_averaged)
    return out


def swa_linear_fraction(root: str) -> Dict[str, Any]:
    torch.manual_seed(1)
    swa = StochasticWeightAveraging(swa_lrs=[0.001, 0.004], swa_epoch_start=0.5, annealing_epochs=1,
                                    annealing_strategy="linear", avg_fn=lambda a, m, n: 0.25 * a + 0.75 * m)
    out = fit(root, Net(opt="adam2"), swa, max_epochs=4)
    out["n_averaged"] = int(swa.n_averaged)
    return out


def swa_batchnorm(root: str, val: bool = True) -> Dict[str, Any]:
    torch.manual_seed(2)
    model = Net(bn=True)
    swa = StochasticWeightAveraging(swa_lrs=0.05, swa_epoch_start=3, annealing_epochs=1)
    out = fit(root, model, swa, val=val, max_epochs=4)
    bn = model.body[1]
    out.update(running_mean=bn.running_mean.tolist(), running_var=bn.running_var.tolist(),
               num_batches_tracked=int(bn.num_batches_tracked), momentum=bn.momentum, n_averaged=int(swa.n_averaged))
    return out


def swa_resume(root: str) -> Dict[str, Any]:
    def run(sub: str, ckpt: Any = None) -> Dict[str, Any]:
        torch.manual_seed(0)
        swa = StochasticWeightAveraging(swa_lrs=0.02, swa_epoch_start=2, annealing_epochs=3)
        mc = ModelCheckpoint(dirpath=os.path.join(root, sub), every_n_epochs=1, save_top_k=-1)
        return fit(root, Net(sched=True), swa, checkpoint=mc, ckpt_path=ckpt, max_epochs=5)

    full = run("full")
    path = os.path.join(root, "full", "epoch=2-step=12.ckpt")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt["callbacks"]["StochasticWeightAveraging"]
    resumed = run("resumed", path)
    return {"full": full["final"], "full_lrs": full["lrs"], "resumed": resumed["final"], "resumed_lrs": resumed["lrs"],
            "state_keys": sorted(state), "n_averaged": state["n_averaged"],
            "latest_update_epoch": state["latest_update_epoch"], "scheduler_keys": sorted(state["scheduler_state"]),
            "average_model": flat_state(state["average_model_state"]),
            "lr_scheduler_types": sorted(ckpt["lr_schedulers"][0]) if ckpt["lr_schedulers"] else []}


def flat_state(state: Dict[str, torch.Tensor]) -> Dict[str, List[float]]:
    return {k: v.flatten().double().tolist() for k, v in state.items()}


def weight_averaging_accumulated(root: str) -> Dict[str, Any]:
    torch.manual_seed(3)
    wa = WeightAveraging()
    mc = ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), every_n_epochs=1, save_top_k=-1)
    out = fit(root, Net(), wa, val=True, checkpoint=mc, max_epochs=3, accumulate_grad_batches=3)
    ckpt = torch.load(os.path.join(root, "ckpt", "epoch=1-step=4.ckpt"), map_location="cpu", weights_only=False)
    out.update(keys=sorted(k for k in ckpt if k not in ("pytorch-lightning_version", "volt_version", "volt_resume")),
               state_dict=flat_state(ckpt["state_dict"]), current_model_state=flat_state(ckpt["current_model_state"]),
               averaging_state=flat_state(ckpt["averaging_state"]), callback_state=ckpt["callbacks"]["WeightAveraging"])
    return out


def ema_batchnorm(root: str) -> Dict[str, Any]:
    torch.manual_seed(4)
    model = Net(bn=True)
    ema = EMAWeightAveraging(decay=0.8, update_every_n_steps=2, update_starting_at_step=1, update_starting_at_epoch=1)
    out = fit(root, model, ema, val=True, max_epochs=3)
    out["buffers"] = buffers(model)
    return out


def multi_avg_fn_without_buffers(root: str) -> Dict[str, Any]:
    torch.manual_seed(5)
    model = Net(bn=True)
    wa = WeightAveraging(use_buffers=False, multi_avg_fn=get_ema_multi_avg_fn(0.7))
    out = fit(root, model, wa, max_epochs=2)
    out["buffers"] = buffers(model)
    return out


def ema_resume(root: str) -> Dict[str, Any]:
    def run(sub: str, ckpt: Any = None) -> List[float]:
        torch.manual_seed(6)
        ema = EMAWeightAveraging(decay=0.7)
        mc = ModelCheckpoint(dirpath=os.path.join(root, sub), every_n_epochs=1, save_top_k=-1)
        return fit(root, Net(), ema, checkpoint=mc, ckpt_path=ckpt, max_epochs=4)["final"]

    return {"full": run("full"), "resumed": run("resumed", os.path.join(root, "full", "epoch=1-step=8.ckpt"))}


SCENARIOS: Dict[str, Callable[[str], Dict[str, Any]]] = {
    "swa_cos_replaces_scheduler": swa_cos_replaces_scheduler,
    "swa_linear_fraction": swa_linear_fraction,
    "swa_batchnorm": swa_batchnorm,
    "swa_batchnorm_no_validation": lambda root: swa_batchnorm(root, val=False),
    "swa_resume": swa_resume,
    "weight_averaging_accumulated": weight_averaging_accumulated,
    "ema_batchnorm": ema_batchnorm,
    "multi_avg_fn_without_buffers": multi_avg_fn_without_buffers,
    "ema_resume": ema_resume,
}


def main() -> None:
    results: Dict[str, Any] = {"engine": ENGINE}
    for name, scenario in SCENARIOS.items():
        with tempfile.TemporaryDirectory(prefix=f"wa-{ENGINE}-{name}-") as root:
            try:
                results[name] = scenario(root)
            except Exception as err:  # reported per scenario, so one failure does not hide the others
                import traceback

                results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
