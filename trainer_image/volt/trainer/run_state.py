"""The state of one run (fit, validate, test, predict): what the loops decide once and read per batch.

The Trainer holds one ``RunState`` per entry point (``trainer.run_state``, a new one at the
start of each run). The fit loop fills it while setting up (``fit_loop._setup_optimizers``,
``fit_loop._prepare_hot_path``, ``fit_loop._load_train_dataloader``) and the batch loop
reads it; nothing in it outlives the run or is saved in a checkpoint (the checkpointed
counters are ``trainer.progress``; exact-resume RNG states are ``trainer.rng_snapshots``).
"""
from __future__ import annotations

from typing import Any, Callable, FrozenSet, List, Optional, Tuple

import torch


class HotPath:
    """Per-batch decisions that cannot change during a run, made once before the first batch.

    The batch loop reads these flags instead of calling the hook-dispatch helpers each step;
    each flag is exactly the test the loop would otherwise repeat per batch.
    """

    __slots__ = ("plain_transfer", "device", "batch_start", "plain_auto", "step_end", "zero_grad_hook",
                 "legacy_step", "optimizer_step_hook", "clip_hook", "plain_backward", "closure", "simple",
                 "optimizer", "autocast", "step_context", "batch_end_callbacks", "batch_end_module", "batch_end_1x")

    plain_transfer: bool
    device: torch.device
    batch_start: bool
    plain_auto: bool
    step_end: bool
    zero_grad_hook: bool
    legacy_step: bool
    optimizer_step_hook: bool
    clip_hook: bool
    plain_backward: bool
    closure: Callable[[], Any]
    simple: bool  # one frame per epoch (fit_loop._run_simple_epoch)
    optimizer: Optional[torch.optim.Optimizer]
    autocast: Any
    step_context: Any
    batch_end_callbacks: Tuple[Callable[..., Any], ...]
    batch_end_module: bool
    batch_end_1x: bool


class RunState:
    """What the fit loop decided for this run. Defaults are those of a run that has not set up fit."""

    __slots__ = ("hot", "silent", "step_takes_optimizer_idx", "step_takes_hiddens", "legacy_optimizer_step",
                 "collect_train_outputs", "train_outputs_needed", "train_loader_loaded", "val_check_batch",
                 "direct_training_step", "auto_stepping", "profiling", "transfer_hooks", "val_loaded_epoch", "redeal",
                 "compiled_step")

    def __init__(self) -> None:
        self.hot: Optional[HotPath] = None  # set before the first training batch
        # Per-step hooks nobody overrides: the loop skips even the dispatch call for them.
        self.silent: FrozenSet[str] = frozenset()
        # The signatures of the module's training_step and optimizer_step (1.x forms).
        self.step_takes_optimizer_idx = False
        self.step_takes_hiddens = False
        self.legacy_optimizer_step = False
        # training_epoch_end or a 1.x on_train_epoch_end(outputs) reads the epoch's step outputs;
        # some hook reads a step's outputs (the loop then detaches them).
        self.collect_train_outputs = False
        self.train_outputs_needed = False
        # False from fit's setup until the train loader is loaded (estimated_stepping_batches may load it early).
        self.train_loader_loaded = True
        self.val_check_batch: float = 0.0  # validate after every this many batches (INF: at the epoch's end)
        # training_step goes straight to the module (the strategy would only forward it)
        self.direct_training_step = False
        self.auto_stepping = False  # True while the fit loop steps an optimizer (automatic optimization)
        self.profiling = False  # a profiler records this run (volt.trainer.profiling)
        # The module's and datamodule's batch-transfer hooks ([] when none is overridden); None: not looked up yet.
        self.transfer_hooks: Optional[List[Any]] = None
        self.val_loaded_epoch = 0  # the epoch whose validation loaders are loaded (reload_dataloaders_every_n_epochs)
        # A mid-epoch checkpoint of another world size whose rest of the epoch is re-dealt (volt.resize.Redeal).
        self.redeal: Optional[Any] = None
        # Trainer(compile=...): runs the whole automatic step (volt.trainer.compiled_step); None: eager.
        self.compiled_step: Optional[Callable[..., Any]] = None
