"""Lightning's demo classes through fit, validate, test and predict, under either engine.

    python demo_port_script.py lightning OUT.json
    python demo_port_script.py volt OUT.json PORTED_DIR   # PORTED_DIR holds ported_boring_classes.py
    python demo_port_script.py volt-demos OUT.json        # volt.demos.boring_classes

Under volt the demo classes come from Lightning's own ``demos/boring_classes.py`` with only its import
prefix changed (test_demo_port.py writes that file); everything else here is the same for both engines.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Dict

import torch

ENGINE = sys.argv[1]
if ENGINE == "lightning":
    import lightning.pytorch as pl
    from lightning.pytorch.demos import boring_classes as demos
    from lightning.pytorch.core.optimizer import LightningOptimizer
    from lightning.pytorch.utilities.exceptions import MisconfigurationException
else:
    if ENGINE == "volt":
        sys.path.insert(0, sys.argv[3])
        import ported_boring_classes as demos  # noqa: E402
    else:  # "volt-demos": volt's own classes of the same names
        from volt.demos import boring_classes as demos  # noqa: E402

    import volt as pl  # noqa: E402
    from volt.core.optimizer import LightningOptimizer  # noqa: E402
    from volt.utilities.exceptions import MisconfigurationException  # noqa: E402


def trainer(**kwargs: Any) -> Any:
    args = dict(max_epochs=2, limit_train_batches=8, limit_val_batches=4, limit_test_batches=5, limit_predict_batches=6,
                accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False)
    args.update(kwargs)
    return pl.Trainer(**args)


def weights(model: torch.nn.Module) -> Dict[str, Any]:
    return {k: v.detach().flatten().tolist() for k, v in model.state_dict().items()}


def outcome(call: Callable[[], Any]) -> Any:
    """The call's result, or the name of the exception it raised."""
    try:
        result = call()
    except MisconfigurationException as err:
        return {"raised": "MisconfigurationException", "also_value_error": isinstance(err, ValueError) or ENGINE == "lightning"}
    if isinstance(result, list) and result and isinstance(result[0], torch.Tensor):
        return {"predictions": len(result), "shape": list(result[0].shape), "first": result[0].flatten().tolist()}
    return result


def run_with_datamodule(model_cls: Callable[[], Any]) -> Dict[str, Any]:
    pl.seed_everything(7)
    model, dm = model_cls(), demos.BoringDataModule()
    t = trainer()
    t.fit(model, dm)
    out: Dict[str, Any] = {"global_step": t.global_step, "epoch": t.current_epoch, "weights": weights(model)}
    out["validate"] = outcome(lambda: t.validate(model, dm, verbose=False))
    out["test"] = outcome(lambda: t.test(model, dm, verbose=False))
    out["predict"] = outcome(lambda: t.predict(model, dm))  # the datamodule positionally, as Lightning accepts
    out["weights_after"] = weights(model)
    return out


def run_with_own_loaders(model_cls: Callable[[], Any]) -> Dict[str, Any]:
    pl.seed_everything(7)
    model = model_cls()
    t = trainer()
    t.fit(model)
    out: Dict[str, Any] = {"global_step": t.global_step, "epoch": t.current_epoch,
                           "lightning_optimizer": isinstance(model.optimizers(), LightningOptimizer)}
    out["validate"] = outcome(lambda: t.validate(model, verbose=False))
    out["test"] = outcome(lambda: t.test(model, verbose=False))
    predictions = outcome(lambda: t.predict(model))
    out["predict"] = {k: v for k, v in predictions.items() if k != "first"}  # own random data per call
    return out


class ListBatchModel(demos.BoringModel):
    """BoringModel on IterableBoringDataModule's 4-feature samples: a training batch is a list (one batch of
    each training loader, combined), an evaluation batch one loader's."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return {"loss": sum(self.step(part) for part in batch)}

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return {"x": self.step(batch)}

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return {"y": self.step(batch)}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self(batch)


def run_other_datamodules() -> Dict[str, Any]:
    """The data modules whose samples are drawn while iterating: counters and shapes, not values."""
    out: Dict[str, Any] = {}
    for name, model_cls, dm_cls in (("no_len", demos.BoringModel, demos.BoringDataModuleNoLen),
                                    ("iterable", ListBatchModel, demos.IterableBoringDataModule)):
        pl.seed_everything(7)
        model, dm = model_cls(), dm_cls()
        t = trainer(limit_train_batches=6, limit_val_batches=3, limit_test_batches=4, limit_predict_batches=5)
        t.fit(model, dm)
        predictions = t.predict(model, dm)
        per_loader = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        out[name] = {"global_step": t.global_step, "epoch": t.current_epoch,
                     "validate": t.validate(model, dm, verbose=False), "test": t.test(model, dm, verbose=False),
                     "predict": [[list(p.shape) for p in per] for per in per_loader]}
    return out


results = {
    "other_datamodules": run_other_datamodules(),
    "boring": run_with_datamodule(demos.BoringModel),
    "manual": run_with_datamodule(demos.ManualOptimBoringModel),
    "demo": run_with_datamodule(demos.DemoModel),
    "boring_own_loaders": run_with_own_loaders(demos.BoringModel),
    "manual_own_loaders": run_with_own_loaders(demos.ManualOptimBoringModel),
}
with open(sys.argv[2], "w") as fh:
    json.dump(results, fh)
