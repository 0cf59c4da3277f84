"""The Strategy interface: where the model lives and how ranks talk to each other.

The training loop never branches on "distributed or not": it calls these
methods, and a single-device strategy makes every collective a no-op. DDP
(``volt.strategies.ddp``) implements the same interface with torch.distributed.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ContextManager, Dict, Iterable, Optional

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

REDUCE_OPS = ("mean", "sum", "max", "min")


class Strategy(ABC):
    """Base class. Subclasses set ``root_device`` and implement the collectives."""

    def __init__(self) -> None:
        self._lightning_module: Optional["LightningModule"] = None
        self._model: Optional[nn.Module] = None
        self._trainer: Optional["Trainer"] = None

    # --- placement and ranks ------------------------------------------------
    @property
    @abstractmethod
    def root_device(self) -> torch.device:
        """The device this process trains on."""

    @property
    def global_rank(self) -> int:
        return 0

    @property
    def local_rank(self) -> int:
        return 0

    @property
    def node_rank(self) -> int:
        return 0

    @property
    def world_size(self) -> int:
        return 1

    @property
    def num_nodes(self) -> int:
        return 1

    @property
    def num_processes(self) -> int:
        """Processes (devices) on this node."""
        return 1

    @property
    def is_global_zero(self) -> bool:
        return self.global_rank == 0

    @property
    def distributed_sampler_kwargs(self) -> Optional[Dict[str, Any]]:
        """``num_replicas``/``rank`` for a DistributedSampler, or None on one device."""
        return None

    # --- lifecycle ----------------------------------------------------------
    def setup_environment(self) -> None:
        """Prepare the process (e.g. init the process group). Called once per run."""

    def setup(self, trainer: "Trainer", module: "LightningModule") -> None:
        """Move ``module`` to ``root_device`` and wrap it if needed (sets ``model``)."""
        self._trainer = trainer
        self._lightning_module = module
        module.to(self.root_device)
        self._model = module

    def teardown(self) -> None:
        """Release what ``setup``/``setup_environment`` acquired."""

    @property
    def model(self) -> Optional[nn.Module]:
        """The module the loop calls steps through (possibly a DDP wrapper)."""
        return self._model if self._model is not None else self._lightning_module

    @property
    def lightning_module(self) -> Optional["LightningModule"]:
        """The user's unwrapped LightningModule."""
        return self._lightning_module

    # --- state dicts (FSDP gathers full tensors; everyone else returns their own) ---
    def lightning_module_state_dict(self, sharded: bool = False) -> Dict[str, Any]:
        """The weights a checkpoint stores. Every rank calls it (FSDP gathers shards unless ``sharded``)."""
        assert self._lightning_module is not None
        return self._lightning_module.state_dict()

    def optimizer_state(self, optimizer: torch.optim.Optimizer, sharded: bool = False) -> Dict[str, Any]:
        """The optimizer state a checkpoint stores. Every rank calls it. ``sharded`` (for a
        ``torch.distributed.checkpoint`` writer): keyed by parameter name, which DCP can flatten."""
        if not sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint import state_dict as dcp_state  # lazy: only sharded checkpoints need it

        assert self._lightning_module is not None
        return dcp_state.get_optimizer_state_dict(self._lightning_module, optimizer)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
        """Restore what ``optimizer_state`` returned (either form)."""
        if not any(isinstance(key, str) for key in state.get("state", {})):
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint import state_dict as dcp_state  # lazy: only sharded checkpoints need it

        assert self._lightning_module is not None
        dcp_state.set_optimizer_state_dict(self._lightning_module, optimizer, state,
                                           options=dcp_state.StateDictOptions(full_state_dict=True))

    # --- data ---------------------------------------------------------------
    def process_dataloader(self, dataloader: Iterable, stage: str) -> Iterable:
        """Return the loader to iterate in ``stage`` (DDP injects a DistributedSampler)."""
        return dataloader

    def batch_to_device(self, batch: Any, device: Optional[torch.device] = None) -> Any:
        """Move every tensor in a (nested) batch to ``device`` (default ``root_device``)."""
        from volt.utilities import move_data_to_device

        return move_data_to_device(batch, device or self.root_device)

    # --- steps: run through ``model`` so wrapper hooks (DDP) fire ---------------
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._call_step("training_step", *args, **kwargs)

    def validation_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._call_step("validation_step", *args, **kwargs)

    def test_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._call_step("test_step", *args, **kwargs)

    def predict_step(self, *args: Any, **kwargs: Any) -> Any:
        return self._call_step("predict_step", *args, **kwargs)

    def _call_step(self, name: str, *args: Any, **kwargs: Any) -> Any:
        # Single device: call the module directly. DDP overrides this to route the
        # call through the wrapper's forward so gradient hooks are registered.
        assert self._lightning_module is not None
        return getattr(self._lightning_module, name)(*args, **kwargs)

    def no_backward_sync(self, should_sync: bool) -> ContextManager:
        """Context for a backward that must not all-reduce gradients (accumulation)."""
        return contextlib.nullcontext()

    # --- collectives (no-ops on one process) ------------------------------------
    def reduce(self, tensor: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        """Reduce ``tensor`` across ranks with ``reduce_op`` (mean|sum|max|min)."""
        if reduce_op not in REDUCE_OPS:
            raise ValueError(f"reduce_op must be one of {REDUCE_OPS}, got {reduce_op!r}")
        return tensor

    def all_gather(self, tensor: torch.Tensor, sync_grads: bool = False) -> torch.Tensor:
        """Stack ``tensor`` from every rank along a new first dimension."""
        return tensor.unsqueeze(0) if self.world_size > 1 else tensor

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Return rank ``src``'s ``obj`` on every rank."""
        return obj

    def barrier(self, name: Optional[str] = None) -> None:
        """Wait for every rank."""

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """Agree on a flag: True when all (``all=True``) or any rank says True."""
        return decision
