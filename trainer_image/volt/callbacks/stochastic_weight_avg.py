"""StochasticWeightAveraging: epoch-wise SWA with an annealed SWA learning rate (Lightning 2.6's callback).

Epochs are 0-based here. With ``swa_epoch_start`` resolved to the 1-based epoch ``s`` (a float is a fraction
of ``max_epochs``), the SWA epochs are ``swa_start = max(s - 1, 0)`` to ``swa_end = max_epochs - 1``:

- at the start of the first SWA epoch, ``torch.optim.swa_utils.SWALR`` replaces the LR scheduler (or is
  added); the trainer steps it after every epoch, annealing each param group's lr to ``swa_lrs`` over
  ``annealing_epochs`` epochs (``annealing_strategy`` "cos" or "linear");
- at the start of every SWA epoch the weights as they are then (the previous epoch's result) are folded
  into the average (equal weights, or ``avg_fn``); the last epoch's own updates are therefore not in it;
- when training ends, the averaged parameters replace the model's. A model with BatchNorm layers gets
  one more epoch (``max_epochs`` is raised by one during the fit): the averaged weights are put in, the
  BatchNorm statistics are reset and recomputed as a plain average over one pass of the training data,
  and the optimizer does not change the weights during that epoch.

The averaged copy is made at ``setup`` (before the model moves to its device) and kept on ``device``.
"""
from __future__ import annotations

import logging
import math
import warnings
from copy import deepcopy
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Literal, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import SWALR

from volt.callbacks.base import Callback

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

AvgFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class StochasticWeightAveraging(Callback):
    """Stochastic Weight Averaging (Izmailov et al., 2018) over the last epochs of a fit.

    Args:
        swa_lrs: the SWA learning rate, for every param group (a number) or per group (a list).
        swa_epoch_start: 1-based epoch where SWA starts (an int >= 1), or a fraction of ``max_epochs``
            (a float in [0, 1]: epoch ``int(fraction * max_epochs)``).
        annealing_epochs: epochs over which the lr goes from its value to ``swa_lrs``.
        annealing_strategy: ``"cos"`` or ``"linear"``.
        avg_fn: ``avg_fn(averaged_param, model_param, num_averaged) -> new averaged_param``; None: the
            equal-weight average.
        device: where the averaged copy lives; None: the model's device.

    Works with one optimizer and at most one LR scheduler (which it replaces during SWA).
    """

    def __init__(
        self,
        swa_lrs: Union[float, List[float]],
        swa_epoch_start: Union[int, float] = 0.8,
        annealing_epochs: int = 10,
        annealing_strategy: Literal["cos", "linear"] = "cos",
        avg_fn: Optional[AvgFn] = None,
        device: Optional[Union[torch.device, str]] = torch.device("cpu"),
    ) -> None:
        self._swa_epoch_start = self._check_epoch_start(swa_epoch_start)
        self._swa_lrs: Union[float, List[float]] = self._check_lrs(swa_lrs)
        if isinstance(annealing_epochs, bool) or not isinstance(annealing_epochs, int) or annealing_epochs < 0:
            raise ValueError(f"StochasticWeightAveraging(annealing_epochs={annealing_epochs!r}) must be an int >= 0")
        if annealing_strategy not in ("cos", "linear"):
            raise ValueError(f"StochasticWeightAveraging(annealing_strategy={annealing_strategy!r}) must be "
                             "'cos' or 'linear'")
        if avg_fn is not None and not callable(avg_fn):
            raise TypeError(f"StochasticWeightAveraging(avg_fn=...) must be callable, got {type(avg_fn).__name__}")
        if device is not None and not isinstance(device, (torch.device, str)):
            raise TypeError(f"StochasticWeightAveraging(device=...) must be a torch.device or a device name, "
                            f"got {device!r}")
        if isinstance(device, str):
            try:
                torch.device(device)
            except RuntimeError as err:
                raise ValueError(f"StochasticWeightAveraging(device={device!r}) is not a device name: {err}") from None
        self._annealing_epochs = annealing_epochs
        self._annealing_strategy = annealing_strategy
        self._avg_fn: AvgFn = avg_fn or self.avg_fn
        self._device = device

        self.n_averaged: Optional[Tensor] = None  # models folded into the average (a tensor, as avg_fn takes it)
        self._init_n_averaged = 0  # n_averaged restored from a checkpoint, until the tensor is made
        self._latest_update_epoch = -1
        self._average_model: Optional["LightningModule"] = None
        self._initialized = False
        self._swa_scheduler: Optional[SWALR] = None
        self._scheduler_state: Optional[Dict[str, Any]] = None  # SWALR state from a checkpoint
        self._model_contains_batch_norm: Optional[bool] = None
        self._max_epochs: int = -1  # the trainer's max_epochs before the BatchNorm epoch is added
        self.momenta: Dict[_BatchNorm, Optional[float]] = {}
        # volt: the scheduler(s) configure_optimizers returned, as SWALR found them (saved in the state, so
        # that a resumed fit restores them before this callback replaces them again)
        self._replaced_scheduler_states: Optional[List[Dict[str, Any]]] = None
        self._resume_epoch_step = False  # resumed after an epoch's batches, before its SWALR step
        self._added_epoch = False
        self._bn_epoch: Optional[int] = None
        self._saved_accumulation: Any = None
        self._frozen: Optional[Tuple[torch.optim.Optimizer, Any]] = None  # optimizer, its own step attribute

    @staticmethod
    def _check_epoch_start(value: Any) -> Union[int, float]:
        if isinstance(value, float):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"StochasticWeightAveraging(swa_epoch_start={value!r}): a float must be a "
                                 "fraction of max_epochs in [0, 1]")
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"StochasticWeightAveraging(swa_epoch_start=...) must be an int >= 1 or a float in "
                            f"[0, 1], got {value!r}")
        if value < 1:
            raise ValueError(f"StochasticWeightAveraging(swa_epoch_start={value}) must be >= 1 (1-based epoch)")
        return value

    @staticmethod
    def _check_lrs(value: Any) -> Union[float, List[float]]:
        if _is_number(value):
            if not value > 0:
                raise ValueError(f"StochasticWeightAveraging(swa_lrs={value!r}) must be > 0")
            return float(value)
        if isinstance(value, (list, tuple)) and value and all(_is_number(v) and v > 0 for v in value):
            return [float(v) for v in value]
        raise ValueError(f"StochasticWeightAveraging(swa_lrs={value!r}) must be a positive number or a non-empty "
                         "list of positive numbers (one per param group)")

    @property
    def swa_start(self) -> int:
        """First SWA epoch (0-based)."""
        if not isinstance(self._swa_epoch_start, int):
            raise RuntimeError("swa_start is known once fit starts (swa_epoch_start is a fraction of max_epochs)")
        return max(self._swa_epoch_start - 1, 0)

    @property
    def swa_end(self) -> int:
        """Last SWA epoch (0-based); infinite when max_epochs is -1."""
        if self._max_epochs == -1:
            return math.inf  # type: ignore[return-value]
        return self._max_epochs - 1

    @staticmethod
    def pl_module_contains_batch_norm(pl_module: "LightningModule") -> bool:
        return any(isinstance(m, _BatchNorm) for m in pl_module.modules())

    # --- fit ------------------------------------------------------------------------------------
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        if stage == "fit":  # copied before the strategy moves the model to its device
            self._average_model = deepcopy(pl_module)

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"StochasticWeightAveraging works with one optimizer; configure_optimizers() returned "
                             f"{len(trainer.optimizers)}")
        if len(trainer.lr_scheduler_configs) > 1:
            raise ValueError(f"StochasticWeightAveraging works with at most one LR scheduler; configure_optimizers() "
                             f"returned {len(trainer.lr_scheduler_configs)}")
        groups = len(trainer.optimizers[0].param_groups)
        if isinstance(self._swa_lrs, list) and len(self._swa_lrs) != groups:
            raise ValueError(f"StochasticWeightAveraging(swa_lrs=...) has {len(self._swa_lrs)} values but the "
                             f"optimizer has {groups} param groups")
        if isinstance(self._swa_epoch_start, float):
            if trainer.max_epochs == -1:
                raise ValueError("StochasticWeightAveraging(swa_epoch_start=<float>) is a fraction of max_epochs, "
                                 "which is -1 (unlimited): pass an int epoch instead")
            self._swa_epoch_start = int(trainer.max_epochs * self._swa_epoch_start)
        self._model_contains_batch_norm = self.pl_module_contains_batch_norm(pl_module)
        self._max_epochs = trainer.max_epochs
        if self.swa_start > self.swa_end and self._count() == 0:
            warnings.warn(f"StochasticWeightAveraging: swa_epoch_start={self._swa_epoch_start} is after the last "
                          f"epoch (max_epochs={self._max_epochs}); no weights will be averaged")
        elif self._model_contains_batch_norm and self._max_epochs != -1:
            trainer.max_epochs += 1  # one more epoch, to recompute the BatchNorm statistics
            self._added_epoch = True

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._added_epoch and math.isinf(trainer.num_training_batches):
            raise ValueError("StochasticWeightAveraging recomputes BatchNorm statistics over one epoch, which needs "
                             "a train dataloader with a length (an iterable-style dataset has none)")
        if self._scheduler_state is not None and not self._initialized:
            # Resuming after SWA started. Here, after the trainer restored the optimizer and schedulers
            # (whichever side of on_fit_start it does that) and before any epoch hook, the SWALR replaces
            # the configured scheduler again, so that no hook sees the lr that one may have set on resume.
            if self.swa_start <= trainer.current_epoch <= self.swa_end:
                self._start_swa(trainer, pl_module)
            else:
                trainer.lr_scheduler_configs.clear()

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        epoch = trainer.current_epoch
        in_swa = self.swa_start <= epoch <= self.swa_end
        if in_swa and not self._initialized:
            self._start_swa(trainer, pl_module)
        if in_swa and epoch > self._latest_update_epoch:
            assert self._average_model is not None and self.n_averaged is not None
            self.update_parameters(self._average_model, pl_module, self.n_averaged, self._avg_fn)
            self._latest_update_epoch = epoch
        # "==": a model saved with this callback may train on later
        if self._max_epochs != -1 and epoch == self.swa_end + 1 and self._count() > 0:
            self._start_batch_norm_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._thaw_optimizer()  # the BatchNorm pass is over

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        self._thaw_optimizer()

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        # Epochs run, counting one stopped part-way (by max_steps) as Lightning does.
        epochs_run = trainer.current_epoch + (1 if trainer.progress.batch_idx else 0)
        if self._bn_epoch is not None:
            self._thaw_optimizer()
            trainer.accumulate_grad_batches = self._saved_accumulation
            self._saved_accumulation, self._bn_epoch = None, None
            self.reset_momenta()
        elif (epochs_run - 1 == self.swa_end or self._max_epochs == -1) and self._count() > 0:
            assert self._average_model is not None
            self.transfer_weights(self._average_model, pl_module)
        if self._added_epoch:
            trainer.max_epochs -= 1
            self._added_epoch = False

    def _start_swa(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        from volt.trainer.optimizers import LRSchedulerConfig

        self._initialized = True
        assert self._average_model is not None
        device = self._device or pl_module.device
        self._average_model = self._average_model.to(device)
        optimizer = trainer.optimizers[0]
        if isinstance(self._swa_lrs, float):
            self._swa_lrs = [self._swa_lrs] * len(optimizer.param_groups)
        for lr, group in zip(self._swa_lrs, optimizer.param_groups):
            group["initial_lr"] = lr  # SWALR's base lrs ("cos" starts it from last_epoch=max_epochs)
        self._swa_scheduler = SWALR(
            optimizer, swa_lr=self._swa_lrs, anneal_epochs=self._annealing_epochs,
            anneal_strategy=self._annealing_strategy,
            last_epoch=trainer.max_epochs if self._annealing_strategy == "cos" else -1,
        )
        if self._scheduler_state is not None:
            self._resume_scheduler(optimizer)
        elif trainer.current_epoch != self.swa_start:
            warnings.warn("StochasticWeightAveraging starts after swa_start without a saved SWA state (a checkpoint "
                          "written without it?): the lr annealing starts over")
        config = LRSchedulerConfig(self._swa_scheduler)
        configs = trainer.lr_scheduler_configs
        if configs:
            replaced = configs[0]
            if self._replaced_scheduler_states is None:  # not on resume: already said, and saved
                if replaced.interval != "epoch" or replaced.frequency != 1:
                    warnings.warn(f"StochasticWeightAveraging steps its scheduler every epoch; the configured one "
                                  f"was stepped every {replaced.frequency} {replaced.interval}(s)")
                log.info("StochasticWeightAveraging: %s replaces %s", type(self._swa_scheduler).__name__,
                         type(replaced.scheduler).__name__)
                self._replaced_scheduler_states = [replaced.scheduler.state_dict()]
            configs[0] = config
        else:
            if self._replaced_scheduler_states is None:
                self._replaced_scheduler_states = []
            configs.append(config)
        if self.n_averaged is None:
            self.n_averaged = torch.tensor(self._init_n_averaged, dtype=torch.long, device=device)

    def _resume_scheduler(self, optimizer: torch.optim.Optimizer) -> None:
        """Restore the saved SWALR (volt saves it before the epoch-end scheduler step that Lightning saves after)."""
        assert self._swa_scheduler is not None and self._scheduler_state is not None
        self._swa_scheduler.load_state_dict(self._scheduler_state)
        # The configured scheduler may have been stepped on resume (before this callback removed it):
        # the lr is the SWALR's.
        for group, lr in zip(optimizer.param_groups, self._swa_scheduler.get_last_lr()):
            group["lr"] = lr
        if self._resume_epoch_step:
            self._swa_scheduler.step()  # the step the interrupted run took after the saved epoch
            self._resume_epoch_step = False

    def _start_batch_norm_epoch(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        assert self._average_model is not None
        self.transfer_weights(self._average_model, pl_module)
        self.reset_batch_norm_and_save_state(pl_module)
        # One pass of forward passes: the loop steps only on the last batch (so global_step moves by one,
        # as in Lightning), and that step leaves the averaged weights and the optimizer state alone.
        self._saved_accumulation = trainer.accumulate_grad_batches
        trainer.accumulate_grad_batches = int(trainer.num_training_batches) + 1
        self._freeze_optimizer(trainer.optimizers[0])
        self._bn_epoch = trainer.current_epoch

    def _freeze_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Until ``_thaw_optimizer``, ``optimizer.step`` only evaluates its closure (LBFGS passes one).

        volt's loop has no switch to skip backward and step (Lightning's fit loop has one), so the
        optimizer's own ``step`` is shadowed for the BatchNorm epoch. A loss scaler still sees the
        gradients: only the update is skipped.
        """
        def evaluate_closure(closure: Optional[Callable[[], Any]] = None, **kwargs: Any) -> Any:
            return closure() if closure is not None else None

        # an LR scheduler may already have put its own wrapper on the instance: restore that one after
        self._frozen = (optimizer, optimizer.__dict__.get("step"))
        optimizer.step = evaluate_closure  # type: ignore[method-assign]

    def _thaw_optimizer(self) -> None:
        if self._frozen is None:
            return
        optimizer, own_step = self._frozen
        self._frozen = None
        if own_step is None:
            del optimizer.step
        else:
            optimizer.step = own_step  # type: ignore[method-assign]
        optimizer.zero_grad(set_to_none=True)  # the pass's gradients are of no use

    def _count(self) -> int:
        """n_averaged as an int (one device read when the tensor is on an accelerator)."""
        return self._init_n_averaged if self.n_averaged is None else int(self.n_averaged)

    # --- the averaging (Lightning's public helpers) ---------------------------------------------
    @staticmethod
    @torch.no_grad()
    def transfer_weights(src_pl_module: nn.Module, dst_pl_module: nn.Module) -> None:
        """Copy the parameters (not the buffers) of ``src_pl_module`` into ``dst_pl_module``."""
        for src, dst in zip(src_pl_module.parameters(), dst_pl_module.parameters()):
            dst.detach().copy_(src.to(dst.device))

    @torch.no_grad()
    def reset_batch_norm_and_save_state(self, pl_module: nn.Module) -> None:
        """Reset BatchNorm running statistics and switch them to a plain (cumulative) average."""
        self.momenta = {}
        for module in pl_module.modules():
            if not isinstance(module, _BatchNorm) or module.running_mean is None:
                continue  # without running statistics there is nothing to recompute
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
            self.momenta[module] = module.momentum
            module.momentum = None
            if module.num_batches_tracked is not None:
                module.num_batches_tracked.zero_()

    def reset_momenta(self) -> None:
        """Give the BatchNorm layers their momentum back."""
        for module, momentum in self.momenta.items():
            module.momentum = momentum

    @staticmethod
    @torch.no_grad()
    def update_parameters(average_model: nn.Module, model: nn.Module, n_averaged: Tensor, avg_fn: AvgFn) -> None:
        """Fold ``model``'s parameters into ``average_model``'s (the first model is copied); counts it."""
        first = int(n_averaged) == 0  # once per epoch
        for p_avg, p in zip(average_model.parameters(), model.parameters()):
            avg, value = p_avg.detach(), p.detach().to(p_avg.device)
            avg.copy_(value if first else avg_fn(avg, value, n_averaged.to(avg.device)))
        n_averaged += 1

    @staticmethod
    def avg_fn(averaged_model_parameter: Tensor, model_parameter: Tensor, num_averaged: Tensor) -> Tensor:
        """The equal-weight running average."""
        return averaged_model_parameter + (model_parameter - averaged_model_parameter) / (num_averaged + 1)

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {
            "n_averaged": self._count(),
            "latest_update_epoch": self._latest_update_epoch,
            "scheduler_state": None if self._swa_scheduler is None else self._swa_scheduler.state_dict(),
            "average_model_state": None if self._average_model is None else self._average_model.state_dict(),
            "replaced_scheduler_states": self._replaced_scheduler_states,  # volt only; Lightning ignores it
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._init_n_averaged = state_dict["n_averaged"]
        self.n_averaged = None
        self._latest_update_epoch = state_dict["latest_update_epoch"]
        self._scheduler_state = state_dict["scheduler_state"]
        self._replaced_scheduler_states = state_dict.get("replaced_scheduler_states")
        if self._average_model is not None and state_dict["average_model_state"] is not None:
            self._average_model.load_state_dict(state_dict["average_model_state"])

    def on_load_checkpoint(self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: Dict[str, Any]) -> None:
        # Read from the checkpoint, not from self: load_state_dict may run before or after this hook.
        state = checkpoint.get("callbacks", {}).get(self.state_key) or {}
        if trainer.state.fn != "fit" or state.get("scheduler_state") is None:
            return
        # Saved during SWA: checkpoint["lr_schedulers"] holds the SWALR's state, which volt would load into
        # configure_optimizers' schedulers (and check their number). Give those their own states back; the
        # SWALR is restored from this callback's state at on_train_start.
        if state.get("replaced_scheduler_states") is not None:
            checkpoint["lr_schedulers"] = deepcopy(state["replaced_scheduler_states"])
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        self._resume_epoch_step = bool(loop.get("epoch_batches_done")) and not loop.get("epoch_schedulers_stepped")
