"""Finetuning and pruning callbacks, one script body for two engines:
``python finetuning_diff_script.py volt|lightning OUT.json [SCENARIO...]`` (all scenarios by default).

Only the import block depends on the engine. Each scenario returns plain JSON (weights, learning
rates, mask sparsity, checkpoint state), which ``test_callbacks_finetuning.py`` and
``test_callbacks_pruning.py`` compare between volt and Lightning 2.6.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ENGINE = sys.argv[1] if len(sys.argv) > 1 else "volt"
if ENGINE == "volt":
    import volt as pl
    from volt.callbacks.finetuning import BackboneFinetuning, BaseFinetuning
    from volt.callbacks.model_checkpoint import ModelCheckpoint
    from volt.callbacks.pruning import ModelPruning
elif ENGINE == "lightning":
    import logging

    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import BackboneFinetuning, BaseFinetuning, ModelCheckpoint, ModelPruning

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
else:
    raise SystemExit(f"usage: {sys.argv[0]} volt|lightning OUT.json")

warnings.filterwarnings("ignore")  # the "already in the optimizer" hint and the engines' own notes
torch.set_num_threads(1)


def loader(n: int = 32, batch_size: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)),
                      batch_size=batch_size)


def trainer(root: str, **kwargs: Any) -> Any:
    defaults: Dict[str, Any] = dict(default_root_dir=root, accelerator="cpu", devices=1, logger=False,
                                    enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, num_sanity_val_steps=0)
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def weights(module: nn.Module) -> Dict[str, List[float]]:
    return {k: v.detach().flatten().tolist() for k, v in module.state_dict().items()}


def plain(value: Any) -> Any:
    """JSON-able copy of callback state (tuples become lists, tensors lists)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


class BackboneNet(pl.LightningModule):
    """A backbone (Linear + BatchNorm) and a head; the optimizer takes the trainable parameters only."""

    def __init__(self, optimizer: str = "sgd", scheduler: bool = True) -> None:
        super().__init__()
        self.optimizer_name, self.scheduler = optimizer, scheduler
        self.backbone = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh())
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_name == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=0.02)
        else:
            opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        if self.scheduler:
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)]
        return opt


class LrRecorder(pl.Callback):
    """Every param group's lr during each epoch, and which parameters train."""

    def __init__(self) -> None:
        self.lrs: List[List[float]] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def backbone_run(root: str, epochs: int, ckpt_path: Optional[str] = None, save: bool = False,
                 **kwargs: Any) -> Dict[str, Any]:
    root = tempfile.mkdtemp(dir=root)
    torch.manual_seed(0)
    model = BackboneNet(kwargs.pop("optimizer", "sgd"), kwargs.pop("scheduler", True))
    finetuning = BackboneFinetuning(**kwargs)
    recorder = LrRecorder()
    callbacks: List[Any] = [finetuning, recorder]
    if save:
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(root, "ck"), save_top_k=-1, filename="{epoch}"))
    t = trainer(root, max_epochs=epochs, callbacks=callbacks, enable_checkpointing=save)
    t.fit(model, loader(), ckpt_path=ckpt_path)
    return {"weights": weights(model), "lrs": recorder.lrs, "previous_backbone_lr": finetuning.previous_backbone_lr,
            "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
            "state": plain(finetuning.state_dict()), "global_step": t.global_step,
            **({"checkpoint_dir": os.path.join(root, "ck")} if save else {})}


def backbone(root: str) -> Dict[str, Any]:
    """BackboneFinetuning: defaults but the epoch; a lambda and ratio with alignment; an initial lr; Adam."""
    return {
        "default": backbone_run(root, 4, unfreeze_backbone_at_epoch=1),
        "aligned": backbone_run(root, 5, unfreeze_backbone_at_epoch=1, lambda_func=lambda e: 3.0,
                                backbone_initial_ratio_lr=0.2),
        "unaligned_no_bn": backbone_run(root, 4, unfreeze_backbone_at_epoch=2, lambda_func=lambda e: 3.0,
                                        should_align=False, train_bn=False, scheduler=False),
        "initial_lr_adam": backbone_run(root, 3, unfreeze_backbone_at_epoch=0, backbone_initial_lr=0.005,
                                        initial_denom_lr=4.0, optimizer="adam"),
    }


def backbone_resume(root: str) -> Dict[str, Any]:
    """Checkpoints after epochs 0 and 2 (unfreezing at 1), each resumed to epoch 4."""
    full = backbone_run(root, 4, save=True, unfreeze_backbone_at_epoch=1)
    ck = full.pop("checkpoint_dir")
    checkpoint = torch.load(os.path.join(ck, "epoch=2.ckpt"), weights_only=False)
    state = {k: plain(v) for k, v in checkpoint["callbacks"].items() if "Finetuning" in k}
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": len(g["params"])}
              for g in checkpoint["optimizer_states"][0]["param_groups"]]
    return {"full": full, "checkpoint_state": state, "checkpoint_groups": plain(groups),
            "from_epoch0": backbone_run(root, 4, os.path.join(ck, "epoch=0.ckpt"), unfreeze_backbone_at_epoch=1),
            "from_epoch2": backbone_run(root, 4, os.path.join(ck, "epoch=2.ckpt"), unfreeze_backbone_at_epoch=1)}


class FeatureFreeze(BaseFinetuning):
    """A user's subclass: freeze ``features`` (BatchNorm included), unfreeze at an epoch with a denominated lr."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def freeze_before_training(self, pl_module: Any) -> None:
        self.freeze(pl_module.backbone, train_bn=False)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Any) -> None:
        if epoch == self.at:
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, initial_denom_lr=4.0, train_bn=True)


def custom_subclass(root: str) -> Dict[str, Any]:
    torch.manual_seed(0)
    model = BackboneNet("adam", scheduler=False)
    cb, recorder = FeatureFreeze(at=1), LrRecorder()
    trainer(root, max_epochs=3, callbacks=[cb, recorder]).fit(model, loader())
    flat = [type(m).__name__ for m in BaseFinetuning.flatten_modules([model.backbone, model.head])]
    return {"weights": weights(model), "lrs": recorder.lrs, "state": plain(cb.state_dict()), "flatten": flat,
            "track_running_stats": model.backbone[1].track_running_stats}


class PruneNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.5)


class MaskRecorder(pl.Callback):
    """Zeros per pruned tensor after each epoch's pruning (runs after ModelPruning)."""

    def __init__(self) -> None:
        self.zeros: List[Dict[str, int]] = []

    def record(self, pl_module: Any) -> None:
        self.zeros.append({k: int((v == 0).sum()) for k, v in pl_module.named_buffers() if k.endswith("_mask")})

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.record(pl_module)


def pruning_run(root: str, epochs: int = 3, val: bool = False, save: bool = False,
                **kwargs: Any) -> Dict[str, Any]:
    root = tempfile.mkdtemp(dir=root)  # each run its own checkpoint directory
    torch.manual_seed(0)
    model = PruneNet()
    if kwargs.pop("only_l1", False):
        kwargs["parameters_to_prune"] = [(model.l1, "weight")]
    pruning, recorder = ModelPruning(**kwargs), MaskRecorder()
    callbacks: List[Any] = [pruning, recorder]
    if save:
        callbacks.append(ModelCheckpoint(dirpath=os.path.join(root, "ck"), save_last=True))
    t = trainer(root, max_epochs=epochs, callbacks=callbacks, enable_checkpointing=save,
                limit_val_batches=2 if val else 0)
    t.fit(model, loader(), loader(16) if val else None)
    out = {"weights": weights(model), "zeros": recorder.zeros,
           "parameters": sorted(n for n, _ in model.named_parameters())}
    if save:
        state = torch.load(os.path.join(root, "ck", "last.ckpt"), weights_only=False)["state_dict"]
        out["checkpoint"] = {k: v.flatten().tolist() for k, v in state.items()}
    return out


def pruning(root: str) -> Dict[str, Any]:
    return {
        "global_l1_lottery": pruning_run(root, pruning_fn="l1_unstructured", amount=0.3),
        "global_int_no_lottery_kept": pruning_run(root, pruning_fn="l1_unstructured", amount=5,
                                                  use_lottery_ticket_hypothesis=False, make_pruning_permanent=False,
                                                  save=True),
        "local_ln_structured": pruning_run(root, pruning_fn="ln_structured", pruning_dim=0, pruning_norm=2,
                                           amount=1, use_global_unstructured=False, only_l1=True,
                                           use_lottery_ticket_hypothesis=lambda epoch: epoch % 2 == 0),
        "local_callable_amount_saved": pruning_run(root, pruning_fn="l1_unstructured", only_l1=True,
                                                   use_global_unstructured=False,
                                                   amount=lambda epoch: [0.5, 0.0, 0.25][epoch],
                                                   apply_pruning=lambda epoch: epoch != 1, save=True),
        "random_resampled": pruning_run(root, pruning_fn="random_unstructured", amount=0.2,
                                        resample_parameters=True),
        "method_class_on_validation": pruning_run(root, pruning_fn=torch.nn.utils.prune.L1Unstructured, amount=0.1,
                                                  prune_on_train_epoch_end=False, val=True),
    }


SCENARIOS: Dict[str, Callable[[str], Dict[str, Any]]] = {
    "backbone": backbone, "backbone_resume": backbone_resume, "custom_subclass": custom_subclass,
    "pruning": pruning,
}


def main() -> None:
    results: Dict[str, Any] = {"engine": ENGINE}
    chosen = sys.argv[3:] or list(SCENARIOS)
    for name in chosen:
        scenario = SCENARIOS[name]
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"ft-{ENGINE}-{name}-") as root:
            try:
                results[name] = scenario(root)
            except Exception as err:  # reported per scenario, so one failure does not hide the others
                results[name] = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 2)
    with open(sys.argv[2], "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
