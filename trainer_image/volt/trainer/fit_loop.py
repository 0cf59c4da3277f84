"""The fit loop, top to bottom. Hook order (a callback's hook runs before the module's):

    fit(model)
      strategy.setup_environment()
      prepare_data()                    local rank 0 per node (global rank 0 if prepare_data_per_node=False)
      setup("fit")                      datamodule, callbacks, module
      configure_model()
      [ckpt_path: module.on_load_checkpoint, weights, callback states]
      strategy.setup(model)             move to device, wrap (DDP)
      configure_optimizers()
      on_fit_start
      [ckpt_path: optimizers, schedulers, loss scaler, Progress]
      on_sanity_check_start             num_sanity_val_steps batches of the validation loop
        <validation loop>
      on_sanity_check_end
      train_dataloader()
      on_train_start
      for epoch:
        on_epoch_start                  (1.x)
        on_train_epoch_start
        for batch:
          on_before_batch_transfer, transfer_batch_to_device, on_after_batch_transfer
          on_batch_start                (1.x)
          on_train_batch_start          the module returning -1 ends the epoch
          automatic optimization, per optimizer (per TBPTT split):
            optimizer_step(epoch, batch_idx, optimizer, closure)        on the last batch of an accumulation window
              closure: training_step -> training_step_end (1.x)
                       -> on_before_zero_grad -> optimizer_zero_grad    first batch of the window
                       -> on_before_backward -> backward -> on_after_backward
              on_before_optimizer_step -> configure_gradient_clipping -> optimizer.step()
            lr_scheduler_step           interval="step", every `frequency` steps
            (other batches of the window run the closure without the step, DDP sync off)
          manual optimization: training_step (it calls manual_backward and optimizer.step)
          on_train_batch_end(outputs)
          on_batch_end                  (1.x)
          <validation loop>             when val_check_interval says so
        <validation loop>               after the last batch (check_val_every_n_epoch)
        training_epoch_end(outputs)     (1.x, only when overridden)
        on_train_epoch_end              callbacks, module, then ModelCheckpoint/EarlyStopping
        on_epoch_end                    (1.x)
        lr_scheduler_step               interval="epoch"
      on_train_end
      on_fit_end
      teardown("fit")                   callbacks, module, datamodule

    <validation loop> (eval_loop.py):
      on_validation_model_zero_grad (in fit), on_validation_model_eval, on_validation_start,
      on_epoch_start (1.x), on_validation_epoch_start,
      per batch: transfer hooks, on_validation_batch_start, validation_step, validation_step_end (1.x),
                 on_validation_batch_end,
      validation_epoch_end(outputs) (1.x), on_validation_epoch_end, on_epoch_end (1.x),
      on_validation_end, on_validation_model_train (in fit)
"""
from __future__ import annotations

import inspect
import itertools
import logging
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import torch

from torch.utils.data import DataLoader

from volt.module import LightningModule
from volt.precision import _TRUE_DTYPES, Precision
from volt.resume import capture_rng_state, restore_rng_state, resume_epoch_iterator
from volt.resize import redealt_epoch
from volt.trainer import checkpoint_connector
from volt.trainer.compiled_step import CaptureFailed, CompileStats, StepFacts, build_step, capture_blocker
from volt.trainer.data import INF, iterate, set_sampler_epoch
from volt.strategies.single import SingleDeviceStrategy
from volt.trainer.eval_loop import resolve_transfer_hooks, run_validation_in_fit, transfer_batch
from volt.trainer.optimizers import LightningOptimizer, parse_optimizers
from volt.trainer.profiling import ProfiledBatches, action
from volt.trainer.run_state import HotPath, RunState
from volt.trainer.stage import setup_stage, teardown_stage
from volt.utilities import apply_to_tensors, move_data_to_device

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)


def run_fit(trainer: "Trainer", ckpt_path: Optional[str]) -> None:
    module = trainer.lightning_module_ref
    assert module is not None
    if not trainer.module_overrides("training_step"):
        raise ValueError(f"{type(module).__name__} has no training_step(); define training_step(self, batch, batch_idx) to fit")
    checkpoint = setup_stage(trainer, "fit", ckpt_path)
    trainer.run_state.train_loader_loaded = False  # estimated_stepping_batches may load it early
    _setup_optimizers(trainer, module)
    trainer.call_hook("on_fit_start")
    _log_hyperparams(trainer)
    if checkpoint is not None:
        _restore_training(trainer, checkpoint)

    trainer.val_dataloaders = trainer.request_loaders("val") if _has_validation(trainer) else []
    trainer.num_val_batches = trainer.limited_batches("val", trainer.val_dataloaders)
    if trainer.num_sanity_val_steps and checkpoint is None:
        _run_sanity_check(trainer)

    if not trainer.run_state.train_loader_loaded:
        _load_train_dataloader(trainer)
    trainer.state.stage = "train"
    module.train()
    trainer.call_hook("on_train_start")
    _prepare_hot_path(trainer, module)
    run_epoch = _run_train_epoch
    if trainer.run_state.profiling:
        run_epoch = action(trainer.profiler, "run_training_epoch", _run_train_epoch)
    while not _fit_done(trainer):
        run_epoch(trainer)
        if trainer.progress.epoch_batches_done:
            trainer.progress.start_epoch(trainer.current_epoch + 1)
        else:  # stopped mid-epoch (max_steps, should_stop): current_epoch stays the last one run
            break
    trainer.call_hook("on_train_end")
    trainer.call_hook("on_fit_end")
    for logger in trainer.loggers:
        logger.save()
    teardown_stage(trainer, "fit")


# --------------------------------------------------------------------------------------------
# setup
# --------------------------------------------------------------------------------------------
def _restore_training(trainer: "Trainer", checkpoint: Dict[str, Any]) -> None:
    """resume: optimizers, schedulers, loss scaler and Progress from the checkpoint.

    After on_fit_start, as Lightning: a callback may reshape the optimizers there (BaseFinetuning
    re-adds its param groups) before their saved states load.
    """
    checkpoint_connector.restore_training_state(trainer, checkpoint)
    _finish_saved_epoch(trainer, checkpoint)
    if trainer.is_global_zero:  # one stable line for operators and e2e checks, logging or not
        print(f"volt: resumed from checkpoint {trainer.ckpt_path} at epoch {trainer.current_epoch}, "
              f"global step {trainer.global_step}", file=sys.stderr, flush=True)


def _setup_optimizers(trainer: "Trainer", module: LightningModule) -> None:
    run: RunState = trainer.run_state
    trainer.optimizers, trainer.lr_scheduler_configs = parse_optimizers(
        trainer.call_module("configure_optimizers", always=True)
    )
    trainer._lightning_optimizers = [LightningOptimizer(o, trainer) for o in trainer.optimizers]
    if not trainer.optimizers and module.automatic_optimization:
        raise ValueError("configure_optimizers() returned None: automatic optimization needs an optimizer")
    multi = len(trainer.optimizers) > 1
    params = inspect.signature(module.training_step).parameters
    run.step_takes_optimizer_idx = "optimizer_idx" in params
    run.step_takes_hiddens = "hiddens" in params
    if module.automatic_optimization and multi and not run.step_takes_optimizer_idx:
        raise ValueError(
            f"configure_optimizers() returned {len(trainer.optimizers)} optimizers: use manual optimization "
            "(self.automatic_optimization = False) or the 1.x form training_step(self, batch, batch_idx, optimizer_idx)"
        )
    if not module.automatic_optimization and trainer.gradient_clip_val:
        raise ValueError(
            "Trainer(gradient_clip_val=...) does not apply under manual optimization: call "
            "self.clip_gradients(opt, gradient_clip_val=...) in training_step instead"
        )
    if not module.automatic_optimization and trainer.current_accumulation != 1:
        raise ValueError(
            "Trainer(accumulate_grad_batches=...) does not apply under manual optimization: accumulate in training_step"
        )
    step_params = inspect.signature(module.optimizer_step).parameters
    run.legacy_optimizer_step = "optimizer_idx" in step_params
    run.collect_train_outputs = trainer.module_overrides("training_epoch_end") or any(
        _takes_outputs(cb) for cb in trainer.callbacks_for("on_train_epoch_end")
    )
    run.silent = frozenset(
        h for h in _PER_STEP_HOOKS if not trainer.callbacks_for(h) and not trainer.module_overrides(h)
    )
    # Detaching step outputs costs a dict per step: do it only when a hook will read them
    # (built-in callbacks that never do are marked with callbacks.base.ignores_outputs).
    run.train_outputs_needed = bool(
        run.collect_train_outputs
        or any(not getattr(cb.on_train_batch_end, "_volt_ignores_outputs", False)
               for cb in trainer.callbacks_for("on_train_batch_end"))
        or trainer.module_overrides("on_train_batch_end")
    )


_PER_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end", "on_batch_end", "on_before_zero_grad",
                   "on_before_backward", "on_after_backward", "on_before_optimizer_step")


def _prepare_hot_path(trainer: "Trainer", module: LightningModule) -> None:
    run: RunState = trainer.run_state
    overrides = trainer.module_overrides
    silent = run.silent
    plugin = trainer.precision_plugin
    hot = HotPath()
    hot.device = trainer.strategy.root_device
    # transfer_batch with no transfer hooks and no input cast is move_data_to_device
    hot.plain_transfer = (not resolve_transfer_hooks(trainer) and type(plugin).convert_input is Precision.convert_input
                          and plugin.precision not in _TRUE_DTYPES)
    hot.batch_start = bool(trainer.callbacks_for("on_batch_start")) or overrides("on_batch_start")
    # module.automatic_optimization is a property a subclass may override; otherwise read its field
    hot.plain_auto = type(module).automatic_optimization is LightningModule.automatic_optimization
    hot.step_end = overrides("training_step_end")
    hot.zero_grad_hook = overrides("optimizer_zero_grad")
    hot.legacy_step = run.legacy_optimizer_step
    hot.optimizer_step_hook = overrides("optimizer_step")
    hot.clip_hook = overrides("configure_gradient_clipping")
    # Trainer._run_backward with nothing to call but loss.backward()
    hot.plain_backward = ("on_before_backward" in silent and "on_after_backward" in silent
                          and not overrides("backward") and plugin.scaler is None)
    if trainer.run_state.profiling:  # every step goes through the (profiled) dispatch, as Lightning records it
        hot.plain_backward, hot.optimizer_step_hook = False, True
    hot.closure = _TrainingClosure(trainer, hot)
    run.direct_training_step = type(trainer.strategy).training_step is SingleDeviceStrategy.training_step
    # _run_simple_epoch: the whole epoch in one frame when every hook and option in the way is
    # unused (the typical config). Each condition is a branch of the general path it skips.
    opts = trainer.optimizers
    hot.simple = bool(
        not trainer.run_state.profiling and run.direct_training_step and hot.plain_auto
        and len(opts) == 1 and not isinstance(opts[0], torch.optim.LBFGS)
        and not run.step_takes_optimizer_idx and not run.step_takes_hiddens
        and not (module.truncated_bptt_steps or 0)
        and not (hot.batch_start or hot.step_end or hot.zero_grad_hook or hot.optimizer_step_hook or hot.clip_hook)
        and hot.plain_backward  # no backward hooks, no backward override, no loss scaler
        and {"on_train_batch_start", "on_before_zero_grad", "on_before_optimizer_step"} <= silent
        and type(plugin).optimizer_step is Precision.optimizer_step
    )
    hot.optimizer = opts[0] if hot.simple else None
    # The built-in plugin's autocast is one object for the run: entering and leaving it restores
    # the previous state each time, and building one per step (its __init__ validates every
    # argument) is most of its cost. A plugin's own forward_context() is called every step.
    builtin_context = type(plugin).forward_context is Precision.forward_context
    hot.autocast = plugin.forward_context() if builtin_context and plugin._autocast_dtype is not None else None
    hot.step_context = None if builtin_context else plugin
    hot.batch_end_1x = "on_batch_end" not in silent
    hot.batch_end_callbacks = tuple(cb.on_train_batch_end for cb in trainer.callbacks_for("on_train_batch_end"))
    hot.batch_end_module = overrides("on_train_batch_end")
    run.hot = hot
    run.compiled_step = _compiled_step(trainer, module)


def _compiled_step(trainer: "Trainer", module: LightningModule) -> Optional[Callable[..., Any]]:
    """Trainer(compile=...): the function that runs the whole automatic step, or None (the eager path).

    Whether the step can be captured is decided here once, from the run's hooks and settings
    (compiled_step.capture_blocker); the reason it cannot is logged once.
    """
    setting = trainer.config.compile
    stats = trainer.compile_stats = CompileStats(mode=setting.mode)
    if not setting.enabled:
        return None
    run: RunState = trainer.run_state
    plugin = trainer.precision_plugin
    overrides = trainer.module_overrides
    opts = trainer.optimizers
    facts = StepFacts(
        automatic_optimization=bool(module.automatic_optimization),
        optimizers=len(opts),
        closure_optimizer=bool(opts) and isinstance(opts[0], torch.optim.LBFGS),
        step_signature=("training_step takes optimizer_idx (1.x)" if run.step_takes_optimizer_idx
                        else "truncated backpropagation through time" if (module.truncated_bptt_steps or 0) > 0
                        else None),
        single_device=run.direct_training_step,
        strategy=type(trainer.strategy).__name__,
        profiling=run.profiling,
        loss_scaler=plugin.scaler is not None,
        own_precision_context=(type(plugin).forward_context is not Precision.forward_context
                               or type(plugin).optimizer_step is not Precision.optimizer_step),
        step_hooks=tuple(h for h in ("on_before_zero_grad", "on_before_backward", "on_after_backward",
                                     "on_before_optimizer_step") if h not in run.silent),
        module_overrides=tuple(m for m in ("training_step_end", "backward", "optimizer_step", "optimizer_zero_grad")
                               if overrides(m)),
        host_sync=tuple(name for name, on in (("track_grad_norm", trainer.track_grad_norm != -1),
                                              ("terminate_on_nan", trainer.terminate_on_nan)) if on),
        accumulation=trainer.accumulate_grad_batches,
        lr_schedulers=bool(trainer.lr_scheduler_configs),
    )
    reason = capture_blocker(facts, setting)
    if reason is not None:
        stats.fall_back(reason)
        log.warning("Trainer(compile=%r): the training step runs eagerly: %s", setting.mode, reason)
        return None
    stats.active = True
    dtype = plugin._autocast_dtype
    autocast = (run.hot.device.type, dtype) if dtype is not None else None
    clip_hook = overrides("configure_gradient_clipping")
    return build_step(setting, module, opts[0], autocast,
                      lambda: (trainer.gradient_clip_val, trainer.gradient_clip_algorithm, clip_hook),
                      _loss_from, stats)


def _simple_this_epoch(trainer: "Trainer") -> bool:
    """hot.simple, and the Trainer attributes a callback may change between epochs still allow it."""
    accumulation = trainer.accumulate_grad_batches
    return bool(trainer.run_state.hot.simple and trainer.run_state.compiled_step is None
                and type(accumulation) is int and accumulation == 1
                and trainer.track_grad_norm == -1 and not trainer.gradient_clip_val and not trainer.terminate_on_nan)


def _takes_outputs(cb: Any) -> bool:
    """A 1.x callback: on_train_epoch_end(self, trainer, pl_module, outputs)."""
    return len(inspect.signature(cb.on_train_epoch_end).parameters) >= 3


def _log_hyperparams(trainer: "Trainer") -> None:
    module = trainer.lightning_module_ref
    params: Dict[str, Any] = {}
    if getattr(module, "_log_hyperparams", True):
        params.update(module.hparams)  # type: ignore[union-attr]
    dm = trainer.datamodule
    if dm is not None and getattr(dm, "_log_hyperparams", True):
        params.update(dm.hparams)
    for logger in trainer.loggers:
        logger.log_hyperparams(params)
        if hasattr(logger, "log_graph"):
            logger.log_graph(module)


def _has_validation(trainer: "Trainer") -> bool:
    return trainer.limit_val_batches != 0 and trainer.module_overrides("validation_step")


def _run_sanity_check(trainer: "Trainer") -> None:
    if not trainer.val_dataloaders:
        return
    n = trainer.num_sanity_val_steps
    trainer.num_sanity_val_batches = [b if n == -1 else min(b, n) for b in trainer.num_val_batches]
    before = dict(trainer._logger_connector._callback)
    trainer.sanity_checking = True
    trainer.state.stage = "sanity_check"
    trainer.call_hook("on_sanity_check_start")
    run_validation_in_fit(trainer, trainer.num_sanity_val_batches, sanity=True)
    trainer.call_hook("on_sanity_check_end")
    trainer.sanity_checking = False
    trainer._logger_connector.discard_sanity_results(before)


def _load_train_dataloader(trainer: "Trainer") -> None:
    loaders = trainer.request_loaders("train")
    if not loaders:
        raise ValueError(
            "fit() found no training data: pass train_dataloaders=..., a datamodule with train_dataloader(), "
            "or define train_dataloader() in the LightningModule"
        )
    trainer.train_dataloader = loaders[0]
    trainer.num_training_batches = trainer.limited_batches("train", loaders)[0]
    trainer.run_state.train_loader_loaded = True
    trainer.run_state.val_check_batch = _val_check_batch(trainer)


def _val_check_batch(trainer: "Trainer") -> float:
    interval = trainer.val_check_interval
    if isinstance(interval, int):
        if trainer.check_val_every_n_epoch is not None and interval > trainer.num_training_batches:
            raise ValueError(
                f"Trainer(val_check_interval={interval}) is more than the {int(trainer.num_training_batches)} "
                "training batches of an epoch; lower it, or set check_val_every_n_epoch=None to count across epochs"
            )
        return float(interval)
    if trainer.num_training_batches == INF:
        if interval != 1.0:
            raise ValueError(
                f"Trainer(val_check_interval={interval}) is a fraction, but the train dataloader has no length; "
                "pass an int number of batches"
            )
        return INF
    return float(max(1, int(trainer.num_training_batches * interval)))


# --------------------------------------------------------------------------------------------
# stopping
# --------------------------------------------------------------------------------------------
def _max_steps_reached(trainer: "Trainer") -> bool:
    return trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps


def _min_reached(trainer: "Trainer") -> bool:
    epochs_ok = trainer.min_epochs is None or trainer.current_epoch >= trainer.min_epochs
    steps_ok = trainer.min_steps is None or trainer.global_step >= trainer.min_steps
    return epochs_ok and steps_ok


def _fit_done(trainer: "Trainer") -> bool:
    if trainer.num_training_batches == 0:
        return True  # limit_train_batches=0: nothing to train
    if _max_steps_reached(trainer):
        return True
    if trainer.max_epochs != -1 and trainer.current_epoch >= trainer.max_epochs:
        return True
    if trainer.should_stop:
        if _min_reached(trainer):
            return True
        log.info("Trainer was asked to stop, but min_epochs=%s / min_steps=%s are not reached yet",
                 trainer.min_epochs, trainer.min_steps)
    return False


def _finish_saved_epoch(trainer: "Trainer", checkpoint: Dict[str, Any]) -> None:
    """resume: a checkpoint taken after an epoch's last batch but before that epoch's epoch-interval
    LR scheduler step (at the last batch, in validation or in on_train_epoch_end) resumes at the
    next epoch, so take that step now, as the interrupted run would have. ReduceLROnPlateau is
    not stepped: the metric it monitors is gone with the old process."""
    saved = checkpoint.get("loops", {}).get("fit_loop", {})
    if not saved.get("epoch_batches_done") or saved.get("epoch_schedulers_stepped"):
        return
    if not trainer.lr_scheduler_configs or not trainer.lightning_module_ref.automatic_optimization:
        return
    count = int(saved.get("current_epoch", 0)) + 1
    for cfg in trainer.lr_scheduler_configs:
        if cfg.interval == "epoch" and not cfg.reduce_on_plateau and count % cfg.frequency == 0:
            trainer.call_module("lr_scheduler_step", cfg.scheduler, None, always=True)


# --------------------------------------------------------------------------------------------
# one epoch
# --------------------------------------------------------------------------------------------
def _run_train_epoch(trainer: "Trainer") -> None:
    progress = trainer.progress
    module = trainer.lightning_module_ref
    epoch = progress.current_epoch
    n_reload = trainer.reload_dataloaders_every_n_epochs
    if n_reload and epoch > 0 and epoch % n_reload == 0 and progress.batch_idx == 0:
        _load_train_dataloader(trainer)
    loader = trainer.train_dataloader
    set_sampler_epoch(loader, epoch)
    redeal, trainer.run_state.redeal = trainer.run_state.redeal, None
    if redeal is not None and redeal.epoch == epoch:  # resumed mid-epoch at another world size
        loader, progress.batch_idx = redealt_epoch(loader, redeal)
    trainer._logger_connector.reset_train_epoch()
    trainer._logger_connector.active = trainer._logger_connector.train_results
    outputs: List[Any] = []
    trainer.call_hook("on_epoch_start")
    trainer.call_hook("on_train_epoch_start")
    source, skip, skipped = _epoch_start(trainer, loader, epoch, progress.batch_idx)
    if trainer.run_state.profiling:  # the loader's next() is recorded, once per batch
        source = ProfiledBatches(trainer.profiler, "get_train_batch", source)
    # The batch iterator lives in the callee's frame only: it (and the loader's iterator, its
    # workers) is released when the batches end, before the epoch-end hooks.
    run_batches = _run_simple_epoch if _simple_this_epoch(trainer) else _run_general_epoch
    run_batches(trainer, module, _epoch_batches(source, trainer.num_training_batches, skip, skipped), outputs)
    _end_train_epoch(trainer, module, outputs)


def _run_general_epoch(trainer: "Trainer", module: LightningModule, batches: Iterator[Tuple[bool, int, Any]],
                       outputs: List[Any]) -> None:
    """The epoch's batches, each through _run_train_batch (every hook and option), then validation and stops."""
    progress = trainer.progress
    run_batch = _run_train_batch
    if trainer.run_state.profiling:
        run_batch = action(trainer.profiler, "run_training_batch", _run_train_batch)
    for is_last, batch_idx, batch in batches:
        trainer._is_last_batch = is_last  # trainer.is_last_batch (an attribute store, no call)
        if run_batch(trainer, module, batch, batch_idx, is_last, outputs) == -1:
            progress.epoch_batches_done = True  # on_train_batch_start returned -1: the epoch ends here
            return
        if trainer.val_dataloaders:
            _validate_if_due(trainer, batch_idx, is_last)
        max_steps = trainer.max_steps  # _max_steps_reached, inlined: this runs every batch
        if (max_steps != -1 and progress.global_step >= max_steps) or (trainer.should_stop and _min_reached(trainer)):
            return
    progress.epoch_batches_done = True  # the loader ended before the expected length


def _validate_if_due(trainer: "Trainer", batch_idx: int, is_last: bool) -> None:
    """The validation loop after this training batch, when val_check_interval says so."""
    if _should_check_val(trainer, batch_idx, is_last):
        # resume: validation must not move the training random stream (its loader draws a
        # seed), so a checkpoint taken before it resumes bit-exactly and val_check_interval
        # does not change what training draws
        training_rng = capture_rng_state()
        run_validation_in_fit(trainer, trainer.num_val_batches)
        restore_rng_state(training_rng)


def _epoch_start(trainer: "Trainer", loader: Iterable, epoch: int, skip: int) -> Tuple[Iterable, int, bool]:
    """The epoch's batch source and where it starts: ``(source, skip, skipped)``.

    resume: a mid-epoch checkpoint continues after the ``skip`` batches already done, with the
    RNG states of the original run (volt.resume), so no batch is repeated or skipped (``skipped``:
    the source already starts after them). Records the epoch's starting RNG state for checkpoints.
    """
    snapshots = trainer.rng_snapshots
    rng = snapshots.take_restored()
    if skip and rng is not None and rng.get("epoch_start") is not None and isinstance(loader, DataLoader):
        log.info("resuming epoch %d after batch %d (exact: sampler order and RNG restored)", epoch, skip)
        snapshots.epoch_start = rng["epoch_start"]
        return resume_epoch_iterator(loader, skip, rng["epoch_start"], rng["current"]), skip, True
    if skip:
        log.warning("resuming epoch %d after batch %d without saved RNG states: batch order may differ", epoch, skip)
    elif rng is not None:  # resumed at an epoch boundary: continue the saved random stream
        restore_rng_state(rng["current"])
    snapshots.epoch_start = capture_rng_state()  # before iter(loader): it draws the shuffle seed
    return loader, skip, False


def _epoch_batches(loader: Iterable, limit: float, skip: int, skipped: bool) -> Iterator[Tuple[bool, int, Any]]:
    """``(is_last, batch_idx, batch)`` for the epoch: ``data.iterate``'s batches, reordered.

    The common case (a known number of batches, no resume skip) is a ``zip`` of C iterators,
    with no Python frame per batch. The flags come first so that after the last batch the zip
    ends without fetching one more from the loader (as ``iterate`` does).
    """
    if limit == INF or skip:
        return ((is_last, i, batch) for i, batch, is_last in iterate(loader, limit, skip=skip, skipped=skipped))
    n = int(limit)
    if n <= 0:
        return iter(())
    flags = itertools.chain(itertools.repeat(False, n - 1), (True,))
    return zip(flags, itertools.count(), iter(loader))


def _should_check_val(trainer: "Trainer", batch_idx: int, is_last: bool) -> bool:
    if not trainer.val_dataloaders or trainer.num_val_batches == [0] * len(trainer.num_val_batches):
        return False
    every = trainer.check_val_every_n_epoch
    if every is not None and (trainer.current_epoch + 1) % every != 0:
        return False
    vcb = trainer.run_state.val_check_batch
    if every is None:  # an int interval counted across epochs
        return trainer.progress.batches_that_stepped % int(vcb) == 0 and trainer.progress.batches_that_stepped > 0
    if vcb == INF:
        return is_last
    if (batch_idx + 1) % int(vcb) == 0:
        return True
    return is_last and trainer.val_check_interval == 1.0


def _end_train_epoch(trainer: "Trainer", module: LightningModule, outputs: List[Any]) -> None:
    connector = trainer._logger_connector
    connector.active = connector.train_results
    connector.preview_epoch(connector.train_results)  # epoch-end hooks read x_epoch in callback_metrics
    if trainer.module_overrides("training_epoch_end"):
        trainer.call_module("training_epoch_end", outputs)
    monitoring = [cb for cb in trainer.callbacks_for("on_train_epoch_end") if _is_monitoring(cb)]
    others = [cb for cb in trainer.callbacks_for("on_train_epoch_end") if not _is_monitoring(cb)]
    _call_train_epoch_end(trainer, others, outputs)
    trainer.call_module("on_train_epoch_end")
    connector.finish_epoch(connector.train_results, max(trainer.progress.batches_that_stepped - 1, 0))
    _call_train_epoch_end(trainer, monitoring, outputs)
    trainer.call_hook("on_epoch_end")
    if trainer.progress.epoch_batches_done:
        _step_schedulers(trainer, "epoch", trainer.current_epoch + 1)
        trainer.progress.epoch_schedulers_stepped = True


def _call_train_epoch_end(trainer: "Trainer", callbacks: List[Any], outputs: List[Any]) -> None:
    modern = [cb for cb in callbacks if not _takes_outputs(cb)]
    trainer.call_callbacks("on_train_epoch_end", only=modern)
    for cb in callbacks:
        if _takes_outputs(cb):  # 1.x signature with outputs
            cb.on_train_epoch_end(trainer, trainer.lightning_module_ref, outputs)


def _is_monitoring(cb: Any) -> bool:
    from volt import callbacks as C

    types = tuple(t for t in (getattr(C, "ModelCheckpoint", None), getattr(C, "EarlyStopping", None)) if t is not None)
    return bool(types) and isinstance(cb, types)


# --------------------------------------------------------------------------------------------
# one batch
# --------------------------------------------------------------------------------------------
def _run_simple_epoch(trainer: "Trainer", module: LightningModule, batches: Iterator[Tuple[bool, int, Any]],
                      epoch_outputs: List[Any]) -> None:
    """_run_general_epoch for the typical config (``hot.simple``, see _prepare_hot_path), in one frame.

    Per batch, the same calls in the same order as the general path takes there: placement ->
    training_step (under the precision's autocast) -> optimizer.zero_grad() -> backward ->
    optimizer.step() -> on_train_batch_end -> logging point -> validation when due -> stops.
    Only the Python between them is less: what is fixed for the run is read once into locals,
    and there is no frame per batch.
    """
    run = trainer.run_state
    hot: HotPath = run.hot  # type: ignore[assignment]
    progress = trainer.progress
    connector = trainer._logger_connector
    device, plain_transfer = hot.device, hot.plain_transfer
    on_cpu = plain_transfer and device.type == "cpu"  # placed: every tensor of a tuple/list batch is on the CPU
    autocast, step_context, optimizer = hot.autocast, hot.step_context, hot.optimizer
    plain_forward = autocast is None and step_context is None  # fp32 with the built-in plugin
    callbacks, module_batch_end, batch_end_1x = hot.batch_end_callbacks, hot.batch_end_module, hot.batch_end_1x
    batch_end_hooks = bool(callbacks or module_batch_end)
    outputs_needed, collect_outputs = run.train_outputs_needed, run.collect_train_outputs
    Tensor = torch.Tensor
    for is_last, batch_idx, batch in batches:
        trainer._is_last_batch = is_last  # trainer.is_last_batch (an attribute store, no call)
        if not module._automatic_optimization:  # switched off mid-run: the general path knows manual optimization
            if _run_train_batch(trainer, module, batch, batch_idx, is_last, epoch_outputs) == -1:
                progress.epoch_batches_done = True
                return
        else:
            # placement: move_data_to_device's "already placed" test, inlined for CPU runs
            kind = type(batch)
            if on_cpu and (kind is tuple or kind is list):
                for item in batch:
                    if type(item) is not Tensor or not item.is_cpu:
                        batch = move_data_to_device(batch, device)
                        break
            elif plain_transfer:
                batch = move_data_to_device(batch, device)
            else:
                batch = transfer_batch(trainer, batch, 0)
            connector.current_batch, connector._batch_size = batch, None  # connector.set_batch(batch)
            prev, connector.fx = connector.fx, "training_step"
            try:
                if plain_forward:
                    output = module.training_step(batch, batch_idx)
                elif autocast is not None:
                    with autocast:
                        output = module.training_step(batch, batch_idx)
                else:
                    with step_context.forward_context():
                        output = module.training_step(batch, batch_idx)
            finally:
                connector.fx = prev
            if type(output) is Tensor and output.requires_grad:  # what _loss_from accepts without a call
                loss: Optional[torch.Tensor] = output
            else:
                loss = _loss_from(output)
            optimizer.zero_grad()
            if loss is not None:  # None: batch skipped; the step still runs, on no gradients (as the general path)
                loss.backward()
            del loss
            optimizer.step()
            progress.global_step += 1
            if outputs_needed:
                output = _detached(output)
            progress.batches_that_stepped += 1
            if trainer.lr_scheduler_configs:
                _step_schedulers(trainer, "step", progress.batches_that_stepped)
            progress.batch_idx = batch_idx + 1  # resume: the batch is done before on_train_batch_end
            if is_last:
                progress.epoch_batches_done = True
            if batch_end_hooks:  # trainer.call_hook("on_train_batch_end", ...), inlined
                prev, connector.fx = connector.fx, "on_train_batch_end"
                try:
                    for hook in callbacks:
                        hook(trainer, module, output, batch, batch_idx)
                    if module_batch_end:
                        module.on_train_batch_end(output, batch, batch_idx)
                finally:
                    connector.fx = prev
            if batch_end_1x:
                trainer.call_hook("on_batch_end")
            if collect_outputs and output is not None:
                epoch_outputs.append(_to_cpu(output) if trainer.move_metrics_to_cpu else output)
            n, stepped = trainer.log_every_n_steps, progress.batches_that_stepped
            if (n > 0 and stepped % n == 0) or trainer.should_stop or stepped % trainer.flush_logs_every_n_steps == 0:
                maybe_flush_logs(trainer)
        if trainer.val_dataloaders:
            _validate_if_due(trainer, batch_idx, is_last)
        max_steps = trainer.max_steps  # _max_steps_reached, inlined: this runs every batch
        if (max_steps != -1 and progress.global_step >= max_steps) or (trainer.should_stop and _min_reached(trainer)):
            return
    progress.epoch_batches_done = True  # the loader ended before the expected length


def _run_train_batch(trainer: "Trainer", module: LightningModule, batch: Any, batch_idx: int, is_last: bool,
                     epoch_outputs: List[Any]) -> Optional[int]:
    # Runs once per batch: per-run decisions come from trainer.run_state.hot (see _prepare_hot_path).
    progress = trainer.progress
    run = trainer.run_state
    hot: HotPath = run.hot  # type: ignore[assignment]
    if hot.plain_transfer:
        batch = move_data_to_device(batch, hot.device)
    else:
        batch = transfer_batch(trainer, batch, 0)
    connector = trainer._logger_connector
    connector.current_batch, connector._batch_size = batch, None  # connector.set_batch(batch)
    if hot.batch_start:
        if trainer.callbacks_for("on_batch_start"):  # 1.x: callbacks take no batch, the module does
            trainer.call_callbacks("on_batch_start")
        if trainer.module_overrides("on_batch_start"):
            trainer.call_module("on_batch_start", batch, always=True)
    silent = run.silent
    if "on_train_batch_start" not in silent and trainer.call_hook("on_train_batch_start", batch, batch_idx) == -1:
        return -1

    if module._automatic_optimization if hot.plain_auto else module.automatic_optimization:
        accumulation = trainer.accumulate_grad_batches
        if not isinstance(accumulation, int):  # the 1.x {epoch: k} form
            accumulation = trainer.current_accumulation
        window_start = batch_idx % accumulation == 0
        steps_now = (batch_idx + 1) % accumulation == 0 or is_last
        if run.compiled_step is not None:
            outputs = _compiled_batch(trainer, module, batch, batch_idx, accumulation, window_start, steps_now)
        else:
            outputs = _automatic_batch(trainer, module, batch, batch_idx, accumulation, window_start, steps_now)
    else:
        steps_now = True
        outputs = trainer.call_step("training_step", *_step_args(trainer, batch, batch_idx, None, None))
        if trainer.module_overrides("training_step_end"):
            outputs = trainer.call_module("training_step_end", outputs)
        outputs = _detached(outputs)

    if steps_now:
        progress.batches_that_stepped += 1
        if trainer.lr_scheduler_configs:
            _step_schedulers(trainer, "step", progress.batches_that_stepped)
    # resume: the batch is done before on_train_batch_end, where checkpoints are taken
    progress.batch_idx = batch_idx + 1
    if is_last:
        progress.epoch_batches_done = True
    if "on_train_batch_end" not in silent:
        trainer.call_hook("on_train_batch_end", outputs, batch, batch_idx)
    if "on_batch_end" not in silent:
        trainer.call_hook("on_batch_end")
    if run.collect_train_outputs and outputs is not None:
        epoch_outputs.append(_to_cpu(outputs) if trainer.move_metrics_to_cpu else outputs)
    if steps_now:
        # maybe_flush_logs has work only at these points (it repeats the test)
        n, stepped = trainer.log_every_n_steps, progress.batches_that_stepped
        if (n > 0 and stepped % n == 0) or trainer.should_stop or stepped % trainer.flush_logs_every_n_steps == 0:
            maybe_flush_logs(trainer)
    return None


_NO_OPT_IDX = (None,)


def _compiled_batch(trainer: "Trainer", module: LightningModule, batch: Any, batch_idx: int, accumulation: int,
                    window_start: bool, steps_now: bool) -> Any:
    """_automatic_batch through the run's compiled step; eagerly when it cannot be (reason logged once)."""
    run = trainer.run_state
    step = run.compiled_step
    connector = trainer._logger_connector
    prev, connector.fx = connector.fx, "training_step"  # what self.log, replayed after the step, is called from
    try:
        output = step(batch, batch_idx, accumulation, window_start, steps_now)
    except CaptureFailed:
        run.compiled_step = None
        return _automatic_batch(trainer, module, batch, batch_idx, accumulation, window_start, steps_now)
    finally:
        connector.fx = prev
    if not trainer.compile_stats.active:  # the step ran, but the next ones run eagerly
        run.compiled_step = None
    if steps_now:
        trainer.progress.global_step += 1
    return _detached(output) if run.train_outputs_needed else output


def _automatic_batch(trainer: "Trainer", module: LightningModule, batch: Any, batch_idx: int, accumulation: int,
                     window_start: bool, steps_now: bool) -> Any:
    """Forward, backward and (when the accumulation window closes) step, for each optimizer and split."""
    tbptt = module.truncated_bptt_steps or 0
    splits = module.tbptt_split_batch(batch, tbptt) if tbptt > 0 else (batch,)
    if trainer.run_state.step_takes_optimizer_idx:  # 1.x: training_step(batch, batch_idx, optimizer_idx), each in turn
        opt_indices: Any = range(len(trainer.optimizers))
        toggles = len(trainer.optimizers) > 1
    else:
        opt_indices, toggles = _NO_OPT_IDX, False
    hot: HotPath = trainer.run_state.hot
    closure = hot.closure
    hiddens: Any = None
    split_outputs: List[Any] = []
    for split in splits:
        for opt_idx in opt_indices:
            i = opt_idx or 0
            optimizer = trainer._lightning_optimizers[i]
            if toggles:
                module.toggle_optimizer(optimizer)
            # arm the run's closure for this split/optimizer (one object per run, no per-step allocation)
            closure.batch, closure.batch_idx, closure.opt_idx = split, batch_idx, opt_idx
            closure.hiddens = hiddens if tbptt else None
            closure.optimizer, closure.accumulation = optimizer._optimizer, accumulation
            closure.zero_grad = window_start
            closure.output = None
            if steps_now:
                trainer.run_state.auto_stepping = True
                try:
                    if hot.optimizer_step_hook:
                        _call_optimizer_step(trainer, module, batch_idx, optimizer, i, closure)
                    else:  # what LightningOptimizer.step -> Trainer._optimizer_step would call
                        optimizer_step(trainer, optimizer._optimizer, closure)
                finally:
                    trainer.run_state.auto_stepping = False
            else:
                with trainer.strategy.no_backward_sync(should_sync=False):
                    closure()
            if toggles:
                module.untoggle_optimizer(optimizer)
            out = closure.output
            closure.batch = closure.hiddens = closure.output = None  # hold no batch or graph past the step
            if trainer.run_state.train_outputs_needed:
                out = _detached(out)
            if tbptt and isinstance(out, Mapping) and out.get("hiddens") is not None:
                hiddens = _detach_hiddens(out["hiddens"])
            split_outputs.append(out)
    if len(split_outputs) == 1:
        return split_outputs[0]
    return split_outputs


def _call_optimizer_step(trainer: "Trainer", module: LightningModule, batch_idx: int, optimizer: LightningOptimizer,
                         opt_idx: int, closure: Callable[[], Any]) -> None:
    """The module's optimizer_step override (the default is optimizer.step(closure=closure))."""
    if trainer.run_state.legacy_optimizer_step:  # 1.x signature: (epoch, batch_idx, optimizer, optimizer_idx, closure, ...)
        trainer.call_module("optimizer_step", trainer.current_epoch, batch_idx, optimizer,
                             optimizer_idx=opt_idx, optimizer_closure=closure, always=True)
    else:
        trainer.call_module("optimizer_step", trainer.current_epoch, batch_idx, optimizer, closure, always=True)


class _TrainingClosure:
    """The closure optimizer_step runs: training_step -> training_step_end (1.x) -> on_before_zero_grad ->
    optimizer_zero_grad (first batch of the window) -> on_before_backward -> backward -> on_after_backward.

    One per run, armed by _automatic_batch for each split and optimizer; the output of
    training_step is left in ``output``. Returns the loss, detached when a module's optimizer_step
    override will see it (None: batch skipped).
    """

    __slots__ = ("trainer", "hot", "batch", "batch_idx", "opt_idx", "hiddens", "optimizer", "accumulation",
                 "zero_grad", "output")

    def __init__(self, trainer: "Trainer", hot: HotPath) -> None:
        self.trainer, self.hot = trainer, hot
        self.batch: Any = None
        self.batch_idx = 0
        self.opt_idx: Optional[int] = None
        self.hiddens: Any = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.accumulation = 1
        self.zero_grad = False
        self.output: Any = None

    def __call__(self) -> Optional[torch.Tensor]:
        trainer, hot = self.trainer, self.hot
        batch_idx, opt_idx = self.batch_idx, self.opt_idx
        if opt_idx is None and not trainer.run_state.step_takes_hiddens:  # _step_args would add nothing
            output = trainer.call_step("training_step", self.batch, batch_idx)
        else:
            output = trainer.call_step("training_step",
                                        *_step_args(trainer, self.batch, batch_idx, opt_idx, self.hiddens))
        if hot.step_end:
            output = trainer.call_module("training_step_end", output)
        if isinstance(output, torch.Tensor) and output.requires_grad:  # what _loss_from accepts without a call
            loss: Optional[torch.Tensor] = output
        else:
            loss = _loss_from(output)
        self.output = output
        if loss is not None and trainer.terminate_on_nan and not bool(torch.isfinite(loss).all()):
            raise ValueError(f"training_step returned a non-finite loss ({loss.item()}) at epoch "
                             f"{trainer.current_epoch}, batch {batch_idx} (Trainer(terminate_on_nan=True))")
        optimizer = self.optimizer
        # zero_grad even for a skipped batch (loss None): the step then has no gradients to apply
        if self.zero_grad:
            if "on_before_zero_grad" not in trainer.run_state.silent:
                trainer.call_hook("on_before_zero_grad", optimizer)
            if hot.zero_grad_hook:
                if hot.legacy_step:
                    trainer.call_module("optimizer_zero_grad", trainer.current_epoch, batch_idx, optimizer, opt_idx or 0)
                else:
                    trainer.call_module("optimizer_zero_grad", trainer.current_epoch, batch_idx, optimizer)
            else:
                optimizer.zero_grad()  # type: ignore[union-attr]
        if loss is None:
            return None
        accumulation = self.accumulation
        if hot.plain_backward:  # no backward hooks, no override, no loss scaler: Trainer._run_backward's result
            (loss / accumulation if accumulation > 1 else loss).backward()
        else:
            trainer._run_backward(loss / accumulation if accumulation > 1 else loss, optimizer)
        # Only a module's optimizer_step override sees what the closure returns (through
        # optimizer.step); the default path drops it, so it skips the detach (a tensor op).
        return loss.detach() if hot.optimizer_step_hook else loss


def _step_args(trainer: "Trainer", batch: Any, batch_idx: int, opt_idx: Optional[int], hiddens: Any) -> tuple:
    args: tuple = (batch, batch_idx)
    if opt_idx is not None:
        args += (opt_idx,)
    if trainer.run_state.step_takes_hiddens and (trainer.lightning_module_ref.truncated_bptt_steps or 0) > 0:
        args += (hiddens,)
    return args


def _loss_from(output: Any) -> Optional[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        loss = output
    elif isinstance(output, Mapping):
        if "loss" not in output:
            raise ValueError(
                f"training_step returned a dict without a 'loss' key (keys: {sorted(output)}); under automatic "
                "optimization return the loss tensor, a dict with 'loss', or None to skip the batch"
            )
        loss = output["loss"]
    elif output is None:
        return None
    else:
        raise TypeError(
            f"training_step returned a {type(output).__name__}; under automatic optimization it must return the "
            "loss tensor, a dict with a 'loss' key, or None to skip the batch "
            "(or set self.automatic_optimization = False and step the optimizers yourself)"
        )
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"training_step's loss must be a tensor, got {type(loss).__name__}")
    if not loss.requires_grad:
        raise RuntimeError(
            "training_step's loss does not require grad: it was computed without the model's parameters "
            "(detached, under torch.no_grad, or from constants)"
        )
    return loss


def _detached(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return {"loss": output.detach()}
    if isinstance(output, Mapping):
        return {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in output.items()}
    return output


def _detach_hiddens(hiddens: Any) -> Any:
    if isinstance(hiddens, torch.Tensor):
        return hiddens.detach()
    if isinstance(hiddens, (list, tuple)):
        return type(hiddens)(_detach_hiddens(h) for h in hiddens)
    return hiddens


def _to_cpu(outputs: Any) -> Any:
    return apply_to_tensors(outputs, lambda t: t.cpu())


# --------------------------------------------------------------------------------------------
# optimizer step (also used by LightningOptimizer.step in manual optimization)
# --------------------------------------------------------------------------------------------
def optimizer_step(trainer: "Trainer", optimizer: torch.optim.Optimizer, closure: Optional[Callable[[], Any]],
                   **kwargs: Any) -> Any:
    """Closure -> on_before_optimizer_step -> grad norms / clipping (automatic) -> step; counts global_step."""
    automatic = trainer.run_state.auto_stepping
    if "on_before_optimizer_step" in trainer.run_state.silent and (not automatic or (
            trainer.track_grad_norm == -1 and not trainer.gradient_clip_val and not trainer.run_state.hot.clip_hook)):
        before_step: Optional[Callable[[], None]] = None  # it would do nothing: no closure, no call
    else:
        before_step = _before_step(trainer, optimizer, automatic)
    out = trainer.precision_plugin.optimizer_step(optimizer, closure, before_step, **kwargs)
    trainer.progress.global_step += 1
    return out


def _before_step(trainer: "Trainer", optimizer: torch.optim.Optimizer, automatic: bool) -> Callable[[], None]:
    def before_step() -> None:
        if "on_before_optimizer_step" not in trainer.run_state.silent:
            trainer.call_hook("on_before_optimizer_step", optimizer)
        if automatic:
            if trainer.track_grad_norm != -1 and _is_log_step(trainer):
                _log_grad_norms(trainer, optimizer)
            if trainer.gradient_clip_val or trainer.module_overrides("configure_gradient_clipping"):
                trainer.call_module("configure_gradient_clipping", optimizer, trainer.gradient_clip_val,
                                     trainer.gradient_clip_algorithm, always=True)

    return before_step


def _is_log_step(trainer: "Trainer") -> bool:
    n = trainer.log_every_n_steps
    return n > 0 and (trainer.progress.batches_that_stepped + 1) % n == 0


def _log_grad_norms(trainer: "Trainer", optimizer: torch.optim.Optimizer) -> None:
    """1.x track_grad_norm: per-parameter and total gradient p-norms, as grad_{p}_norm/<name>."""
    p = trainer.track_grad_norm
    module = trainer.lightning_module_ref
    own = {id(q) for g in optimizer.param_groups for q in g["params"]}
    norms = {}
    for name, param in module.named_parameters():  # type: ignore[union-attr]
        if param.grad is not None and id(param) in own:
            norms[f"grad_{p}_norm/{name}"] = torch.linalg.vector_norm(param.grad.detach().float(), ord=p)
    if not norms:
        return
    norms[f"grad_{p}_norm_total"] = torch.linalg.vector_norm(torch.stack(list(norms.values())), ord=p)
    connector = trainer._logger_connector
    prev, connector.fx = connector.fx, "on_before_optimizer_step"
    try:
        for name, value in norms.items():
            connector.log(name, value, prog_bar=False, logger=True, on_step=True, on_epoch=False, reduce_fx="mean",
                          sync_dist=False, batch_size=1)
    finally:
        connector.fx = prev


def maybe_flush_logs(trainer: "Trainer") -> None:
    """Write this step's logged metrics when the loop writes them (every log_every_n_steps, or stopping)."""
    n = trainer.log_every_n_steps
    stepped = trainer.progress.batches_that_stepped
    if (n > 0 and stepped % n == 0) or trainer.should_stop:
        extra = _gpu_memory(trainer) if trainer.log_gpu_memory else None
        trainer._logger_connector.flush_step(stepped - 1, extra)
    if stepped % trainer.flush_logs_every_n_steps == 0:
        for logger in trainer.loggers:
            logger.save()


def _gpu_memory(trainer: "Trainer") -> Optional[Dict[str, torch.Tensor]]:
    device = trainer.strategy.root_device
    if device.type != "cuda":
        return None
    used = torch.tensor(torch.cuda.memory_allocated(device) / 2**20)
    if trainer.log_gpu_memory == "min_max":
        return {"min_gpu_mem": used, "max_gpu_mem": torch.tensor(torch.cuda.max_memory_allocated(device) / 2**20)}
    return {f"gpu_id: {device.index}/memory.used (MB)": used}


# --------------------------------------------------------------------------------------------
# schedulers
# --------------------------------------------------------------------------------------------
def _step_schedulers(trainer: "Trainer", interval: str, count: int) -> None:
    module = trainer.lightning_module_ref
    if not trainer.lr_scheduler_configs or not module.automatic_optimization:  # manual: the user steps them
        return
    for cfg in trainer.lr_scheduler_configs:
        if cfg.interval != interval or count % cfg.frequency != 0:
            continue
        metric = None
        if cfg.reduce_on_plateau:
            metric = trainer.callback_metrics.get(cfg.monitor)  # type: ignore[arg-type]
            if metric is None:
                if cfg.strict:
                    raise ValueError(
                        f"ReduceLROnPlateau monitors {cfg.monitor!r}, which was not logged; logged metrics: "
                        f"{sorted(trainer.callback_metrics)}. Log it with self.log or set 'strict': False"
                    )
                continue
        trainer.call_module("lr_scheduler_step", cfg.scheduler, metric, always=True)
