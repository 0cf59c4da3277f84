"""WeightAveraging and EMAWeightAveraging: keep a running average of the weights during fit (Lightning 2.6's).

The average lives in a ``torch.optim.swa_utils.AveragedModel`` created at ``setup("fit")``. It is updated
after optimizer steps and/or training epochs, whenever ``should_update(step_idx=...)`` /
``should_update(epoch_idx=...)`` says so (by default: after every optimizer step, an equal-weight average).
Each validation epoch runs on the averaged weights (swapped in at its start, swapped back at its end), and
the averaged weights replace the trained ones when training ends.

Checkpoints hold the averaged weights under ``state_dict`` (so any loader sees the averaged model), the
trained weights under ``current_model_state`` and the AveragedModel's other state (``n_averaged``) under
``averaging_state``; resuming a fit restores both models.
"""
from __future__ import annotations

import inspect
import itertools
import logging
import warnings
from copy import deepcopy
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn, get_swa_avg_fn, get_swa_multi_avg_fn

from volt.callbacks.base import Callback, ignores_outputs

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

DeviceArg = Optional[Union[torch.device, str, int]]

# AveragedModel's averaging arguments (everything but the model, device and use_buffers): avg_fn, multi_avg_fn.
_AVERAGING_KWARGS = frozenset(inspect.signature(AveragedModel.__init__).parameters) - {
    "self", "model", "device", "use_buffers"}
# Device types where torch's default SWA average uses its foreach kernels (the CPU uses one op per tensor).
_FOREACH_DEVICE_TYPES = ("cuda", "xpu")
_PREFIX = "module."  # AveragedModel's state_dict keys for the averaged module


class _AveragedModel(AveragedModel):
    """``AveragedModel`` with the number of updates also counted on the host.

    torch's ``update_parameters`` reads the ``n_averaged`` tensor twice per call, which on an
    accelerator waits for the device; an EMA updates every step. Same arithmetic as torch's.
    """

    def __init__(self, model: nn.Module, device: DeviceArg, use_buffers: bool, **kwargs: Any) -> None:
        super().__init__(model, device=device, use_buffers=use_buffers, **kwargs)
        self.updates = 0  # int(self.n_averaged), known without a device read

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)  # one read, when a checkpoint is restored
        return result

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged, current = _averaged_tensors(self.module, model, self.use_buffers)
        current = [c.to(a.device) for a, c in zip(averaged, current)]
        if self.updates == 0:
            for a, c in zip(averaged, current):
                a.copy_(c)
        else:
            self._average(averaged, current)
        if not self.use_buffers:  # buffers are not averaged: follow the model's
            for b_avg, b in zip(self.module.buffers(), model.buffers()):
                b_avg.detach().copy_(b.detach().to(b_avg.device))
        self.n_averaged += 1
        self.updates += 1

    def _average(self, averaged: List[Tensor], current: List[Tensor]) -> None:
        n = self.n_averaged
        if self.avg_fn is not None:
            for a, c in zip(averaged, current):
                a.copy_(self.avg_fn(a, c, n.to(a.device)))
            return
        groups: Dict[Tuple[torch.device, torch.dtype], Tuple[List[Tensor], List[Tensor]]] = {}
        for a, c in zip(averaged, current):
            pair = groups.setdefault((a.device, a.dtype), ([], []))
            pair[0].append(a)
            pair[1].append(c)
        for (device, _), (avg_list, cur_list) in groups.items():
            if self.multi_avg_fn is not None:
                self.multi_avg_fn(avg_list, cur_list, n.to(device))
            elif device.type in _FOREACH_DEVICE_TYPES:  # the host count: no read of n_averaged
                get_swa_multi_avg_fn()(avg_list, cur_list, self.updates)
            else:
                swa = get_swa_avg_fn()
                for a, c in zip(avg_list, cur_list):
                    a.copy_(swa(a, c, self.updates))


def _averaged_tensors(average: nn.Module, model: nn.Module, with_buffers: bool) -> Tuple[List[Tensor], List[Tensor]]:
    """Detached (average, model) tensors, paired in module order: parameters, then buffers when asked."""
    if with_buffers:
        pairs = (itertools.chain(average.parameters(), average.buffers()),
                 itertools.chain(model.parameters(), model.buffers()))
    else:
        pairs = (average.parameters(), model.parameters())
    return [t.detach() for t in pairs[0]], [t.detach() for t in pairs[1]]


def _parse_device(owner: str, device: Any) -> Optional[Union[torch.device, int]]:
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        try:
            return torch.device(device)
        except RuntimeError as err:
            raise ValueError(f"{owner}(device={device!r}) is not a device name: {err}") from None
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return device
    raise TypeError(f"{owner}(device=...) must be None, a torch.device, a device name or an index >= 0, "
                    f"got {device!r}")


def _check_averaging_kwargs(owner: str, kwargs: Dict[str, Any]) -> None:
    unknown = sorted(set(kwargs) - _AVERAGING_KWARGS)
    if unknown:
        raise TypeError(f"{owner}() got unexpected keyword arguments {unknown}; the AveragedModel arguments it "
                        f"passes on are {sorted(_AVERAGING_KWARGS)}")
    for name, fn in kwargs.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{owner}({name}=...) must be callable, got {type(fn).__name__}")
    if kwargs.get("avg_fn") is not None and kwargs.get("multi_avg_fn") is not None:
        raise ValueError(f"{owner}(): pass avg_fn or multi_avg_fn, not both")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class WeightAveraging(Callback):
    """Average the weights over training (SWA by default; EMA or any rule through ``avg_fn``/``multi_avg_fn``).

    Args:
        device: where the averaged copy lives; by default the model's device. ``"cpu"`` saves accelerator memory.
        use_buffers: average the buffers too (True, unlike AveragedModel's default). With False the
            buffers are copied from the model at each update, and BatchNorm statistics are for the user
            to recompute (``torch.optim.swa_utils.update_bn``).
        **kwargs: passed to ``AveragedModel``: ``avg_fn`` or ``multi_avg_fn``.

    Override ``should_update`` to choose when the average is updated.
    """

    def __init__(self, device: DeviceArg = None, use_buffers: bool = True, **kwargs: Any) -> None:
        owner = type(self).__name__
        self._device = _parse_device(owner, device)
        if not isinstance(use_buffers, bool):
            raise TypeError(f"{owner}(use_buffers=...) must be a bool, got {use_buffers!r}")
        _check_averaging_kwargs(owner, kwargs)
        self._use_buffers = use_buffers
        self._kwargs = kwargs
        self._average_model: Optional[_AveragedModel] = None
        # global_step at the last step update: 0 makes the first candidate the first optimizer step
        # (after N batches under accumulate_grad_batches=N)
        self._latest_update_step = 0
        self._latest_update_epoch = -1  # epoch 0 may update at its end

    def should_update(self, step_idx: Optional[int] = None, epoch_idx: Optional[int] = None) -> bool:
        """Whether to update the average after optimizer step ``step_idx`` or epoch ``epoch_idx`` (0-based;
        one of the two is given). Default: after every optimizer step, never at epoch ends."""
        return step_idx is not None

    # --- fit ------------------------------------------------------------------------------------
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        if stage != "fit":
            return
        from volt.module import LightningModule
        from volt.trainer.data import defines

        device = self._device if self._device is not None else pl_module.device
        if defines(pl_module, "configure_model", LightningModule):
            # The copy must hold every layer; configure_model runs again after setup (it must be idempotent).
            warnings.warn(f"{type(self).__name__}: the model overrides configure_model(), called now to build the "
                          "layers before copying them; layers are not sharded, so memory use may be high")
            pl_module.configure_model()
        self._average_model = _AveragedModel(pl_module, device, self._use_buffers, **self._kwargs)

    @ignores_outputs
    def on_train_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step  # optimizer steps so far; a batch inside an accumulation window adds none
        if step > self._latest_update_step and self.should_update(step_idx=step - 1):
            assert self._average_model is not None
            self._average_model.update_parameters(pl_module)
            self._latest_update_step = step

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        epoch = trainer.current_epoch
        if epoch > self._latest_update_epoch and self.should_update(epoch_idx=epoch):
            assert self._average_model is not None
            self._average_model.update_parameters(pl_module)
            self._latest_update_epoch = epoch

    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        assert self._average_model is not None
        self._copy_average_to_current(pl_module)

    def on_validation_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if self._average_model is not None:
            self._swap_models(pl_module)

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"latest_update_step": self._latest_update_step}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._latest_update_step = state_dict["latest_update_step"]

    def on_save_checkpoint(self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: Dict[str, Any]) -> None:
        if self._average_model is None:
            log.info("%s: checkpoint saved outside fit: it holds no averaging state (after a fit, the model's "
                     "weights are already the averaged ones)", type(self).__name__)
            return
        average = self._average_model.state_dict()
        checkpoint["current_model_state"] = checkpoint["state_dict"]
        checkpoint["state_dict"] = {k[len(_PREFIX):]: v for k, v in average.items() if k.startswith(_PREFIX)}
        checkpoint["averaging_state"] = {k: v for k, v in average.items() if not k.startswith(_PREFIX)}

    def on_load_checkpoint(self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: Dict[str, Any]) -> None:
        # volt restores callbacks for validate/test too; like Lightning, only a fit restores the two models
        # (an evaluation keeps the averaged weights that "state_dict" holds)
        if trainer.state.fn != "fit":
            return
        if self._average_model is None:
            warnings.warn(f"{type(self).__name__}: no averaged model to restore the checkpoint into")
            return
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            average = {_PREFIX + k: v for k, v in checkpoint["state_dict"].items()}
            average.update(checkpoint["averaging_state"])
            self._average_model.load_state_dict(average)
            # the trainer loaded "state_dict" (the average) into the model: the trained weights are these
            pl_module.load_state_dict(checkpoint["current_model_state"], strict=getattr(pl_module, "strict_loading", True))
        else:
            warnings.warn(f"{type(self).__name__}: the checkpoint was not written with weight averaging; the "
                          "averaged and the trained model both start from its state_dict")
            self._average_model.module.load_state_dict(deepcopy(checkpoint["state_dict"]), strict=False)

    # --- helpers --------------------------------------------------------------------------------
    @torch.no_grad()
    def _swap_models(self, pl_module: "LightningModule") -> None:
        """Exchange the values of the averaged and the trained parameters and buffers."""
        assert self._average_model is not None
        averaged, current = _averaged_tensors(self._average_model.module, pl_module, True)
        for a, c in zip(averaged, current):
            kept = a.clone()
            a.copy_(c)
            c.copy_(kept)

    @torch.no_grad()
    def _copy_average_to_current(self, pl_module: "LightningModule") -> None:
        assert self._average_model is not None
        averaged, current = _averaged_tensors(self._average_model.module, pl_module, True)
        for a, c in zip(averaged, current):
            c.copy_(a)


class EMAWeightAveraging(WeightAveraging):
    """Exponential moving average of the weights: ``average = decay * average + (1 - decay) * weights``.

    Args:
        device, use_buffers, **kwargs: as for ``WeightAveraging`` (``avg_fn`` is this class's EMA).
        decay: the EMA decay, in [0, 1].
        update_every_n_steps: update after optimizer steps whose 0-based index is a multiple of this
            (0: never after a step).
        update_starting_at_step: first step index that may update (None: from the first).
        update_starting_at_epoch: also update at the end of every epoch from this index on (None: never).
    """

    def __init__(
        self,
        device: DeviceArg = None,
        use_buffers: bool = True,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: Optional[int] = None,
        update_starting_at_epoch: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        owner = type(self).__name__
        taken = sorted({"avg_fn", "multi_avg_fn"} & set(kwargs))
        if taken:
            raise TypeError(f"{owner}() computes the EMA itself; it takes no {' or '.join(taken)}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"{owner}(decay={decay!r}) must be a number in [0, 1]")
        if not _is_int(update_every_n_steps) or update_every_n_steps < 0:
            raise ValueError(f"{owner}(update_every_n_steps={update_every_n_steps!r}) must be an int >= 0 "
                             "(0: no updates after optimizer steps)")
        for name, value in (("update_starting_at_step", update_starting_at_step),
                            ("update_starting_at_epoch", update_starting_at_epoch)):
            if value is not None and (not _is_int(value) or value < 0):
                raise ValueError(f"{owner}({name}={value!r}) must be None or an int >= 0")
        super().__init__(device=device, use_buffers=use_buffers, avg_fn=get_ema_avg_fn(decay=decay), **kwargs)
        self.decay = decay
        self.update_every_n_steps = update_every_n_steps
        self.update_starting_at_step = update_starting_at_step
        self.update_starting_at_epoch = update_starting_at_epoch

    def should_update(self, step_idx: Optional[int] = None, epoch_idx: Optional[int] = None) -> bool:
        if step_idx is not None:
            started = self.update_starting_at_step is None or step_idx >= self.update_starting_at_step
            every = self.update_every_n_steps
            if started and every > 0 and step_idx % every == 0:
                return True
        if epoch_idx is not None:
            start = self.update_starting_at_epoch
            if start is not None and epoch_idx >= start:
                return True
        return False

