"""Freeze modules before training and unfreeze them later (Lightning's BaseFinetuning, BackboneFinetuning).

A subclass of ``BaseFinetuning`` freezes in ``freeze_before_training`` (called from ``setup``, so
before ``configure_optimizers``) and unfreezes in ``finetune_function`` (called at each train epoch
start, once per optimizer), typically with ``unfreeze_and_add_param_group``. The param groups it adds
are recorded by parameter name, so a checkpoint restores them before the optimizer state is loaded.
"""
from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import torch
from torch.nn import Module, ModuleDict
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim import Optimizer

from volt.callbacks.base import Callback

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

Modules = Union[Module, Iterable[Union[Module, Iterable]]]
# {optimizer index: [param group hyper-parameters with "params" as parameter names]}
OptimizerMetadata = Dict[int, List[Dict[str, Any]]]


def multiplicative(epoch: int) -> float:
    """BackboneFinetuning's default ``lambda_func``: the backbone lr doubles every epoch."""
    return 2.0


class BaseFinetuning(Callback):
    """Base class of finetuning callbacks: override ``freeze_before_training`` and ``finetune_function``.

    Build the optimizer from the trainable parameters only, e.g.
    ``torch.optim.Adam(filter(lambda p: p.requires_grad, self.parameters()))``; the parameters
    unfrozen later join it as new param groups.
    """

    def __init__(self) -> None:
        self._internal_optimizer_metadata: OptimizerMetadata = {}
        self._restarting = False

    # --- checkpoint state ---------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self._restarting = True
        if "internal_optimizer_metadata" in state_dict:
            self._internal_optimizer_metadata = state_dict["internal_optimizer_metadata"]
        else:  # checkpoints of Lightning < 1.6 stored the metadata itself
            self._internal_optimizer_metadata = state_dict  # type: ignore[assignment]

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        # Resuming: the optimizers configure_optimizers just built get the recorded param groups
        # back before their saved states load (the trainer restores them after on_fit_start).
        if self._restarting:
            self._restore_param_groups(pl_module, trainer.optimizers)

    def _restore_param_groups(self, pl_module: Module, optimizers: List[Optimizer]) -> None:
        """Replace each optimizer's param groups with the recorded ones (the optimizer state loads over them),
        and make the parameters of the groups this callback added trainable again."""
        added: List[torch.nn.Parameter] = []
        if self._internal_optimizer_metadata:
            named = dict(pl_module.named_parameters())
            for opt_idx, optimizer in enumerate(optimizers):
                groups = self._internal_optimizer_metadata.get(opt_idx)
                if groups is None:
                    continue
                configured = len(optimizer.param_groups)  # the groups configure_optimizers made
                optimizer.param_groups = self._apply_mapping_to_param_groups(groups, named)
                added.extend(p for group in optimizer.param_groups[configured:] for p in group["params"])
        self._restore_trainable(pl_module, added)
        self._restarting = False

    def _restore_trainable(self, pl_module: Module, added: List[torch.nn.Parameter]) -> None:
        """Undo freeze_before_training for what was unfrozen before the checkpoint.

        setup froze these parameters again, and finetune_function unfreezes only at its epoch, so a run
        resumed after it would keep them frozen (Lightning does): the modules whose parameters sit in an
        added param group get what ``make_trainable`` gave them.
        """
        ids = {id(p) for p in added}
        if not ids:
            return
        for module in pl_module.modules():
            own = [p for p in module.parameters(recurse=False) if id(p) in ids]
            if not own:
                continue
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in own:
                param.requires_grad = True

    @staticmethod
    def _apply_mapping_to_param_groups(param_groups: List[Dict[str, Any]], mapping: Dict[Any, Any]) -> List[Dict[str, Any]]:
        """Copies of ``param_groups`` with each of ``params`` looked up in ``mapping`` (parameter <-> name)."""
        out = []
        for group in param_groups:
            copy = {k: v for k, v in group.items() if k != "params"}
            try:
                copy["params"] = [mapping[p] for p in group["params"]]
            except KeyError as err:
                raise ValueError(
                    "finetuning: an optimizer param group holds a parameter that is not in the LightningModule "
                    "(or a recorded parameter name no longer exists in it)"
                ) from err
            out.append(copy)
        return out

    def _store(self, pl_module: Module, opt_idx: int, num_param_groups: int,
               current_param_groups: List[Dict[str, Any]]) -> None:
        names = {p: n for n, p in pl_module.named_parameters()}
        stored = self._internal_optimizer_metadata
        if opt_idx not in stored:
            stored[opt_idx] = self._apply_mapping_to_param_groups(current_param_groups, names)
        elif num_param_groups != len(current_param_groups):  # groups added this epoch
            stored[opt_idx].extend(self._apply_mapping_to_param_groups(current_param_groups[num_param_groups:], names))

    # --- hooks a subclass overrides -------------------------------------------------------
    def freeze_before_training(self, pl_module: "LightningModule") -> None:
        """Freeze what should not train at first. Called from ``setup``, before ``configure_optimizers``."""
        raise NotImplementedError

    def finetune_function(self, pl_module: "LightningModule", epoch: int, optimizer: Optimizer) -> None:
        """Unfreeze what should train from ``epoch`` on. Called at each train epoch start, per optimizer."""
        raise NotImplementedError

    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        self.freeze_before_training(pl_module)

    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        for opt_idx, optimizer in enumerate(trainer.optimizers):
            num_param_groups = len(optimizer.param_groups)
            self.finetune_function(pl_module, trainer.current_epoch, optimizer)
            self._store(pl_module, opt_idx, num_param_groups, optimizer.param_groups)

    # --- helpers ----------------------------------------------------------------------------
    @staticmethod
    def flatten_modules(modules: Modules) -> List[Module]:
        """The leaf modules of ``modules`` (a module or nested iterables of them), plus the parents that
        hold parameters themselves."""
        if isinstance(modules, ModuleDict):
            modules = modules.values()
        if isinstance(modules, Iterable):  # lists, tuples, nn.Sequential, nn.ModuleList...
            candidates = [m for item in modules for m in BaseFinetuning.flatten_modules(item)]
        else:
            candidates = list(modules.modules())
        return [m for m in candidates if m._parameters or next(m.children(), None) is None]

    @staticmethod
    def filter_params(modules: Modules, train_bn: bool = True, requires_grad: bool = True) -> Iterator[torch.nn.Parameter]:
        """Yield the parameters of ``modules`` whose ``requires_grad`` equals ``requires_grad``
        (skipping BatchNorm layers unless ``train_bn``)."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and not train_bn:
                continue
            # recurse=False: a parent with its own parameters is in the list next to its children
            for param in module.parameters(recurse=False):
                if param.requires_grad == requires_grad:
                    yield param

    @staticmethod
    def make_trainable(modules: Modules) -> None:
        """Unfreeze every parameter of ``modules``; BatchNorm layers track running stats again."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm):
                module.track_running_stats = True
            for param in module.parameters(recurse=False):
                param.requires_grad = True

    @staticmethod
    def freeze_module(module: Module) -> None:
        """Freeze ``module``'s own parameters (not its children's); a BatchNorm stops tracking running stats."""
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
        for param in module.parameters(recurse=False):
            param.requires_grad = False

    @staticmethod
    def freeze(modules: Modules, train_bn: bool = True) -> None:
        """Freeze ``modules``; with ``train_bn`` their BatchNorm layers stay trainable."""
        for module in BaseFinetuning.flatten_modules(modules):
            if isinstance(module, _BatchNorm) and train_bn:
                BaseFinetuning.make_trainable(module)
            else:
                BaseFinetuning.freeze_module(module)

    @staticmethod
    def filter_on_optimizer(optimizer: Optimizer, params: Iterable) -> List[torch.nn.Parameter]:
        """``params`` without those already in ``optimizer`` (warns when some are).

        As in Lightning, a parameter counts as present when one of the optimizer's is equal to it in
        shape and value (``torch.equal``), not only when it is the same tensor.
        """
        kept, skipped = [], []
        for param in params:
            present = any(torch.equal(p, param) for group in optimizer.param_groups for p in group["params"])
            (skipped if present else kept).append(param)
        if skipped:
            warnings.warn(
                f"{len(skipped)} of the parameters to unfreeze are already in a param group of this optimizer and "
                "are skipped. HINT: build the optimizer in configure_optimizers from the trainable parameters only: "
                f"{type(optimizer).__name__}(filter(lambda p: p.requires_grad, self.parameters()), ...)",
                UserWarning, stacklevel=2,
            )
        return kept

    @staticmethod
    def unfreeze_and_add_param_group(modules: Modules, optimizer: Optimizer, lr: Optional[float] = None,
                                     initial_denom_lr: float = 10.0, train_bn: bool = True) -> None:
        """Unfreeze ``modules`` and add their parameters to ``optimizer`` as one new param group.

        Its lr is ``lr``, or without one the first group's lr divided by ``initial_denom_lr``.
        BatchNorm parameters join only with ``train_bn``.
        """
        BaseFinetuning.make_trainable(modules)
        group_lr = optimizer.param_groups[0]["lr"] / initial_denom_lr if lr is None else float(lr)
        params = BaseFinetuning.filter_params(modules, train_bn=train_bn, requires_grad=True)
        params = BaseFinetuning.filter_on_optimizer(optimizer, params)
        if params:
            optimizer.add_param_group({"params": params, "lr": group_lr})


class BackboneFinetuning(BaseFinetuning):
    """Train ``pl_module.backbone`` from ``unfreeze_backbone_at_epoch`` on, with its own lr.

    Until then the backbone is frozen. At that epoch it joins the (first param group's) optimizer with
    lr ``backbone_initial_lr``, or ``backbone_initial_ratio_lr`` times the current lr; every later epoch
    its lr is multiplied by ``lambda_func(epoch + 1)``, and with ``should_align`` capped at the current lr.

    Args:
        unfreeze_backbone_at_epoch: the epoch at which the backbone starts training.
        lambda_func: ``epoch -> factor`` applied to the backbone lr each epoch after that.
        backbone_initial_ratio_lr: the backbone's first lr as a fraction of the current lr.
        backbone_initial_lr: the backbone's first lr (overrides the ratio).
        should_align: once the backbone lr would pass the current lr, use the current lr.
        initial_denom_lr: passed to ``unfreeze_and_add_param_group``; it divides only a missing lr,
            and this callback always gives one (as in Lightning).
        train_bn: whether the backbone's BatchNorm layers join the param group added at unfreezing.
            While the backbone is frozen its BatchNorm layers stay trainable either way (as in Lightning).
        verbose: log both learning rates each epoch.
        rounding: digits of the logged learning rates.
    """

    def __init__(
        self,
        unfreeze_backbone_at_epoch: int = 10,
        lambda_func: Callable = multiplicative,
        backbone_initial_ratio_lr: float = 10e-2,
        backbone_initial_lr: Optional[float] = None,
        should_align: bool = True,
        initial_denom_lr: float = 10.0,
        train_bn: bool = True,
        verbose: bool = False,
        rounding: int = 12,
    ) -> None:
        super().__init__()
        _check_int("unfreeze_backbone_at_epoch", unfreeze_backbone_at_epoch, minimum=0)
        if not callable(lambda_func):
            raise TypeError(f"BackboneFinetuning(lambda_func=...) must be callable (epoch -> factor), got {lambda_func!r}")
        _check_number("backbone_initial_ratio_lr", backbone_initial_ratio_lr, positive=False)
        if backbone_initial_lr is not None:
            _check_number("backbone_initial_lr", backbone_initial_lr, positive=False)
        _check_number("initial_denom_lr", initial_denom_lr, positive=True)
        for name, value in (("should_align", should_align), ("train_bn", train_bn), ("verbose", verbose)):
            if not isinstance(value, bool):
                raise TypeError(f"BackboneFinetuning({name}=...) must be a bool, got {value!r}")
        _check_int("rounding", rounding, minimum=0)
        self.unfreeze_backbone_at_epoch: int = unfreeze_backbone_at_epoch
        self.lambda_func: Callable = lambda_func
        self.backbone_initial_ratio_lr: float = backbone_initial_ratio_lr
        self.backbone_initial_lr: Optional[float] = backbone_initial_lr
        self.should_align: bool = should_align
        self.initial_denom_lr: float = initial_denom_lr
        self.train_bn: bool = train_bn
        self.verbose: bool = verbose
        self.rounding: int = rounding
        self.previous_backbone_lr: Optional[float] = None

    def state_dict(self) -> Dict[str, Any]:
        return {"internal_optimizer_metadata": self._internal_optimizer_metadata,
                "previous_backbone_lr": self.previous_backbone_lr}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.previous_backbone_lr = state_dict["previous_backbone_lr"]
        super().load_state_dict(state_dict)

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        _require_backbone(pl_module)
        super().on_fit_start(trainer, pl_module)

    def _restore_trainable(self, pl_module: Module, added: List[torch.nn.Parameter]) -> None:
        super()._restore_trainable(pl_module, added)
        if self.previous_backbone_lr is not None:  # the saved run had unfrozen the backbone (BatchNorm included)
            self.make_trainable(pl_module.backbone)

    def freeze_before_training(self, pl_module: "LightningModule") -> None:
        _require_backbone(pl_module)  # before setup would fail on the attribute with a less helpful error
        self.freeze(pl_module.backbone)

    def finetune_function(self, pl_module: "LightningModule", epoch: int, optimizer: Optimizer) -> None:
        if epoch < self.unfreeze_backbone_at_epoch:
            return
        current_lr = optimizer.param_groups[0]["lr"]
        if epoch == self.unfreeze_backbone_at_epoch:
            if self.backbone_initial_lr is not None:
                backbone_lr = self.backbone_initial_lr
            else:
                backbone_lr = current_lr * self.backbone_initial_ratio_lr
            self.unfreeze_and_add_param_group(pl_module.backbone, optimizer, backbone_lr, train_bn=self.train_bn,
                                              initial_denom_lr=self.initial_denom_lr)
        else:
            if self.previous_backbone_lr is None:
                raise RuntimeError(
                    f"BackboneFinetuning: epoch {epoch} is past unfreeze_backbone_at_epoch="
                    f"{self.unfreeze_backbone_at_epoch} but the backbone was never unfrozen (no saved backbone lr)"
                )
            backbone_lr = self.lambda_func(epoch + 1) * self.previous_backbone_lr
            if self.should_align and backbone_lr > current_lr:
                backbone_lr = current_lr
            optimizer.param_groups[-1]["lr"] = backbone_lr
        self.previous_backbone_lr = backbone_lr
        if self.verbose:
            log.info(f"Current lr: {round(current_lr, self.rounding)}, "
                     f"Backbone lr: {round(backbone_lr, self.rounding)}")


def _require_backbone(pl_module: Module) -> None:
    if not isinstance(getattr(pl_module, "backbone", None), Module):
        raise ValueError("BackboneFinetuning needs the LightningModule to have an nn.Module `backbone` attribute")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"BackboneFinetuning({name}=...) must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"BackboneFinetuning({name}={value}) must be >= {minimum}")


def _check_number(name: str, value: Any, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"BackboneFinetuning({name}=...) must be a number, got {value!r}")
    if (value <= 0) if positive else (value < 0):
        raise ValueError(f"BackboneFinetuning({name}={value}) must be {'> 0' if positive else '>= 0'}")
