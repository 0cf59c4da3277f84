"""Setup and teardown every entry point shares (fit, validate, test, predict).

    setup_stage:    environment (ranks, process group), prepare_data, setup hooks, configure_model,
                    precision, the checkpoint's weights and callback states (ckpt_path), device placement
    teardown_stage: teardown hooks
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional

from volt.module import LightningModule
from volt.trainer import checkpoint_connector
from volt.utilities.rank_zero import rank_zero_only

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer


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
    from volt.trainer.trainer import _checkpoints_last  # trainer.py imports this module: a real cycle

    kept = [cb for cb in trainer.callbacks if type(cb) not in types]
    trainer.callbacks = _checkpoints_last(kept + extra)
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
