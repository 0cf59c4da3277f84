"""ModelPruning: prune parameters during training with torch.nn.utils.prune (Lightning's callback).

At the end of each train epoch (or validation epoch, ``prune_on_train_epoch_end=False``) the chosen
parameters are pruned by ``amount``; torch keeps the dense tensor as ``<name>_orig`` and the zeros as
``<name>_mask``. With the lottery ticket hypothesis the surviving weights are then reset to their
values at ``setup``. ``make_pruning_permanent`` folds the masks into the weights in saved checkpoints
and, when training ends, in the model itself.
"""
from __future__ import annotations

import inspect
import logging
from copy import deepcopy
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch.nn.utils.prune as torch_prune
from torch import Tensor, nn

from volt.callbacks.base import Callback
from volt.module import LightningModule

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

# the functions apply one pruning to one parameter; the classes are what global_unstructured takes
_PRUNING_FUNCTIONS: Dict[str, Callable] = {
    "ln_structured": torch_prune.ln_structured,
    "l1_unstructured": torch_prune.l1_unstructured,
    "random_structured": torch_prune.random_structured,
    "random_unstructured": torch_prune.random_unstructured,
}
_PRUNING_METHODS: Dict[str, type] = {
    "ln_structured": torch_prune.LnStructured,
    "l1_unstructured": torch_prune.L1Unstructured,
    "random_structured": torch_prune.RandomStructured,
    "random_unstructured": torch_prune.RandomUnstructured,
}
# containers are skipped when collecting parameters: their leaves are listed themselves
_MODULE_CONTAINERS = (LightningModule, nn.Sequential, nn.ModuleList, nn.ModuleDict)

ParameterList = Sequence[Tuple[nn.Module, str]]
Amount = Union[int, float, Callable[[int], Union[int, float]]]


class ModelPruning(Callback):
    """Prune ``parameters_to_prune`` by ``amount`` every epoch (Lightning's ``ModelPruning`` arguments).

    Args:
        pruning_fn: ``"l1_unstructured"``, ``"random_unstructured"``, ``"ln_structured"``,
            ``"random_structured"``, or a ``torch.nn.utils.prune.BasePruningMethod`` subclass (the class,
            with ``use_global_unstructured=True``).
        parameters_to_prune: ``[(module, "weight"), ...]``; empty: every ``parameter_names`` parameter
            of every non-container module.
        parameter_names: names to collect when ``parameters_to_prune`` is empty (``"weight"``, ``"bias"``).
        use_global_unstructured: rank all parameters together (``prune.global_unstructured``) rather
            than each on its own.
        amount: a fraction in [0, 1], a number of parameters, or ``epoch -> amount``.
        apply_pruning: whether to prune, or ``epoch -> bool``.
        make_pruning_permanent: fold the masks into the weights in checkpoints and at the end of training.
        use_lottery_ticket_hypothesis: after pruning, reset the kept weights to their initial values
            (a bool, or ``epoch -> bool``).
        resample_parameters: with the lottery ticket, reset to freshly initialised values instead.
        pruning_dim: the dimension of structured pruning.
        pruning_norm: the norm of ``"ln_structured"``.
        verbose: 0 quiet, 1 log the overall sparsity, 2 also per parameter.
        prune_on_train_epoch_end: prune at the end of the train epoch, else of the validation epoch.
    """

    PARAMETER_NAMES = ("weight", "bias")

    def __init__(
        self,
        pruning_fn: Union[Callable, str],
        parameters_to_prune: ParameterList = (),
        parameter_names: Optional[List[str]] = None,
        use_global_unstructured: bool = True,
        amount: Amount = 0.5,
        apply_pruning: Union[bool, Callable[[int], bool]] = True,
        make_pruning_permanent: bool = True,
        use_lottery_ticket_hypothesis: Union[bool, Callable[[int], bool]] = True,
        resample_parameters: bool = False,
        pruning_dim: Optional[int] = None,
        pruning_norm: Optional[int] = None,
        verbose: int = 0,
        prune_on_train_epoch_end: bool = True,
    ) -> None:
        for name, value in (("use_global_unstructured", use_global_unstructured),
                            ("make_pruning_permanent", make_pruning_permanent),
                            ("resample_parameters", resample_parameters),
                            ("prune_on_train_epoch_end", prune_on_train_epoch_end)):
            if not isinstance(value, bool):
                raise TypeError(f"ModelPruning({name}=...) must be a bool, got {value!r}")
        for name, value in (("apply_pruning", apply_pruning),
                            ("use_lottery_ticket_hypothesis", use_lottery_ticket_hypothesis)):
            if not (isinstance(value, bool) or callable(value)):
                raise TypeError(f"ModelPruning({name}=...) must be a bool or a callable epoch -> bool, got {value!r}")
        self._use_global_unstructured = use_global_unstructured
        self._parameters_to_prune = parameters_to_prune
        self._use_lottery_ticket_hypothesis = use_lottery_ticket_hypothesis
        self._resample_parameters = resample_parameters
        self._prune_on_train_epoch_end = prune_on_train_epoch_end
        self._parameter_names = parameter_names or self.PARAMETER_NAMES
        self._global_kwargs: Dict[str, Any] = {}
        # id(module) -> {"data": a copy of the module at setup, "names": [(index in parameters_to_prune, name)]}
        self._original_layers: Optional[Dict[int, Dict[str, Any]]] = None
        self._pruning_method_name: Optional[str] = None
        self._global_zero = True

        for name in self._parameter_names:
            if name not in self.PARAMETER_NAMES:
                raise ValueError(f"ModelPruning(parameter_names=...): {name!r} is not one of {self.PARAMETER_NAMES}")
        if type(self).sanitize_parameters_to_prune is ModelPruning.sanitize_parameters_to_prune:
            _check_parameters_to_prune(parameters_to_prune)  # the modules are checked against the model at setup
        self.pruning_fn = self._resolve_pruning_fn(pruning_fn, pruning_dim, pruning_norm)
        self._apply_pruning = apply_pruning
        self._make_pruning_permanent = make_pruning_permanent
        self.amount = _check_amount(amount)
        if verbose not in (0, 1, 2):
            raise ValueError(f"ModelPruning(verbose={verbose!r}) must be 0, 1 or 2")
        self._verbose = verbose

    def _resolve_pruning_fn(self, pruning_fn: Union[Callable, str], dim: Optional[int], norm: Optional[int]) -> Callable:
        if isinstance(pruning_fn, str):
            name = pruning_fn.lower()
            if name not in _PRUNING_FUNCTIONS:
                raise ValueError(f"ModelPruning(pruning_fn={pruning_fn!r}) is not one of torch's built-in pruning "
                                 f"functions {list(_PRUNING_FUNCTIONS)}")
            kwargs: Dict[str, Any] = {}
            if name.endswith("_structured"):
                if dim is None:
                    raise ValueError(f"ModelPruning(pruning_fn={name!r}) is structured pruning: give pruning_dim")
                if isinstance(dim, bool) or not isinstance(dim, int):
                    raise TypeError(f"ModelPruning(pruning_dim=...) must be an int, got {dim!r}")
                if name == "ln_structured":
                    if norm is None:
                        raise ValueError("ModelPruning(pruning_fn='ln_structured') needs pruning_norm (the n of the Ln norm)")
                    kwargs["n"] = norm
                kwargs["dim"] = dim
            resolved = self._create_pruning_fn(name, **kwargs)
        elif self._is_pruning_method(pruning_fn):
            if not self._use_global_unstructured:
                raise ValueError("ModelPruning(pruning_fn=<BasePruningMethod subclass>) works only with "
                                 "use_global_unstructured=True")
            resolved = pruning_fn
            self._pruning_method_name = pruning_fn.__name__
        else:
            raise TypeError(f"ModelPruning(pruning_fn=...) must be a name in {list(_PRUNING_FUNCTIONS)} or a torch "
                            f"BasePruningMethod subclass (the class, not an instance), got {pruning_fn!r}")
        if self._use_global_unstructured and getattr(resolved, "PRUNING_TYPE", None) != "unstructured":
            raise ValueError(f"ModelPruning(use_global_unstructured=True) needs an unstructured pruning_fn; "
                             f"{self._pruning_method_name} has PRUNING_TYPE={getattr(resolved, 'PRUNING_TYPE', None)!r}")
        return resolved

    def _create_pruning_fn(self, pruning_fn: str, **kwargs: Any) -> Callable:
        """The class of ``pruning_fn`` for global pruning (``kwargs`` kept for it), else the function with ``kwargs`` bound."""
        if self._use_global_unstructured:
            method = _PRUNING_METHODS[pruning_fn]
            self._global_kwargs = kwargs
            self._pruning_method_name = method.__name__
            return method
        function = _PRUNING_FUNCTIONS[pruning_fn]
        self._pruning_method_name = function.__name__  # a partial has no __name__ of its own
        return self._wrap_pruning_fn(function, **kwargs)

    @staticmethod
    def _wrap_pruning_fn(pruning_fn: Callable, **kwargs: Any) -> Callable:
        return partial(pruning_fn, **kwargs)

    @staticmethod
    def _is_pruning_method(method: Any) -> bool:
        return inspect.isclass(method) and issubclass(method, torch_prune.BasePruningMethod)

    # --- which parameters -------------------------------------------------------------------
    def filter_parameters_to_prune(self, parameters_to_prune: ParameterList = ()) -> ParameterList:
        """Override to choose which of the collected ``(module, name)`` pairs are pruned."""
        return parameters_to_prune

    @staticmethod
    def sanitize_parameters_to_prune(pl_module: LightningModule, parameters_to_prune: ParameterList = (),
                                     parameter_names: Sequence[str] = ()) -> ParameterList:
        """``parameters_to_prune`` checked against ``pl_module``; when empty, every ``parameter_names``
        parameter of its non-container modules (grouped by name, in module order)."""
        names = parameter_names or ModelPruning.PARAMETER_NAMES
        modules = [m for m in pl_module.modules() if not isinstance(m, _MODULE_CONTAINERS)]
        if not parameters_to_prune:
            return [(m, name) for name in names for m in modules if isinstance(getattr(m, name, None), nn.Parameter)]
        _check_parameters_to_prune(parameters_to_prune)
        missing_modules = [m for m, _ in parameters_to_prune if not any(m is other for other in modules)]
        missing_names = [name for m, name in parameters_to_prune
                         if any(m is other for other in modules) and not hasattr(m, name)]
        if missing_modules or missing_names:
            raise ValueError(f"ModelPruning(parameters_to_prune=...) names what is not in the model: modules "
                             f"{missing_modules}, parameters {missing_names}")
        return parameters_to_prune

    def setup(self, trainer: "Trainer", pl_module: LightningModule, stage: str) -> None:
        self._global_zero = trainer.is_global_zero
        parameters = self.sanitize_parameters_to_prune(pl_module, self._parameters_to_prune,
                                                       parameter_names=self._parameter_names)
        self._parameters_to_prune = self.filter_parameters_to_prune(parameters)
        if self._use_lottery_ticket_hypothesis:
            # one copy per module, taken now: the "initial" weights the lottery ticket resets to
            self._original_layers = {}
            for i, (module, name) in enumerate(self._parameters_to_prune):
                entry = self._original_layers.setdefault(id(module), {"data": deepcopy(module), "names": []})
                entry["names"].append((i, name))

    # --- pruning ------------------------------------------------------------------------------
    def apply_pruning(self, amount: Union[int, float]) -> None:
        """Prune ``parameters_to_prune`` by ``amount`` (globally or one by one)."""
        before = [self._get_pruned_stats(m, n) for m, n in self._parameters_to_prune] if self._verbose else []
        if self._use_global_unstructured:
            torch_prune.global_unstructured(self._parameters_to_prune, pruning_method=self.pruning_fn,
                                            **self._resolve_global_kwargs(amount))
        else:
            for module, name in self._parameters_to_prune:
                self.pruning_fn(module, name=name, amount=amount)
        if self._verbose:
            after = [self._get_pruned_stats(m, n) for m, n in self._parameters_to_prune]
            self._log_sparsity_stats(before, after, amount)

    def _resolve_global_kwargs(self, amount: Union[int, float]) -> Dict[str, Any]:
        # only what the method's constructor takes: global_unstructured passes its kwargs to it
        self._global_kwargs["amount"] = amount
        accepted = set(inspect.signature(self.pruning_fn).parameters) - {"self"}
        return {k: v for k, v in self._global_kwargs.items() if k in accepted}

    def apply_lottery_ticket_hypothesis(self) -> None:
        """Reset the pruned parameters' dense values (``<name>_orig``) to those saved at setup, or with
        ``resample_parameters`` to a fresh ``reset_parameters()`` of a copy; the masks stay.
        (The saved values follow training after the first reset: see ``_copy_param``.)"""
        assert self._original_layers is not None, "setup() saves the initial weights"
        for entry in self._original_layers.values():
            source = entry["data"]
            if self._resample_parameters and callable(getattr(source, "reset_parameters", None)):
                source = deepcopy(source)  # the saved copy stays as it was
                source.reset_parameters()
            for i, name in entry["names"]:
                self._copy_param(self._parameters_to_prune[i][0], source, name)

    @staticmethod
    def _copy_param(new: nn.Module, old: nn.Module, name: str) -> None:
        # A pruned parameter trains as <name>_orig; <name> is recomputed from it and the mask.
        # As in Lightning, the parameter then shares storage with the saved copy: training moves the
        # copy too, so only the first reset goes back to the setup values (later ones change nothing),
        # and a default multi-epoch run ends trained rather than rewound.
        dst = getattr(new, name + "_orig", None)
        if dst is None:
            dst = getattr(new, name, None)
        src = getattr(old, name, None)
        if isinstance(dst, Tensor) and isinstance(src, Tensor):
            dst.data = src.data.to(dst.device)

    def _run_pruning(self, current_epoch: int) -> None:
        prune = self._apply_pruning(current_epoch) if callable(self._apply_pruning) else self._apply_pruning
        amount = self.amount(current_epoch) if callable(self.amount) else self.amount
        if not prune or not amount:
            return
        self.apply_pruning(amount)
        lottery = self._use_lottery_ticket_hypothesis
        if lottery(current_epoch) if callable(lottery) else lottery:
            self.apply_lottery_ticket_hypothesis()

    def on_train_epoch_end(self, trainer: "Trainer", pl_module: LightningModule) -> None:
        if self._prune_on_train_epoch_end:
            log.debug("ModelPruning: pruning at the end of train epoch %d", pl_module.current_epoch)
            self._run_pruning(pl_module.current_epoch)

    def on_validation_epoch_end(self, trainer: "Trainer", pl_module: LightningModule) -> None:
        if not self._prune_on_train_epoch_end and not trainer.sanity_checking:
            log.debug("ModelPruning: pruning at the end of validation in epoch %d", pl_module.current_epoch)
            self._run_pruning(pl_module.current_epoch)  # under no_grad, as validation inside fit runs

    # --- permanence ---------------------------------------------------------------------------
    def make_pruning_permanent(self, module: nn.Module) -> None:
        """Remove the pruning re-parametrisation from ``module`` and its children: each pruned
        parameter becomes a plain parameter holding its masked values."""
        for _, submodule in module.named_modules():
            for key, hook in list(submodule._forward_pre_hooks.items()):
                if isinstance(hook, torch_prune.BasePruningMethod):
                    hook.remove(submodule)
                    del submodule._forward_pre_hooks[key]

    def on_train_end(self, trainer: "Trainer", pl_module: LightningModule) -> None:
        if self._make_pruning_permanent:
            log.debug("ModelPruning: making the pruning permanent at the end of training")
            self.make_pruning_permanent(pl_module)

    def _make_pruning_permanent_on_state_dict(self, pl_module: LightningModule) -> Dict[str, Any]:
        """``pl_module``'s state dict with each ``<name>_orig``/``<name>_mask`` pair replaced by the masked
        ``<name>``, on the CPU; the module itself keeps training with its masks."""
        state = pl_module.state_dict()
        for name in [k[: -len("_mask")] for k in state if k.endswith("_mask")]:
            orig = state.pop(name + "_orig")
            mask = state.pop(name + "_mask")
            state[name] = mask.to(dtype=orig.dtype) * orig
        for key, value in state.items():
            if isinstance(value, Tensor):
                state[key] = value.cpu()
        return state

    def on_save_checkpoint(self, trainer: "Trainer", pl_module: LightningModule, checkpoint: Dict[str, Any]) -> None:
        if self._make_pruning_permanent:
            checkpoint["state_dict"] = self._make_pruning_permanent_on_state_dict(pl_module)

    # --- logging --------------------------------------------------------------------------------
    @staticmethod
    def _get_pruned_stats(module: nn.Module, name: str) -> Tuple[int, int]:
        """(zeros in the mask, mask size); an unpruned parameter has no zeros."""
        mask = getattr(module, name + "_mask", None)
        if mask is None:
            param = getattr(module, name, None)
            return 0, param.numel() if isinstance(param, Tensor) else 1
        return int((mask == 0).sum().item()), mask.numel()

    def _log_sparsity_stats(self, before: List[Tuple[int, int]], after: List[Tuple[int, int]],
                            amount: Union[int, float] = 0) -> None:
        if not self._global_zero:
            return
        total = max(1, sum(size for _, size in after))
        was, now = sum(z for z, _ in before), sum(z for z, _ in after)
        log.info(f"Applied `{self._pruning_method_name}`. Pruned: {was}/{total} ({was / total:.2%}) -> "
                 f"{now}/{total} ({now / total:.2%})")
        if self._verbose == 2:
            for (module, name), (was_i, size_i), (now_i, _) in zip(self._parameters_to_prune, before, after):
                log.info(f"Applied `{self._pruning_method_name}` to `{module!r}.{name}` with amount={amount}. "
                         f"Pruned: {was_i} ({was_i / size_i:.2%}) -> {now_i} ({now_i / size_i:.2%})")


def _check_parameters_to_prune(parameters_to_prune: Any) -> None:
    if not parameters_to_prune:
        return
    if not isinstance(parameters_to_prune, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], nn.Module) and isinstance(p[1], str)
            for p in parameters_to_prune):
        raise TypeError("ModelPruning(parameters_to_prune=...) must be a list of (nn.Module, parameter name) tuples, "
                        f"or empty to prune every parameter; got {parameters_to_prune!r}")


def _check_amount(amount: Any) -> Amount:
    if callable(amount):
        return amount
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"ModelPruning(amount=...) must be a float fraction, an int count or a callable epoch -> "
                        f"amount, got {amount!r}")
    if isinstance(amount, float) and not 0.0 <= amount <= 1.0:
        raise ValueError(f"ModelPruning(amount={amount}) as a float is a fraction and must be in [0, 1]")
    if isinstance(amount, int) and amount < 0:
        raise ValueError(f"ModelPruning(amount={amount}) as an int is a number of parameters and must be >= 0")
    return amount
