"""What every entry point shares (fit, validate, test, predict).

    run_stage:      attach the model and datamodule, run the loop; on an error, the exception hooks,
                    the loggers' final status and the exit code volt-run reports
    setup_stage:    environment (ranks, process group), prepare_data, setup hooks, configure_model,
                    precision, the checkpoint's weights and callback states (ckpt_path), device placement
    teardown_stage: teardown hooks
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

import torch

from volt import termination
from volt.datamodule import LightningDataModule
from volt.module import LightningModule
from volt.trainer import checkpoint_connector, profiling
from volt.trainer.components import checkpoints_last
from volt.trainer.data import defines
from volt.trainer.run_state import RunState
from volt.utilities.rank_zero import rank_zero_only

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)


def check_model(model: Any, fn: str) -> None:
    if not isinstance(model, LightningModule):
        raise TypeError(f"trainer.{fn}(model=...) must be a volt LightningModule, got {type(model).__name__}")


def check_sources(loaders: Any, val_loaders: Any, datamodule: Any, fn: str) -> None:
    if datamodule is not None and not isinstance(datamodule, LightningDataModule):
        raise TypeError(f"trainer.{fn}(datamodule=...) must be a LightningDataModule, got {type(datamodule).__name__}")
    if datamodule is not None and (loaders is not None or val_loaders is not None):
        raise ValueError(f"trainer.{fn}(): pass dataloaders or a datamodule, not both")


def run_stage(trainer: "Trainer", loop: Callable[["Trainer", Optional[str]], Any], model: LightningModule,
              datamodule: Optional[LightningDataModule], loaders: Dict[str, Any], ckpt_path: Optional[str]) -> Any:
    """Run ``loop(trainer, ckpt_path)`` for one entry point (``trainer.state.fn``); returns its result."""
    trainer.lightning_module_ref = model
    trainer.datamodule = datamodule
    trainer._loader_args = loaders
    model.trainer = trainer
    if datamodule is not None:
        datamodule.trainer = trainer
    config = trainer.config
    if config.automatic_optimization is not None:
        model.automatic_optimization = config.automatic_optimization
    if trainer.truncated_bptt_steps is not None:
        model.truncated_bptt_steps = trainer.truncated_bptt_steps
    if config.prepare_data_per_node is not None:
        model.prepare_data_per_node = config.prepare_data_per_node
        if datamodule is not None:
            datamodule.prepare_data_per_node = config.prepare_data_per_node
    trainer.state.status = "running"
    trainer.should_stop = False
    trainer.run_state = RunState()  # engine-internal: what the loops decide for this run (trainer/run_state.py)
    trainer._reset_hook_cache()
    # with a profiler, the dispatch methods are swapped for profiled ones for this run only
    trainer.run_state.profiling = profiling.instrument(trainer, trainer.state.fn or "fit")
    try:
        with torch.autograd.set_detect_anomaly(trainer.detect_anomaly):
            result = loop(trainer, ckpt_path)
        trainer.state.status = "finished"
        _finalize_loggers(trainer, "success")
        return result
    except KeyboardInterrupt as err:
        log.warning("KeyboardInterrupt: stopping, running on_keyboard_interrupt/on_exception hooks")
        trainer.state.status = "interrupted"
        trainer.call_callbacks("on_keyboard_interrupt")
        _on_exception(trainer, err)
        _finalize_loggers(trainer, "interrupted")
        raise
    except (Exception, SystemExit) as err:
        # SystemExit too, as Lightning (it handles every BaseException): the SIGTERM checkpoint
        # exits through it, and callbacks must stop what they run (a metrics server thread
        # answering scrapes while the interpreter shuts down can abort the process).
        trainer.state.status = "interrupted"
        # First, before the hooks: once this rank is known to fail, its code must be on record
        # (e.g. a full checkpoint volume: a retryable exit code) before the peers see it go.
        exit_ = termination.exit_for_error(err)
        _on_exception(trainer, err)
        _finalize_loggers(trainer, "failed" if isinstance(err, Exception) else "interrupted")
        if exit_ is not None:
            raise exit_ from err
        if isinstance(err, Exception):
            termination.record_error(err)  # volt-run reports the failing rank's exception to the operator
        raise
    finally:
        trainer.state.stage = None
        trainer.sanity_checking = False
        if trainer.run_state.profiling:
            trainer.run_state.profiling = False
            profiling.uninstrument(trainer)  # writes the report
        trainer.strategy.teardown()
        trainer.checkpoint_io.teardown()


def _on_exception(trainer: "Trainer", err: BaseException) -> None:
    trainer.call_callbacks("on_exception", err)
    if defines(trainer.lightning_module_ref, "on_exception", LightningModule):
        trainer.lightning_module_ref.on_exception(err)  # type: ignore[union-attr]
    if trainer.datamodule is not None:
        trainer.datamodule.on_exception(err)


def _finalize_loggers(trainer: "Trainer", status: str) -> None:
    for logger in trainer.loggers:
        logger.finalize(status)


def setup_stage(trainer: "Trainer", stage: str, ckpt_path: Optional[str]) -> Optional[Dict[str, Any]]:
    """Environment, prepare_data, setup hooks, checkpoint weights, device placement. Returns the checkpoint."""
    module = trainer.lightning_module_ref
    assert module is not None
    trainer._reset_hook_cache()
    trainer._logger_connector.eval_steps_seen = {}
    _add_configured_callbacks(trainer, module)
    trainer.strategy.setup_environment()
    rank_zero_only.rank = trainer.global_rank  # loggers write on global rank 0 only
    if trainer.world_size > 1:  # every rank runs this, so the broadcast is matched
        for logger in trainer.loggers:
            if hasattr(logger, "sync_version"):
                logger.sync_version(trainer.strategy.broadcast)
    _prepare_data(trainer, module)
    dm = trainer.datamodule
    if dm is not None:
        dm.setup(stage)
    trainer.call_callbacks("setup", stage)
    trainer.call_module("setup", stage, always=True)
    trainer.call_module("configure_sharded_model")
    trainer.call_module("configure_model")
    trainer.precision_plugin.convert_module(module)
    checkpoint = checkpoint_connector.load_checkpoint(trainer, ckpt_path)
    if checkpoint is not None:
        checkpoint_connector.restore_model_and_callbacks(trainer, checkpoint)
    trainer._logger_connector.reset_metrics()  # metrics of an earlier fit/test do not carry over
    trainer.strategy.setup(trainer, module)
    return checkpoint


def teardown_stage(trainer: "Trainer", stage: str) -> None:
    trainer.call_callbacks("teardown", stage)
    trainer.call_module("teardown", stage, always=True)
    if trainer.datamodule is not None:
        trainer.datamodule.teardown(stage)


def _add_configured_callbacks(trainer: "Trainer", module: LightningModule) -> None:
    """configure_callbacks() entries replace trainer callbacks of the same type, as in Lightning."""
    extra = module.configure_callbacks()
    if not extra:
        return
    extra = list(extra) if isinstance(extra, (list, tuple)) else [extra]
    types = {type(cb) for cb in extra}
    kept = [cb for cb in trainer.callbacks if type(cb) not in types]
    trainer.callbacks = checkpoints_last(kept + extra)
    trainer._reset_hook_cache()


def _prepare_data(trainer: "Trainer", module: LightningModule) -> None:
    strategy = trainer.strategy
    dm = trainer.datamodule
    for obj in ([dm] if dm is not None else []) + [module]:
        per_node = getattr(obj, "prepare_data_per_node", True)
        if (strategy.local_rank == 0) if per_node else strategy.is_global_zero:
            if obj is module:
                trainer.call_module("prepare_data")
            else:
                obj.prepare_data()
    strategy.barrier("prepare_data")
