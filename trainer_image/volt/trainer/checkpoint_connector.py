"""Build a checkpoint dict (Lightning's keys) from a trainer, and restore one into it."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Optional

from volt import resume
from volt.checkpoint import JobOwnership, load_latest, resolve_ckpt_path
from volt.checkpoint_sharded import load_any

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

SCALER_KEY = "native_amp_scaling_state"


def dump_checkpoint(trainer: "Trainer", weights_only: bool = False, sharded: bool = False) -> Dict[str, Any]:
    """The checkpoint of ``trainer``'s current state; callbacks and the module may add to it.

    ``sharded``: weights and optimizer states as each rank holds them (FSDP: its shards), for a
    sharded writer (``volt.checkpoint_sharded``); otherwise full tensors.
    """
    from volt import __version__

    module = trainer.lightning_module
    checkpoint: Dict[str, Any] = {
        "epoch": trainer.current_epoch,
        "global_step": trainer.global_step,
        "volt_version": __version__,
        "state_dict": trainer.strategy.lightning_module_state_dict(sharded=sharded),
        "loops": {"fit_loop": trainer.progress.state_dict()},
    }
    if not weights_only:
        checkpoint["callbacks"] = _callback_states(trainer)
        checkpoint["optimizer_states"] = [trainer.strategy.optimizer_state(opt, sharded=sharded)
                                          for opt in trainer.optimizers]
        checkpoint["lr_schedulers"] = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
        scaler_state = trainer.precision_plugin.state_dict()
        if scaler_state:
            checkpoint[SCALER_KEY] = scaler_state
        checkpoint[resume.RESUME_KEY] = resume.dump_resume_state(trainer)  # RNG states for exact resume
    if module.hparams:
        checkpoint["hyper_parameters"] = dict(module.hparams)
        checkpoint["hparams_name"] = "kwargs"
    dm = trainer.datamodule
    if dm is not None:
        dm_state = dm.state_dict()
        if dm_state:
            checkpoint[type(dm).__qualname__] = dm_state
        if dm.hparams:
            checkpoint["datamodule_hyper_parameters"] = dict(dm.hparams)
    if not weights_only:
        for cb in trainer.callbacks:
            cb.on_save_checkpoint(trainer, module, checkpoint)
    module.on_save_checkpoint(checkpoint)
    return checkpoint


def _callback_states(trainer: "Trainer") -> Dict[str, Any]:
    states: Dict[str, Any] = {}
    for cb in trainer.callbacks:
        state = cb.state_dict()
        if state:
            key = cb.state_key
            if key in states:
                raise ValueError(
                    f"two callbacks share the checkpoint state key {key!r}; give them distinct state_key values"
                )
            states[key] = state
    return states


def load_checkpoint(trainer: "Trainer", ckpt_path: Optional[str]) -> Optional[Dict[str, Any]]:
    """The checkpoint ``ckpt_path`` names (a path, ``"last"``, ``"best"``), or None for a fresh start.

    ``"last"`` is looked up where checkpoints are written (``JobContract.checkpoint_dir_for``):
    the TrainingJob's directory, else the ModelCheckpoint's, so a job resumes from its volume
    even when the script has no ModelCheckpoint (the SIGTERM checkpoint is there).
    """
    if ckpt_path is None:
        trainer.ckpt_path = None
        return None
    cb = trainer.checkpoint_callback
    dirpath = trainer.job_contract.checkpoint_dir_for(getattr(cb, "dirpath", None) if cb is not None else None)
    best = getattr(cb, "best_model_path", None) if cb is not None else None
    if ckpt_path == "best" and not best:
        raise ValueError(
            "ckpt_path='best' but no best checkpoint is known: fit() with a ModelCheckpoint first, or pass a path"
        )
    if ckpt_path == "last":  # the newest checkpoint that verifies and loads; rank 0 chooses for every rank
        contract = trainer.job_contract
        path, checkpoint = load_latest(
            dirpath, lambda p: load_any(trainer.checkpoint_io, p),  # a file, or a sharded directory
            is_global_zero=trainer.is_global_zero,
            broadcast=trainer.strategy.broadcast if trainer.world_size > 1 else None,
            ownership=JobOwnership(contract.job_uid, contract.resume_any_job),
        )
        trainer.ckpt_path = path
        log.info("ckpt_path='last': %s", f"restoring from checkpoint {path}" if path else "nothing saved yet, starting fresh")
        return checkpoint
    path = resolve_ckpt_path(ckpt_path, dirpath, best)
    trainer.ckpt_path = path
    if path is None:
        log.info("ckpt_path=%r: no checkpoint saved yet, starting fresh", ckpt_path)
        return None
    log.info("restoring from checkpoint %s", path)
    return load_any(trainer.checkpoint_io, path)


def restore_model_and_callbacks(trainer: "Trainer", checkpoint: Dict[str, Any]) -> None:
    """Weights, datamodule and callback states (before optimizers exist)."""
    _require(checkpoint, "state_dict")
    module = trainer.lightning_module
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=getattr(module, "strict_loading", True))
    dm = trainer.datamodule
    if dm is not None and type(dm).__qualname__ in checkpoint:
        dm.load_state_dict(checkpoint[type(dm).__qualname__])
    states = checkpoint.get("callbacks", {})
    for cb in trainer.callbacks:
        state = states.get(cb.state_key)
        if state:
            cb.load_state_dict(state)
        cb.on_load_checkpoint(trainer, module, checkpoint)


def restore_training_state(trainer: "Trainer", checkpoint: Dict[str, Any]) -> None:
    """Optimizers, schedulers, loss scaler and loop progress (after configure_optimizers)."""
    if "optimizer_states" not in checkpoint:
        raise ValueError(
            "the checkpoint holds weights only (saved with weights_only=True): training cannot resume from it. "
            "Load it with LightningModule.load_from_checkpoint or model.load_state_dict instead"
        )
    opt_states = checkpoint["optimizer_states"]
    if len(opt_states) != len(trainer.optimizers):
        raise ValueError(
            f"the checkpoint has {len(opt_states)} optimizer states but configure_optimizers() returned "
            f"{len(trainer.optimizers)} optimizers"
        )
    for opt, state in zip(trainer.optimizers, opt_states):
        trainer.strategy.load_optimizer_state(opt, state)
    sched_states = checkpoint.get("lr_schedulers", [])
    if len(sched_states) != len(trainer.lr_scheduler_configs):
        raise ValueError(
            f"the checkpoint has {len(sched_states)} lr scheduler states but configure_optimizers() returned "
            f"{len(trainer.lr_scheduler_configs)} schedulers"
        )
    for cfg, state in zip(trainer.lr_scheduler_configs, sched_states):
        cfg.scheduler.load_state_dict(state)
    if SCALER_KEY in checkpoint:
        trainer.precision_plugin.load_state_dict(checkpoint[SCALER_KEY])
    resume.load_resume_state(trainer, checkpoint)  # fails on a world-size change
    progress = trainer.progress
    loops = checkpoint.get("loops", {})
    if "fit_loop" in loops:
        progress.load_state_dict(loops["fit_loop"])
    else:  # a checkpoint without loop state (e.g. written by another tool): trust epoch/global_step
        progress.current_epoch = int(checkpoint.get("epoch", 0))
        progress.global_step = int(checkpoint.get("global_step", 0))
        progress.epoch_batches_done = True
    if progress.epoch_batches_done:
        progress.start_epoch(progress.current_epoch + 1)


def _require(checkpoint: Dict[str, Any], key: str) -> None:
    if key not in checkpoint:
        raise ValueError(f"not a volt/Lightning checkpoint: the key {key!r} is missing (keys: {sorted(checkpoint)[:10]})")
