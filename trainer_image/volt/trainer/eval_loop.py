"""Validation, test and predict loops (the setup and teardown they share with fit: ``stage.py``).

Hook order (see fit_loop.py for where validation sits inside fit):

    validate()/test():  setup(stage) -> <evaluation loop> -> teardown(stage)
    <evaluation loop>:  on_{stage}_model_eval, on_{stage}_start, on_epoch_start (1.x), on_{stage}_epoch_start,
                        per batch: transfer hooks, on_{stage}_batch_start, {stage}_step, {stage}_step_end (1.x),
                                   on_{stage}_batch_end
                        {stage}_epoch_end(outputs) (1.x), on_{stage}_epoch_end, on_epoch_end (1.x),
                        on_{stage}_end, on_{stage}_model_train (only inside fit)
    predict():          setup("predict"), on_predict_model_eval, on_predict_start, on_predict_epoch_start,
                        per batch: transfer hooks, on_predict_batch_start, predict_step, on_predict_batch_end,
                        on_predict_epoch_end, on_predict_end, teardown("predict")
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch
import torch.distributed as dist

from volt.module import LightningModule
from volt.trainer.data import iterate, set_sampler_epoch
from volt.trainer.profiling import ProfiledBatches
from volt.trainer.stage import setup_stage, teardown_stage
from volt.utilities import move_data_to_device
from volt.utilities.exceptions import MisconfigurationException
from volt.utilities.model_helpers import is_overridden

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer

_STEP = {"validate": "validation", "test": "test", "sanity_check": "validation"}


def resolve_transfer_hooks(trainer: "Trainer") -> List[Any]:
    """The three batch-transfer hooks, or [] when none is overridden (resolved once per run)."""
    from volt.datamodule import LightningDataModule
    from volt.trainer.data import defines

    hooks = trainer.run_state.transfer_hooks
    if hooks is None:  # the datamodule's hooks win over the module's
        dm = trainer.datamodule
        hooks = []
        custom = False
        for name in ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer"):
            if defines(dm, name, LightningDataModule):
                hooks.append(getattr(dm, name))
                custom = True
            else:
                hooks.append(getattr(trainer.lightning_module_ref, name))
                custom = custom or trainer.module_overrides(name)
        hooks = trainer.run_state.transfer_hooks = hooks if custom else []
    return hooks


def transfer_batch(trainer: "Trainer", batch: Any, dataloader_idx: int) -> Any:
    """on_before_batch_transfer -> transfer_batch_to_device -> on_after_batch_transfer (datamodule wins)."""
    hooks = trainer.run_state.transfer_hooks
    if hooks is None:
        hooks = resolve_transfer_hooks(trainer)
    if not hooks:  # the defaults: just move the tensors
        return trainer.precision_plugin.convert_input(move_data_to_device(batch, trainer.strategy.root_device))
    batch = hooks[0](batch, dataloader_idx)
    batch = hooks[1](batch, trainer.strategy.root_device, dataloader_idx)
    batch = hooks[2](batch, dataloader_idx)
    return trainer.precision_plugin.convert_input(batch)


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
def run_validation_in_fit(trainer: "Trainer", num_batches: List[float], sanity: bool = False) -> None:
    """The validation loop inside fit (sanity check or a val_check_interval point)."""
    module = trainer.lightning_module_ref
    n_reload = trainer.reload_dataloaders_every_n_epochs
    if not sanity and n_reload and trainer.current_epoch % n_reload == 0 and trainer.current_epoch > 0 \
            and trainer.run_state.val_loaded_epoch != trainer.current_epoch:
        trainer.val_dataloaders = trainer.request_loaders("val")
        trainer.num_val_batches = num_batches = trainer.limited_batches("val", trainer.val_dataloaders)
        trainer.run_state.val_loaded_epoch = trainer.current_epoch
    prev_stage = trainer.state.stage
    if not sanity:
        trainer.call_module("on_validation_model_zero_grad", always=True)
        trainer.state.stage = "validate"
    _evaluation_loop(trainer, "validate", trainer.val_dataloaders, num_batches, in_fit=True)
    trainer.call_module("on_validation_model_train", always=True)
    trainer.state.stage = prev_stage if not sanity else "sanity_check"
    trainer._logger_connector.active = trainer._logger_connector.train_results


def run_evaluate(trainer: "Trainer", ckpt_path: Optional[str]) -> List[Dict[str, float]]:
    """trainer.validate() / trainer.test()."""
    fn = trainer.state.fn
    step_name = _STEP[fn]
    module = trainer.lightning_module_ref
    if not trainer.module_overrides(f"{step_name}_step"):
        raise MisconfigurationException(f"trainer.{fn}() needs {type(module).__name__}.{step_name}_step() to be defined")
    setup_stage(trainer, fn, ckpt_path)
    loader_stage = "val" if fn == "validate" else "test"
    loaders = trainer.request_loaders(loader_stage)
    if not loaders:
        raise MisconfigurationException(
            f"trainer.{fn}() found no data: pass dataloaders=..., a datamodule with {loader_stage}_dataloader(), "
            f"or define {loader_stage}_dataloader() in the LightningModule"
        )
    num = trainer.limited_batches(loader_stage, loaders)
    if fn == "validate":
        trainer.val_dataloaders, trainer.num_val_batches = loaders, num
    else:
        trainer.test_dataloaders, trainer.num_test_batches = loaders, num
    trainer.state.stage = fn
    results = _evaluation_loop(trainer, fn, loaders, num, in_fit=False)
    teardown_stage(trainer, fn)
    if getattr(trainer, "_verbose", False) and trainer.is_global_zero:
        _print_results(fn, results)
    return results


def _batches(trainer: "Trainer", stage: str, loader: Any, limit: float) -> Any:
    """``iterate(loader, limit)``; with a profiler, each fetch is the action ``get_<stage>_batch``.

    The sampler's epoch is the training epoch's, as in Lightning (a shuffled evaluation loader
    follows the training progress; a custom sampler gets ``set_epoch`` forwarded).
    """
    set_sampler_epoch(loader, trainer.current_epoch)
    if trainer.run_state.profiling:
        loader = ProfiledBatches(trainer.profiler, f"get_{stage}_batch", loader)
    return iterate(loader, limit)


def _grad_context(trainer: "Trainer", in_fit: bool) -> Any:
    """no_grad or inference_mode for an evaluation or prediction loop, as Lightning picks them.

    Validation inside fit() runs under no_grad: what a callback creates there (a pruning
    mask, a buffer) is used by the next training step, and an inference tensor cannot be
    saved for backward. With gloo, collectives on inference tensors misbehave: no_grad too.
    """
    if in_fit or not trainer.inference_mode:
        return torch.no_grad
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "gloo":
        return torch.no_grad
    return torch.inference_mode


def _evaluation_loop(trainer: "Trainer", stage: str, loaders: List[Any], num_batches: List[float],
                     in_fit: bool) -> List[Dict[str, float]]:
    step_name = _STEP[stage]
    hook_stage = "validation" if step_name == "validation" else "test"
    module = trainer.lightning_module_ref
    connector = trainer._logger_connector
    connector.reset_eval()
    connector.active = connector.eval_results
    collect = trainer.module_overrides(f"{step_name}_epoch_end")
    step_end = trainer.module_overrides(f"{step_name}_step_end")
    step_fn = f"{step_name}_step"
    multi = len(loaders) > 1
    outputs: List[List[Any]] = [[] for _ in loaders]
    log_steps = not trainer.sanity_checking
    trainer.call_module(f"on_{hook_stage}_model_eval", always=True)
    trainer.call_hook(f"on_{hook_stage}_start")
    trainer.call_hook("on_epoch_start")
    trainer.call_hook(f"on_{hook_stage}_epoch_start")
    with _grad_context(trainer, in_fit)():
        for dl_idx, (loader, limit) in enumerate(zip(loaders, num_batches)):
            if limit == 0:
                continue
            connector.dataloader_suffix = f"/dataloader_idx_{dl_idx}" if multi else ""
            extra = (dl_idx,) if multi else ()
            for batch_idx, batch, _ in _batches(trainer, stage, loader, limit):
                batch = transfer_batch(trainer, batch, dl_idx)
                connector.set_batch(batch)
                trainer.call_hook(f"on_{hook_stage}_batch_start", batch, batch_idx, *extra)
                out = trainer.call_step(step_fn, batch, batch_idx, *extra)
                if step_end:
                    out = trainer.call_module(f"{step_name}_step_end", out)
                trainer.call_hook(f"on_{hook_stage}_batch_end", out, batch, batch_idx, *extra)
                if log_steps:
                    connector.flush_eval_step(dl_idx)
                if collect and out is not None:
                    outputs[dl_idx].append(out)
        connector.dataloader_suffix = ""
        connector.preview_epoch(connector.eval_results)  # epoch-end hooks read the epoch values, as in Lightning
        if collect:
            trainer.call_module(f"{step_name}_epoch_end", outputs if multi else outputs[0])
        trainer.call_hook(f"on_{hook_stage}_epoch_end")
        trainer.call_hook("on_epoch_end")
    step = max(trainer.progress.batches_that_stepped - 1, 0)
    connector.finish_epoch(connector.eval_results, step)
    results = _results_per_loader(connector, len(loaders))
    trainer.call_hook(f"on_{hook_stage}_end")
    if not in_fit:
        trainer.call_module(f"on_{hook_stage}_model_train", always=True)
    return results


def _results_per_loader(connector: Any, n: int) -> List[Dict[str, float]]:
    per: List[Dict[str, float]] = [{} for _ in range(max(n, 1))]
    metrics = [m for m in connector.eval_results.metrics.values() if m.epoch_value is not None]
    if not metrics:
        return per
    values = torch.stack([m.epoch_value.detach().float().cpu().reshape(()) for m in metrics]).tolist()
    for m, v in zip(metrics, values):
        name = m.name.split("/dataloader_idx_")[0] + ("_epoch" if m.on_step else "")
        if "/dataloader_idx_" in m.name:
            idx = int(m.name.rsplit("/dataloader_idx_", 1)[1])
            per[idx][f"{name}/dataloader_idx_{idx}"] = v
        else:  # logged without a dataloader suffix: shared by every loader
            for d in per:
                d[name] = v
    return per


def _print_results(fn: str, results: List[Dict[str, float]]) -> None:
    for i, res in enumerate(results):
        title = f"{fn} metrics" + (f" (dataloader {i})" if len(results) > 1 else "")
        width = max([len(k) for k in res] + [len(title)])
        print("-" * (width + 16))
        print(title)
        for k, v in sorted(res.items()):
            print(f"  {k:<{width}}  {v:.6g}")
        print("-" * (width + 16))


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------
class PredictLoopState:
    """``trainer.predict_loop``: what Lightning's prediction writers read.

    ``current_batch_indices``: the dataset indices of the batch being predicted, and
    ``epoch_batch_indices`` (one list per dataloader) those of every batch so far; both only
    when a ``BasePredictionWriter`` is attached (the loaders are then rebuilt around a
    recording batch sampler) and the loader is a DataLoader with a batch sampler.
    """

    def __init__(self) -> None:
        self.current_batch_indices: Optional[List[int]] = None
        self.epoch_batch_indices: List[List[List[int]]] = []
        self._predictions: List[List[Any]] = []

    @property
    def predictions(self) -> List[Any]:
        """The kept predictions (``return_predictions``): a list, or one list per dataloader when several."""
        return self._predictions[0] if len(self._predictions) == 1 else self._predictions


class _RecordingBatchSampler:
    """Wraps a batch sampler and remembers the indices of each batch it yields (per iteration)."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, "sampler", None)  # where set_epoch is found
        self.seen: List[List[int]] = []

    def __iter__(self) -> Any:
        self.seen = []
        for indices in self.batch_sampler:
            self.seen.append(list(indices))
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)


def _recording(loader: Any) -> Any:
    """``loader`` rebuilt around a _RecordingBatchSampler, or None where indices cannot be known."""
    from torch.utils.data import DataLoader

    if type(loader) is not DataLoader or loader.batch_sampler is None:
        return None
    workers = loader.num_workers
    return DataLoader(
        loader.dataset, batch_sampler=_RecordingBatchSampler(loader.batch_sampler), num_workers=workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator, prefetch_factor=loader.prefetch_factor if workers else None,
        persistent_workers=loader.persistent_workers if workers else False, pin_memory_device=loader.pin_memory_device,
    )


def run_predict(trainer: "Trainer", ckpt_path: Optional[str]) -> Optional[List[Any]]:
    module = trainer.lightning_module_ref
    if not trainer.module_overrides("predict_step") and not is_overridden("forward", module, LightningModule):
        raise MisconfigurationException(
            f"trainer.predict() needs {type(module).__name__}.predict_step() or forward() to be defined "
            "(the default predict_step returns self(batch))"
        )
    setup_stage(trainer, "predict", ckpt_path)
    loaders = trainer.request_loaders("predict")
    if not loaders:
        raise MisconfigurationException(
            "trainer.predict() found no data: pass dataloaders=..., a datamodule with predict_dataloader(), "
            "or define predict_dataloader() in the LightningModule"
        )
    num = trainer.limited_batches("predict", loaders)
    trainer.predict_dataloaders, trainer.num_predict_batches = loaders, num
    trainer.state.stage = "predict"
    keep = trainer._return_predictions
    multi = len(loaders) > 1
    predictions: List[List[Any]] = [[] for _ in loaders]
    state = trainer.predict_loop = PredictLoopState()
    state._predictions = predictions
    from volt.callbacks.prediction_writer import BasePredictionWriter

    recorded = ([_recording(dl) for dl in loaders] if any(isinstance(cb, BasePredictionWriter) for cb in trainer.callbacks)
                else [None] * len(loaders))
    state.epoch_batch_indices = [[] for _ in loaders]
    trainer.call_module("on_predict_model_eval", always=True)
    trainer.call_hook("on_predict_start")
    trainer.call_hook("on_predict_epoch_start")
    with _grad_context(trainer, in_fit=False)():
        for dl_idx, (loader, limit) in enumerate(zip(loaders, num)):
            extra = (dl_idx,) if multi else ()
            recorder = recorded[dl_idx]
            for batch_idx, batch, _ in _batches(trainer, "predict", recorder or loader, limit):
                if recorder is not None:  # the sampler ran ahead at most by the prefetched batches
                    state.current_batch_indices = recorder.batch_sampler.seen[batch_idx]
                    state.epoch_batch_indices[dl_idx].append(state.current_batch_indices)
                batch = transfer_batch(trainer, batch, dl_idx)
                trainer.call_hook("on_predict_batch_start", batch, batch_idx, *extra)
                out = trainer.call_step("predict_step", batch, batch_idx, *extra)
                trainer.call_hook("on_predict_batch_end", out, batch, batch_idx, *extra)
                if keep:
                    predictions[dl_idx].append(out)
    trainer.call_hook("on_predict_epoch_end")
    trainer.call_hook("on_predict_end")
    teardown_stage(trainer, "predict")
    if not keep:
        return None
    return predictions if multi else predictions[0]
