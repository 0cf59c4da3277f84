"""Fully sharded data parallel (FSDP2, ``torch.distributed.fsdp.fully_shard``): gloo on CPU, NCCL on GPU.

Each rank keeps 1/world_size of every parameter, gradient and optimizer state
(DTensors sharded on dim 0). A sharded module all-gathers its parameters right
before its forward and frees them after (``reshard_after_forward``); gradients
are reduce-scattered in backward. Everything that is not about parameters -
the process group, the DistributedSampler, the collectives behind
``self.log(sync_dist=True)``, the gloo control group - is DDP's
(``FSDPStrategy`` subclasses ``DDPStrategy``).

Order, as Lightning's: the module is sharded in ``setup`` and
``configure_optimizers`` runs afterwards, so optimizers hold the sharded
parameters. Single-file checkpoints hold full (unsharded) tensors gathered by
``torch.distributed.checkpoint.state_dict``; see docs/distributed.md.
"""
from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Dict, Iterator, Optional, Set, Type, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict,
)
from torch.distributed.fsdp import (
    CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard, register_fsdp_forward_method,
)

from volt.checkpoint_sharded import ShardedCheckpointIO
from volt.strategies.ddp import DDPStrategy

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

#: Lightning's (FSDP1) ``sharding_strategy`` names and the FSDP2 ``reshard_after_forward`` each means.
SHARDING_STRATEGIES: Dict[str, bool] = {"FULL_SHARD": True, "SHARD_GRAD_OP": False}
#: The LightningModule methods the loop calls instead of ``forward``: each all-gathers the root's parameters.
_STEP_METHODS = ("training_step", "validation_step", "test_step", "predict_step")

Policy = Union[None, Set[Type[nn.Module]], Callable[[nn.Module], bool]]


def _policy_fn(policy: Policy, argument: str) -> Callable[[nn.Module], bool]:
    """``policy`` (a set of module classes, or a callable module -> bool) as a predicate."""
    if policy is None:
        return lambda module: False
    if isinstance(policy, (set, frozenset, list, tuple)):
        classes = tuple(policy)
        if not all(isinstance(c, type) and issubclass(c, nn.Module) for c in classes):
            raise TypeError(f"FSDPStrategy({argument}=...) must be a set of nn.Module classes or a callable, "
                            f"got {policy!r}")
        return lambda module: isinstance(module, classes)
    if callable(policy):
        return policy
    raise TypeError(f"FSDPStrategy({argument}=...) must be a set of nn.Module classes or a callable, got {policy!r}")


class FSDPStrategy(DDPStrategy):
    """FSDP2 with Lightning's argument names.

    Args:
        sharding_strategy: ``"FULL_SHARD"`` (default: parameters are freed after forward and
            gathered again for backward, least memory) or ``"SHARD_GRAD_OP"`` (kept gathered
            between forward and backward: one all-gather less per step, more memory).
            ``"NO_SHARD"`` and ``"HYBRID_SHARD"`` need a 2-D device mesh and are refused.
        reshard_after_forward: FSDP2's own name; overrides ``sharding_strategy`` when given.
        auto_wrap_policy: the submodules sharded as their own unit (one all-gather each): a set of
            module classes (e.g. ``{TransformerBlock}``) or a callable ``module -> bool``. The
            LightningModule itself is always the root unit. Without a policy, one unit: the whole
            model is gathered at once (no memory saved during forward, only between steps).
        activation_checkpointing_policy: submodules whose activations are recomputed in backward
            instead of stored (a set of classes or a callable), through ``torch.utils.checkpoint``.
        mixed_precision: a ``torch.distributed.fsdp.MixedPrecisionPolicy`` (param/reduce dtypes).
        state_dict_type: ``"sharded"`` (default: checkpoints are DCP directories, every rank writes
            its own shards; ``volt.checkpoint_sharded``) or ``"full"`` (one file gathered on rank 0).
        async_checkpoint: with ``"sharded"``, training waits only for the copy of the state to CPU
            memory; the write runs in the background (default True).
        cpu_offload: ``True`` or a ``CPUOffloadPolicy``: sharded parameters, gradients and optimizer
            state live in CPU memory and are copied to the GPU for each unit's compute.
        kwargs: the DDP arguments (``accelerator``, ``devices``, ``num_nodes``, ``process_group_backend``,
            ``timeout``).
    """

    def __init__(
        self,
        sharding_strategy: str = "FULL_SHARD",
        reshard_after_forward: Optional[bool] = None,
        auto_wrap_policy: Policy = None,
        activation_checkpointing_policy: Policy = None,
        mixed_precision: Optional[MixedPrecisionPolicy] = None,
        cpu_offload: Union[bool, OffloadPolicy, None] = None,
        state_dict_type: str = "sharded",
        async_checkpoint: bool = True,
        **kwargs: Any,
    ) -> None:
        unknown = set(kwargs) - {"accelerator", "devices", "num_nodes", "process_group_backend", "timeout",
                                 "sync_batchnorm"}
        if unknown:
            raise TypeError(f"FSDPStrategy got unexpected argument(s) {sorted(unknown)}")
        key = str(sharding_strategy).upper()
        if key not in SHARDING_STRATEGIES:
            raise ValueError(
                f"FSDPStrategy(sharding_strategy={sharding_strategy!r}): FSDP2 supports {sorted(SHARDING_STRATEGIES)}; "
                "NO_SHARD is strategy='ddp', HYBRID_SHARD needs a 2-D device mesh (not supported)"
            )
        self.sharding_strategy = key
        self.reshard_after_forward = SHARDING_STRATEGIES[key] if reshard_after_forward is None else bool(reshard_after_forward)
        self._wrap = _policy_fn(auto_wrap_policy, "auto_wrap_policy")
        self._checkpointed = _policy_fn(activation_checkpointing_policy, "activation_checkpointing_policy")
        self._has_ac = activation_checkpointing_policy is not None
        if mixed_precision is not None and not isinstance(mixed_precision, MixedPrecisionPolicy):
            raise TypeError("FSDPStrategy(mixed_precision=...) must be a torch.distributed.fsdp.MixedPrecisionPolicy, "
                            f"got {type(mixed_precision).__name__}")
        self.mixed_precision = mixed_precision or MixedPrecisionPolicy()
        if cpu_offload is True:
            cpu_offload = CPUOffloadPolicy()
        elif cpu_offload in (False, None):
            cpu_offload = OffloadPolicy()  # FSDP2's "no offload"
        if not isinstance(cpu_offload, OffloadPolicy):
            raise TypeError(f"FSDPStrategy(cpu_offload=...) must be a bool or a CPUOffloadPolicy, got {cpu_offload!r}")
        self.cpu_offload = cpu_offload
        if state_dict_type not in ("sharded", "full"):
            raise ValueError(f"FSDPStrategy(state_dict_type={state_dict_type!r}) must be 'sharded' or 'full'")
        self.state_dict_type = state_dict_type
        super().__init__(**kwargs)
        # The Trainer adopts it (unless plugins=[CheckpointIO] names another): a sharded directory per
        # checkpoint, every rank writing its own shards; "full" keeps the single torch.save file.
        self.checkpoint_io = ShardedCheckpointIO(async_save=async_checkpoint) if state_dict_type == "sharded" else None

    # --- sharding -------------------------------------------------------------------------
    def setup(self, trainer: "Trainer", module: "LightningModule") -> None:
        self._trainer = trainer
        self._lightning_module = module
        if not isinstance(module, FSDPModule):
            if isinstance(self.cpu_offload, CPUOffloadPolicy):
                module.to("cpu")  # fully_shard moves each unit's compute copies to the device
            else:
                module.to(self.root_device)
            if not dist.is_initialized():
                raise RuntimeError("FSDPStrategy needs torch.distributed: run under volt-run (or torchrun)")
            self._shard(module)
        self._model = module

    def _shard(self, module: "LightningModule") -> None:
        if self._has_ac:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

            apply_activation_checkpointing(module, check_fn=self._checkpointed)
        kwargs = {"reshard_after_forward": self.reshard_after_forward, "mp_policy": self.mixed_precision,
                  "offload_policy": self.cpu_offload}
        if self.root_device.type == "cuda":
            from torch.distributed.device_mesh import init_device_mesh

            kwargs["mesh"] = init_device_mesh("cuda", (self.world_size,))
        units = 0
        # Leaves first (post-order), so a unit's parameters are not claimed by an enclosing one.
        for child in reversed(list(module.modules())):
            if child is not module and self._wrap(child) and not isinstance(child, FSDPModule):
                fully_shard(child, **kwargs)
                units += 1
        fully_shard(module, **kwargs)
        for name in _STEP_METHODS:  # the loop calls these, not forward: they must gather the root's parameters
            if callable(getattr(module, name, None)):
                register_fsdp_forward_method(module, name)
        if self.is_global_zero:
            log.info("FSDP: %d sharded unit(s) + the root over %d process(es), reshard_after_forward=%s",
                     units, self.world_size, self.reshard_after_forward)

    def teardown(self) -> None:
        """The module stays sharded (a later test()/validate() in the script reuses it)."""

    # --- steps --------------------------------------------------------------------------------
    def _call_step(self, name: str, *args: Any, **kwargs: Any) -> Any:
        assert self._lightning_module is not None
        return getattr(self._lightning_module, name)(*args, **kwargs)

    def no_backward_sync(self, should_sync: bool) -> ContextManager:
        if should_sync or not isinstance(self._lightning_module, FSDPModule):
            return contextlib.nullcontext()
        return _no_gradient_sync(self._lightning_module)

    # --- state dicts: full tensors in single-file checkpoints ---------------------------------
    _FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
    _SHARDED = StateDictOptions()

    def lightning_module_state_dict(self, sharded: bool = False) -> Dict[str, Any]:
        """Full (unsharded) weights on CPU, or with ``sharded`` this rank's DTensor shards. A collective:
        every rank calls it; full tensors reach rank 0 only."""
        module = self._lightning_module
        assert module is not None
        if not isinstance(module, FSDPModule):
            return module.state_dict()
        return get_model_state_dict(module, options=self._SHARDED if sharded else self._FULL)

    def optimizer_state(self, optimizer: torch.optim.Optimizer, sharded: bool = False) -> Dict[str, Any]:
        """Optimizer state keyed by parameter name, full or (``sharded``) this rank's shards; a sharded
        checkpoint is read back as full tensors, so ``load_optimizer_state`` takes either at any world size."""
        module = self._lightning_module
        if not isinstance(module, FSDPModule):
            return optimizer.state_dict()
        return get_optimizer_state_dict(module, optimizer, options=self._SHARDED if sharded else self._FULL)

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: Dict[str, Any]) -> None:
        """Load a full optimizer state (from ``optimizer_state``): every rank keeps its own shard of it."""
        module = self._lightning_module
        if not isinstance(module, FSDPModule):
            optimizer.load_state_dict(state)
            return
        set_optimizer_state_dict(module, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))

    def __repr__(self) -> str:
        return (f"FSDPStrategy(accelerator={self._accelerator!r}, devices={self.devices}, num_nodes={self.num_nodes}, "
                f"sharding_strategy={self.sharding_strategy!r}, backend={self.process_group_backend!r})")


@contextlib.contextmanager
def _no_gradient_sync(module: FSDPModule) -> Iterator[None]:
    # Accumulation: keep unsharded gradients locally, reduce-scatter on the last micro-batch.
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)
