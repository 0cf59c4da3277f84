"""Tuner: the learning-rate finder and batch-size scaling (``trainer.tune()``).

Both run short real fits on the user's trainer with temporary settings (no
loggers, no checkpoints, no sanity check), then put the trainer and the
model's weights back as they were and set the found value on the model:
``model.lr``/``model.learning_rate`` (or ``hparams``, or the datamodule) for
the learning rate, ``batch_size`` for the batch size.
"""
from __future__ import annotations

import copy
import gc
import logging
import math
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Union

import torch

from volt.callbacks.base import Callback
from volt.utilities.parsing import lightning_getattr, lightning_hasattr, lightning_setattr

if TYPE_CHECKING:  # pragma: no cover
    from volt.datamodule import LightningDataModule
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)


def is_oom_error(err: BaseException) -> bool:
    """Out of memory on the GPU (CUDA OOM, cuBLAS/cuDNN allocation failures) or the host."""
    if isinstance(err, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    if not isinstance(err, RuntimeError) or not err.args:
        return False
    text = str(err.args[0])
    return any(
        marker in text
        for marker in (
            "CUDA out of memory",
            "out of memory",
            "CUBLAS_STATUS_ALLOC_FAILED",
            "CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input",
            "can't allocate memory",  # the CPU allocator
        )
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the learning-rate finder ---------------------------------------------------------------

class LRFinder:
    """Result of ``Tuner.lr_find``: the learning rates tried and the (smoothed) losses."""

    def __init__(self, mode: str, lr_min: float, lr_max: float, num_training: int) -> None:
        self.mode = mode
        self.lr_min = lr_min
        self.lr_max = lr_max
        self.num_training = num_training
        self.results: Dict[str, List[float]] = {"lr": [], "loss": []}
        self._optimal_idx: Optional[int] = None

    def lr_at(self, step: int) -> float:
        """Learning rate of sweep step ``step`` (0-based)."""
        r = step / max(1, self.num_training - 1)
        if self.mode == "exponential":
            return self.lr_min * (self.lr_max / self.lr_min) ** r
        return self.lr_min + (self.lr_max - self.lr_min) * r

    def suggestion(self, skip_begin: int = 10, skip_end: int = 1) -> Optional[float]:
        """The learning rate where the loss falls fastest (steepest negative gradient).

        The first ``skip_begin`` and last ``skip_end`` points are ignored (noisy
        start, divergence at the end). None when too few points remain.
        """
        end = len(self.results["loss"]) - skip_end if skip_end > 0 else len(self.results["loss"])
        losses = torch.tensor(self.results["loss"][skip_begin:end], dtype=torch.float64)
        lrs = torch.tensor(self.results["lr"][skip_begin:end], dtype=torch.float64)
        finite = torch.isfinite(losses)
        losses, lrs = losses[finite], lrs[finite]
        if losses.numel() < 2:
            log.warning(
                "lr_find: not enough points to suggest a learning rate (%d after skipping); increase "
                "num_training or the size of the training data", losses.numel(),
            )
            self._optimal_idx = None
            return None
        gradients = torch.gradient(losses)[0]
        idx = int(torch.argmin(gradients))
        self._optimal_idx = idx + skip_begin
        return float(lrs[idx])

    def plot(self, suggest: bool = False, show: bool = False, ax: Any = None) -> Any:
        """Loss against learning rate (needs matplotlib)."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("LRFinder.plot needs matplotlib: `pip install matplotlib`") from err
        fig = None
        if ax is None:
            fig, ax = plt.subplots()
        ax.plot(self.results["lr"], self.results["loss"])
        if self.mode == "exponential":
            ax.set_xscale("log")
        ax.set_xlabel("Learning rate")
        ax.set_ylabel("Loss")
        if suggest and self.suggestion() is not None and self._optimal_idx is not None:
            i = self._optimal_idx
            ax.plot(self.results["lr"][i], self.results["loss"][i], markersize=10, marker="o", color="red")
        if show:
            plt.show()
        return fig


class _LRFinderCallback(Callback):
    """Sets the sweep's learning rate before each optimizer step and records the loss."""

    def __init__(self, finder: LRFinder, early_stop_threshold: Optional[float], beta: float = 0.98) -> None:
        self.finder = finder
        self.early_stop_threshold = early_stop_threshold
        self.beta = beta
        self._avg_loss = 0.0
        self._best_loss = math.inf
        self._last_step = -1

    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        # The sweep owns the learning rate: the user's schedulers must not step.
        configs = getattr(trainer, "lr_scheduler_configs", None)
        if isinstance(configs, list):
            configs.clear()
        if len(trainer.optimizers) != 1:
            raise ValueError(f"lr_find supports one optimizer, configure_optimizers returned {len(trainer.optimizers)}")

    def on_train_batch_start(self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int) -> None:
        lr = self.finder.lr_at(trainer.global_step)
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step - 1  # the optimizer step this batch completed
        if step == self._last_step or step < 0:
            return  # accumulating: no step yet
        self._last_step = step
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            raise ValueError("lr_find needs training_step to return the loss (a tensor or {'loss': tensor})")
        value = float(loss.detach().float().item())  # tuning only: one sync per step is fine
        n = len(self.finder.results["loss"])
        self._avg_loss = self.beta * self._avg_loss + (1 - self.beta) * value
        smoothed = self._avg_loss / (1 - self.beta ** (n + 1))
        self.finder.results["lr"].append(self.finder.lr_at(step))
        self.finder.results["loss"].append(smoothed)
        if self.early_stop_threshold is not None and n > 1 and smoothed > self.early_stop_threshold * self._best_loss:
            trainer.should_stop = True  # diverged
        if not math.isnan(smoothed) and smoothed < self._best_loss:
            self._best_loss = smoothed
        if math.isnan(smoothed):
            trainer.should_stop = True


class _StepCounter(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int) -> None:
        self.batches += 1


# --- the tuner ----------------------------------------------------------------------------------

# Trainer attributes a tuning run changes; each is put back afterwards.
_TRIAL_ATTRS = (
    "callbacks", "loggers", "max_steps", "max_epochs", "min_steps", "min_epochs", "limit_val_batches",
    "num_sanity_val_steps", "progress", "should_stop", "_logger_connector", "optimizers", "lr_scheduler_configs",
    "datamodule", "lightning_module_ref", "_loader_args", "_hook_cache", "_module_hooks", "val_check_interval",
    "check_val_every_n_epoch", "_trial_run",
)


LR_SWEEP_MODES = ("linear", "exponential")  # Lightning's LearningRateFinder.SUPPORTED_MODES order


def check_sweep(owner: str, min_lr: float, max_lr: float, num_training: Any, mode: str,
                early_stop_threshold: Optional[float], steps_name: str = "num_training") -> None:
    """The learning-rate sweep's settings (``Tuner.lr_find``, ``LearningRateFinder``); errors name ``owner``'s argument."""
    if mode not in LR_SWEEP_MODES:
        raise ValueError(f"{owner}(mode={mode!r}) must be one of {LR_SWEEP_MODES}")
    if isinstance(num_training, bool) or not isinstance(num_training, int) or num_training < 2:
        raise ValueError(f"{owner}({steps_name}={num_training!r}) must be an int >= 2")
    if not 0 < min_lr < max_lr:
        raise ValueError(f"{owner} needs 0 < min_lr < max_lr, got min_lr={min_lr!r}, max_lr={max_lr!r}")
    if early_stop_threshold is not None and not early_stop_threshold > 0:
        raise ValueError(f"{owner}(early_stop_threshold={early_stop_threshold!r}) must be > 0 or None")


class Tuner:
    """Hyper-parameter tuning on a Trainer: ``Tuner(trainer).lr_find(model)``, ``.scale_batch_size(model)``."""

    def __init__(self, trainer: "Trainer") -> None:
        self.trainer = trainer

    # --- shared ------------------------------------------------------------------------
    @contextmanager
    def _trial_settings(self, model: "LightningModule", **overrides: Any) -> Iterator[None]:
        trainer = self.trainer
        saved = {name: getattr(trainer, name) for name in _TRIAL_ATTRS if name in vars(trainer)}
        saved_state = copy.copy(getattr(trainer, "state", None))
        weights = copy.deepcopy(model.state_dict())
        try:
            from volt.trainer.logger_connector import LoggerConnector
            from volt.trainer.progress import Progress

            trainer.progress = Progress()
            trainer._logger_connector = LoggerConnector(trainer)
            trainer.loggers = []
            trainer.should_stop = False
            trial = {"min_steps": None, "min_epochs": None, "num_sanity_val_steps": 0, "_trial_run": True}
            for name, value in {**trial, **overrides}.items():
                if name in vars(trainer):
                    setattr(trainer, name, value)
            yield
        finally:
            for name, value in saved.items():
                setattr(trainer, name, value)
            if saved_state is not None:
                trainer.state = saved_state
            model.load_state_dict(weights)
            model.trainer = trainer

    def _check_runnable(self, what: str) -> bool:
        trainer = self.trainer
        if trainer.fast_dev_run:
            log.warning("Skipping %s since fast_dev_run is enabled", what)
            return False
        if trainer.world_size > 1:
            raise RuntimeError(
                f"{what} runs in a single process: tune in a one-process run (devices=1, num_nodes=1) "
                "and pass the result to the distributed job"
            )
        return True

    # --- learning rate -----------------------------------------------------------------
    def lr_find(
        self,
        model: "LightningModule",
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Optional["LightningDataModule"] = None,
        method: str = "fit",
        min_lr: float = 1e-8,
        max_lr: float = 1.0,
        num_training: int = 100,
        mode: str = "exponential",
        early_stop_threshold: Optional[float] = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> Optional[LRFinder]:
        """Sweep the learning rate from ``min_lr`` to ``max_lr`` over ``num_training`` steps.

        Stops early when the smoothed loss exceeds ``early_stop_threshold`` times
        the best one. With ``update_attr`` the suggestion is written to
        ``attr_name`` (default: ``lr`` or ``learning_rate``, wherever defined).
        """
        if method != "fit":
            raise ValueError(f"lr_find(method={method!r}): only 'fit' is supported")
        check_sweep("lr_find", min_lr, max_lr, num_training, mode, early_stop_threshold)
        if train_dataloaders is None:
            train_dataloaders = dataloaders
        attr = self._lr_attr(model, attr_name, datamodule) if update_attr else ""
        if not self._check_runnable("lr_find"):
            return None

        finder = LRFinder(mode, min_lr, max_lr, num_training)
        callback = _LRFinderCallback(finder, early_stop_threshold)
        with self._trial_settings(
            model, callbacks=[callback], max_steps=num_training, max_epochs=-1, limit_val_batches=0
        ):
            self.trainer.fit(model, train_dataloaders, val_dataloaders if datamodule is None else None, datamodule)
        if len(finder.results["lr"]) < num_training:
            log.info("lr_find stopped after %d of %d steps (loss diverged or data ran out)", len(finder.results["lr"]), num_training)
        if update_attr:
            lr = finder.suggestion()
            if lr is not None:
                lightning_setattr(model, attr, lr, datamodule)
                log.info("lr_find: learning rate set to %.3g (%s)", lr, attr)
        return finder

    @staticmethod
    def _lr_attr(model: "LightningModule", attr_name: str, datamodule: Optional["LightningDataModule"]) -> str:
        if attr_name:
            if not lightning_hasattr(model, attr_name, datamodule):
                raise AttributeError(
                    f"lr_find(attr_name={attr_name!r}): no such field in the model, model.hparams or the datamodule"
                )
            return attr_name
        for candidate in ("lr", "learning_rate"):
            if lightning_hasattr(model, candidate, datamodule):
                return candidate
        raise AttributeError(
            "lr_find needs the learning rate in `model.lr` or `model.learning_rate` (or in hparams) so it can "
            "update it; set one, pass attr_name=..., or update_attr=False"
        )

    # --- batch size ----------------------------------------------------------------------
    def scale_batch_size(
        self,
        model: "LightningModule",
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        dataloaders: Any = None,
        datamodule: Optional["LightningDataModule"] = None,
        method: str = "fit",
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        max_val: Optional[int] = None,
    ) -> Optional[int]:
        """Find the largest batch size that trains without running out of memory.

        ``power`` doubles from ``init_val`` until a trial fails (or ``max_trials``
        succeed); ``binsearch`` then bisects between the last success and the
        failure. Each trial trains ``steps_per_trial`` steps. The result is set
        on the model (or datamodule) as ``batch_arg_name``; the dataloaders must
        read it, so dataloaders passed directly to fit() cannot be scaled.
        """
        if method != "fit":
            raise ValueError(f"scale_batch_size(method={method!r}): only 'fit' is supported")
        if mode not in ("power", "binsearch"):
            raise ValueError(f"scale_batch_size(mode={mode!r}) must be 'power' or 'binsearch'")
        for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"scale_batch_size({name}={value!r}) must be an int >= 1")
        if max_val is not None and max_val < init_val:
            raise ValueError(f"scale_batch_size(max_val={max_val}) must be >= init_val={init_val}")
        if train_dataloaders is not None or dataloaders is not None or val_dataloaders is not None:
            raise ValueError(
                "scale_batch_size cannot change the batch size of dataloaders passed to fit(): build them in "
                "the LightningModule or LightningDataModule from `self.batch_size`"
            )
        if not lightning_hasattr(model, batch_arg_name, datamodule):
            raise AttributeError(
                f"scale_batch_size: field {batch_arg_name!r} not found in the model, the datamodule, nor their hparams"
            )
        if not self._check_runnable("scale_batch_size"):
            return None

        original = lightning_getattr(model, batch_arg_name, datamodule)
        dataset_len = self._dataset_len(model, datamodule)
        size = init_val if dataset_len is None else min(init_val, dataset_len)
        if max_val is not None:
            size = min(size, max_val)
        caps = [c for c in (dataset_len, max_val) if c is not None]
        cap = min(caps) if caps else None
        high: Optional[int] = None  # smallest size known to run out of memory
        best: Optional[int] = None  # largest size known to fit
        successes = 0
        try:
            while True:
                if self._run_trial(model, datamodule, batch_arg_name, size, steps_per_trial):
                    successes += 1
                    best = size
                    if successes >= max_trials:
                        break
                    # Double until the first failure; binsearch then bisects below it.
                    nxt = size * 2 if high is None else (best + high) // 2
                    if cap is not None:
                        nxt = min(nxt, cap)
                    if nxt <= size:
                        break  # the whole dataset, max_val, or a failure right above
                    size = nxt
                else:
                    high = size
                    if best is None:
                        nxt = size // 2  # nothing fits yet: go down
                    elif mode == "power":
                        break
                    else:
                        nxt = (best + high) // 2
                    if nxt < 1 or nxt == size or (best is not None and nxt <= best):
                        break
                    size = nxt
        finally:
            _free_memory()
        if best is None:
            lightning_setattr(model, batch_arg_name, original, datamodule)
            raise RuntimeError(
                f"scale_batch_size: even {batch_arg_name}={size} runs out of memory; reduce the model or its inputs"
            )
        lightning_setattr(model, batch_arg_name, best, datamodule)
        log.info("scale_batch_size: %s set to %d after %d successful trial(s)", batch_arg_name, best, successes)
        return best

    def _run_trial(
        self, model: "LightningModule", datamodule: Optional["LightningDataModule"], name: str, size: int, steps: int
    ) -> bool:
        lightning_setattr(model, name, size, datamodule)
        counter = _StepCounter()
        try:
            with self._trial_settings(model, callbacks=[counter], max_steps=steps, max_epochs=-1, limit_val_batches=steps):
                self.trainer.fit(model, datamodule=datamodule)
        except BaseException as err:  # noqa: B902 - an OOM can surface as several exception types
            if not is_oom_error(err):
                raise
            log.info("scale_batch_size: %s=%d ran out of memory", name, size)
            del err
            _free_memory()
            return False
        log.info("scale_batch_size: %s=%d fits (%d batches)", name, size, counter.batches)
        return True

    @staticmethod
    def _dataset_len(model: "LightningModule", datamodule: Optional["LightningDataModule"]) -> Optional[int]:
        """Length of the training dataset, when the source can tell (a larger batch is pointless)."""
        source = datamodule if datamodule is not None else model
        try:
            loader = source.train_dataloader()
        except Exception:  # noqa: BLE001 - e.g. setup() not run yet: just do not cap
            return None
        dataset = getattr(loader, "dataset", None)
        try:
            return len(dataset) if dataset is not None else None
        except TypeError:
            return None

    # --- 1.x trainer.tune() ----------------------------------------------------------------
    def tune(
        self,
        model: "LightningModule",
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        datamodule: Optional["LightningDataModule"] = None,
        auto_lr_find: Union[bool, str] = False,
        auto_scale_batch_size: Union[bool, str] = False,
    ) -> Dict[str, Any]:
        """Run what the 1.x flags ask for: batch size first, then the learning rate."""
        result: Dict[str, Any] = {}
        if auto_scale_batch_size:
            mode = "power" if auto_scale_batch_size is True else auto_scale_batch_size
            result["scale_batch_size"] = self.scale_batch_size(
                model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, datamodule=datamodule, mode=mode
            )
        if auto_lr_find:
            attr = "" if auto_lr_find is True else str(auto_lr_find)
            result["lr_find"] = self.lr_find(
                model, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, datamodule=datamodule, attr_name=attr
            )
        return result
