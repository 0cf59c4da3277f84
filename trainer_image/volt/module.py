"""LightningModule: an ``nn.Module`` with the training recipe as methods.

Every hook has a no-op default. The Trainer calls the step methods and hooks;
``self.log`` records metrics into the trainer's current ResultCollection.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from volt import checkpoint as _ckpt
from volt.hparams import HyperparametersMixin
from volt.utilities import apply_to_tensors, move_data_to_device
from volt.utilities.types import STEP_OUTPUT

if TYPE_CHECKING:  # pragma: no cover
    from volt.trainer.optimizers import LightningOptimizer
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)
_Tensor = torch.Tensor  # self.log's fast path: one global read, not torch.Tensor's two


class LightningModule(HyperparametersMixin, nn.Module):
    """Base class for a model trained by ``volt.Trainer``."""

    # Lightning's checkpoint key names, for code that reads checkpoints through them.
    CHECKPOINT_HYPER_PARAMS_KEY = "hyper_parameters"
    CHECKPOINT_HYPER_PARAMS_NAME = "hparams_name"
    CHECKPOINT_HYPER_PARAMS_TYPE = "hparams_type"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: Optional["Trainer"] = None
        self._automatic_optimization = True
        self._example_input_array: Any = None
        self._jit_is_scripting = False  # True while to_torchscript/to_onnx run
        # False: a checkpoint's state_dict may miss or add keys when the Trainer restores it (Lightning's flag)
        self.strict_loading: bool = True
        self.truncated_bptt_steps: int = 0
        self.prepare_data_per_node: bool = True

    def __getstate__(self) -> Dict[str, Any]:
        # Pickling or deep-copying a module must not drag its trainer (loaders, loggers) along.
        state = self.__dict__.copy()
        state["_trainer"] = None
        return state

    # --- attachment to a trainer -----------------------------------------------
    @property
    def trainer(self) -> "Trainer":
        if self._trainer is None and not self._jit_is_scripting:  # TorchScript reads every property
            raise RuntimeError(f"{type(self).__name__} is not attached to a Trainer")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Optional["Trainer"]) -> None:
        self._trainer = trainer

    @property
    def automatic_optimization(self) -> bool:
        """False means the user calls optimizers, manual_backward and step in training_step."""
        return self._automatic_optimization

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic_optimization = bool(value)

    @property
    def example_input_array(self) -> Any:
        return self._example_input_array

    @example_input_array.setter
    def example_input_array(self, value: Any) -> None:
        self._example_input_array = value

    @property
    def device(self) -> torch.device:
        if self._trainer is not None:
            return self._trainer.strategy.root_device
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def global_rank(self) -> int:
        return self._trainer.global_rank if self._trainer is not None else 0

    @property
    def local_rank(self) -> int:
        return self._trainer.local_rank if self._trainer is not None else 0

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch if self._trainer is not None else 0

    @property
    def global_step(self) -> int:
        return self._trainer.global_step if self._trainer is not None else 0

    @property
    def logger(self) -> Any:
        return self._trainer.logger if self._trainer is not None else None

    @property
    def loggers(self) -> List[Any]:
        return self._trainer.loggers if self._trainer is not None else []

    # --- logging -----------------------------------------------------------------
    def log(
        self,
        name: str,
        value: Any,
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        metric_attribute: Optional[str] = None,
        rank_zero_only: bool = False,
        **kwargs: Any,
    ) -> None:
        """Record a scalar for loggers, the progress bar and callbacks (``trainer.callback_metrics``).

        Defaults follow the hook: per step in training hooks, per epoch (batch-size
        weighted mean) in validation/test. ``log=...`` (the 1.x spelling) means ``logger=...``.
        """
        trainer = self._trainer
        if trainer is not None and type(value) is _Tensor and not kwargs and type(name) is str:
            # The per-step case, kept to a dict lookup and one tuple compare: the same call as
            # last time (same hook, options and dataloader) with a float scalar tensor.
            connector = trainer._logger_connector
            m = connector.active.metrics.get(name)
            if (m is not None and m.fast_key == (connector.fx, connector.dataloader_suffix, prog_bar, logger, on_step,
                                                 on_epoch, reduce_fx, sync_dist, add_dataloader_idx)
                    and value.ndim == 0 and value.is_floating_point()):
                value = value.detach()
                if m.on_step:
                    m.step_value = value
                    m.step_fresh = True
                    m.epoch_value = None  # ``name`` is the step value again until this epoch's end, as in Lightning
                if m.on_epoch:
                    if batch_size is None and m.reduce_fx == "mean":
                        batch_size = connector._current_batch_size()
                    m.update_epoch(value, batch_size or 1)
                return
        if kwargs:
            if "log" in kwargs:
                logger = kwargs.pop("log")
            if kwargs:
                raise TypeError(f"self.log() got unexpected keyword arguments {sorted(kwargs)}")
        if not isinstance(name, str) or not name:
            raise TypeError(f"self.log(name, ...): name must be a non-empty str, got {name!r}")
        if trainer is None:
            log.warning("self.log(%r) called outside of a Trainer run: ignored", name)
            return
        # LoggerConnector.log, inlined
        connector = trainer._logger_connector
        if not connector.enabled:  # barebones: no metric is ever created, so the fast path above never hits
            return
        fx = connector.fx
        if fx is None:
            raise RuntimeError(f"self.log({name!r}) must be called from a LightningModule or Callback hook")
        suffix = connector.dataloader_suffix
        # positional: binding a dozen keywords costs more than the call's useful work
        connector.active.log(
            fx, name + suffix if add_dataloader_idx else name, value, prog_bar,
            True if logger is None else bool(logger), on_step, on_epoch, reduce_fx, sync_dist, batch_size,
            connector._current_batch_size, trainer.strategy,
            (fx, suffix, prog_bar, logger, on_step, on_epoch, reduce_fx, sync_dist, add_dataloader_idx),
        )

    def log_dict(
        self,
        dictionary: Mapping[str, Any],
        prog_bar: bool = False,
        logger: Optional[bool] = None,
        on_step: Optional[bool] = None,
        on_epoch: Optional[bool] = None,
        reduce_fx: Any = "mean",
        enable_graph: bool = False,
        sync_dist: bool = False,
        sync_dist_group: Any = None,
        add_dataloader_idx: bool = True,
        batch_size: Optional[int] = None,
        rank_zero_only: bool = False,
    ) -> None:
        """``self.log`` for each item of ``dictionary``, with shared options."""
        if not isinstance(dictionary, Mapping):
            raise TypeError(f"self.log_dict(dictionary): expected a mapping, got {type(dictionary).__name__}")
        for k, v in dictionary.items():
            self.log(k, v, prog_bar=prog_bar, logger=logger, on_step=on_step, on_epoch=on_epoch,
                     reduce_fx=reduce_fx, sync_dist=sync_dist, batch_size=batch_size,
                     add_dataloader_idx=add_dataloader_idx)

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on global rank zero only."""
        if self.global_rank == 0:
            print(*args, **kwargs)

    # --- steps (override) ---------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return super().forward(*args, **kwargs)

    def training_step(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        raise NotImplementedError(
            f"{type(self).__name__} has no training_step(); define training_step(self, batch, batch_idx) to fit"
        )

    def validation_step(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Not overridden: the validation loop is skipped."""

    def test_step(self, *args: Any, **kwargs: Any) -> STEP_OUTPUT:
        """Not overridden: trainer.test() raises."""

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        """Default: ``self(batch)``."""
        return self(batch)

    # 1.x step-end / epoch-end hooks: called only when overridden.
    def training_step_end(self, step_output: Any) -> Any:
        return step_output

    def validation_step_end(self, step_output: Any) -> Any:
        return step_output

    def test_step_end(self, step_output: Any) -> Any:
        return step_output

    def training_epoch_end(self, outputs: List[Any]) -> None: ...
    def validation_epoch_end(self, outputs: List[Any]) -> None: ...
    def test_epoch_end(self, outputs: List[Any]) -> None: ...

    def tbptt_split_batch(self, batch: Any, split_size: int) -> List[Any]:
        """Split every tensor of ``batch`` along dim 1 (time) into chunks of ``split_size`` (1.x TBPTT)."""
        lengths = []
        apply_to_tensors(batch, lambda t: lengths.append(t.shape[1]) if t.ndim > 1 else None)
        if not lengths:
            raise ValueError("truncated_bptt_steps: the batch has no tensor with a time dimension (dim 1)")
        return [
            apply_to_tensors(batch, lambda t, s=start: t[:, s : s + split_size] if t.ndim > 1 else t)
            for start in range(0, lengths[0], split_size)
        ]

    # --- optimization ------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} has no configure_optimizers(); return an optimizer (or a list, a "
            "tuple (optimizers, schedulers), or a dict with 'optimizer' and 'lr_scheduler')"
        )

    def optimizers(self, use_pl_optimizer: bool = True) -> Union["LightningOptimizer", List["LightningOptimizer"], Any]:
        """The optimizer(s) from configure_optimizers: one object if there is one, else a list."""
        opts = self.trainer._lightning_optimizers if use_pl_optimizer else self.trainer.optimizers
        return opts[0] if len(opts) == 1 else list(opts)

    def lr_schedulers(self) -> Any:
        """The scheduler(s): None, one object, or a list."""
        scheds = [c.scheduler for c in self.trainer.lr_scheduler_configs]
        if not scheds:
            return None
        return scheds[0] if len(scheds) == 1 else scheds

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Backward for manual optimization: applies loss scaling and calls the backward hooks."""
        if self.automatic_optimization:
            raise RuntimeError("manual_backward() is for manual optimization; set self.automatic_optimization = False")
        self.trainer._run_backward(loss, None, *args, **kwargs)

    def backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Called by the trainer for each backward; override for custom backward logic."""
        loss.backward(*args, **kwargs)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Optional[Any] = None
    ) -> None:
        """Step ``optimizer``; ``optimizer_closure`` runs training_step and backward (automatic mode)."""
        optimizer.step(closure=optimizer_closure)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()

    def lr_scheduler_step(self, scheduler: Any, metric: Optional[Any]) -> None:
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def clip_gradients(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        """Clip the gradients of ``optimizer``'s parameters by norm (default) or value."""
        if not gradient_clip_val:
            return
        algorithm = gradient_clip_algorithm or "norm"
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if algorithm == "norm":
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
        elif algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            raise ValueError(f"gradient_clip_algorithm must be 'norm' or 'value', got {algorithm!r}")

    def toggle_optimizer(self, optimizer: Any) -> None:
        """Freeze every parameter not owned by ``optimizer`` (multi-optimizer training)."""
        opt = getattr(optimizer, "optimizer", optimizer)
        own = {id(p) for g in opt.param_groups for p in g["params"]}
        self._toggled = {}
        for p in self.parameters():
            if id(p) not in own:
                self._toggled[id(p)] = p.requires_grad
                p.requires_grad_(False)

    def untoggle_optimizer(self, optimizer: Any) -> None:
        saved = getattr(self, "_toggled", {})
        for p in self.parameters():
            if id(p) in saved:
                p.requires_grad_(saved[id(p)])
        self._toggled = {}

    @contextlib.contextmanager
    def toggled_optimizer(self, optimizer: Any) -> Iterator[None]:
        """``with self.toggled_optimizer(opt):`` = toggle_optimizer, then untoggle_optimizer on exit."""
        self.toggle_optimizer(optimizer)
        try:
            yield
        finally:
            self.untoggle_optimizer(optimizer)

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(True)
        self.train()

    def all_gather(self, data: Any, group: Any = None, sync_grads: bool = False) -> Any:
        """Gather tensors in ``data`` from every process (stacked on a new dim 0 when distributed)."""
        strategy = self.trainer.strategy
        return apply_to_tensors(data, lambda t: strategy.all_gather(t, sync_grads=sync_grads))

    # --- data hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None: ...
    def setup(self, stage: str) -> None: ...
    def teardown(self, stage: str) -> None: ...
    def configure_callbacks(self) -> Union[Sequence[Any], Any]:
        return []
    def configure_model(self) -> None: ...
    def configure_sharded_model(self) -> None: ...

    def train_dataloader(self) -> Any:
        raise NotImplementedError("train_dataloader() is not defined")

    def val_dataloader(self) -> Any:
        raise NotImplementedError("val_dataloader() is not defined")

    def test_dataloader(self) -> Any:
        raise NotImplementedError("test_dataloader() is not defined")

    def predict_dataloader(self) -> Any:
        raise NotImplementedError("predict_dataloader() is not defined")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return move_data_to_device(batch, device)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    # --- lifecycle hooks (no-ops) -----------------------------------------------------------
    def on_fit_start(self) -> None: ...
    def on_fit_end(self) -> None: ...
    def on_train_start(self) -> None: ...
    def on_train_end(self) -> None: ...
    def on_train_epoch_start(self) -> None: ...
    def on_train_epoch_end(self) -> None: ...
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> Optional[int]: ...
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None: ...
    def on_validation_start(self) -> None: ...
    def on_validation_end(self) -> None: ...
    def on_validation_epoch_start(self) -> None: ...
    def on_validation_epoch_end(self) -> None: ...
    def on_validation_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_validation_model_eval(self) -> None:
        self.eval()

    def on_validation_model_train(self) -> None:
        self.train()

    def on_validation_model_zero_grad(self) -> None:
        self.zero_grad(set_to_none=True)

    def on_test_start(self) -> None: ...
    def on_test_end(self) -> None: ...
    def on_test_epoch_start(self) -> None: ...
    def on_test_epoch_end(self) -> None: ...
    def on_test_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_test_model_eval(self) -> None:
        self.eval()

    def on_test_model_train(self) -> None:
        self.train()

    def on_predict_start(self) -> None: ...
    def on_predict_end(self) -> None: ...
    def on_predict_epoch_start(self) -> None: ...
    def on_predict_epoch_end(self) -> None: ...
    def on_predict_batch_start(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_batch_end(self, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None: ...
    def on_predict_model_eval(self) -> None:
        self.eval()

    def on_before_backward(self, loss: torch.Tensor) -> None: ...
    def on_after_backward(self) -> None: ...
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_before_zero_grad(self, optimizer: torch.optim.Optimizer) -> None: ...

    # 1.x module hooks
    def on_epoch_start(self) -> None: ...
    def on_epoch_end(self) -> None: ...
    def on_batch_start(self, batch: Any) -> None: ...
    def on_batch_end(self) -> None: ...

    # --- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None: ...
    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None: ...

    # --- export ----------------------------------------------------------------------------
    @torch.no_grad()
    def to_torchscript(
        self, file_path: Optional[Union[str, "os.PathLike[str]"]] = None, method: str = "script",
        example_inputs: Any = None, **kwargs: Any,
    ) -> torch.jit.ScriptModule:
        """The module compiled by TorchScript in eval mode (``method="script"``) or traced with
        ``example_inputs`` (default: ``self.example_input_array``); saved to ``file_path`` when given.

        The module's train/eval mode is left as it was. ``kwargs`` go to ``torch.jit.script``/``trace``.
        """
        with self._exporting():
            if method == "script":
                module = torch.jit.script(self, **kwargs)
            elif method == "trace":
                if example_inputs is None:
                    example_inputs = self.example_input_array
                if example_inputs is None:
                    raise ValueError(f"{type(self).__name__}.to_torchscript(method='trace') needs example_inputs= "
                                     "or self.example_input_array")
                module = torch.jit.trace(self, self._export_inputs(example_inputs), **kwargs)
            else:
                raise ValueError(f"to_torchscript(method={method!r}): method must be 'script' or 'trace'")
        if file_path is not None:
            torch.jit.save(module, os.fspath(file_path))
        return module

    @torch.no_grad()
    def to_onnx(self, file_path: Union[str, "os.PathLike[str]"], input_sample: Any = None, **kwargs: Any) -> Any:
        """Export to ONNX with ``torch.onnx.export`` (``kwargs`` are its options, e.g. ``dynamo=False``,
        ``dynamic_axes``). ``input_sample`` defaults to ``self.example_input_array``.

        torch's default exporter (``dynamo=True``) needs the ``onnx`` and ``onnxscript`` packages; the
        legacy one (``dynamo=False``) needs ``onnx``. volt does not install them.
        """
        if input_sample is None:
            input_sample = self.example_input_array
        if input_sample is None:
            raise ValueError(f"{type(self).__name__}.to_onnx() needs input_sample= or self.example_input_array")
        _require_onnx_packages(dynamo=kwargs.get("dynamo", True))
        args = self._export_inputs(input_sample)
        with self._exporting():
            return torch.onnx.export(self, args if isinstance(args, tuple) else (args,), os.fspath(file_path), **kwargs)

    @contextlib.contextmanager
    def _exporting(self) -> Iterator[None]:
        """Eval mode, and properties that do not raise while torch.jit/onnx read every attribute."""
        was_training = self.training
        self._jit_is_scripting = True
        self.eval()
        try:
            yield
        finally:
            self._jit_is_scripting = False
            self.train(was_training)

    def _export_inputs(self, sample: Any) -> Any:
        """An export sample on the module's device, as a batch would be; a list becomes positional args."""
        sample = move_data_to_device(sample, self.device)
        return tuple(sample) if isinstance(sample, list) else sample

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: str, map_location: Any = None, strict: bool = True, **kwargs: Any
    ) -> "LightningModule":
        """Build the module from the checkpoint's hyper_parameters (overridden by ``kwargs``) and load weights."""
        checkpoint = _ckpt.load(checkpoint_path, map_location=map_location or "cpu")
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.update(kwargs)
        model = cls(**hparams)
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"], strict=strict)
        return model


# TorchScript compiles a scripted module's properties; these read the trainer or Python-only state.
LightningModule.__jit_unused_properties__ = sorted(  # type: ignore[attr-defined]
    {name for klass in LightningModule.__mro__ for name, attr in vars(klass).items() if isinstance(attr, property)}
)


def _require_onnx_packages(dynamo: bool) -> None:
    """Name the missing package before torch.onnx fails deep inside the export."""
    import importlib.util

    needed = ("onnx", "onnxscript") if dynamo else ("onnx",)
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        names = " and ".join(repr(m) for m in missing)
        raise ImportError(
            f"LightningModule.to_onnx() needs the {names} package{'s' if len(missing) > 1 else ''}, not installed "
            f"here: pip install {' '.join(missing)}"
            + (" (or pass dynamo=False to use torch's legacy exporter, which needs only 'onnx')" if dynamo else "")
        )
