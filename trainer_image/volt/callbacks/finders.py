"""LearningRateFinder and BatchSizeFinder: the tuner, run from inside ``fit`` (Lightning's callback forms).

Both call volt's Tuner (``volt.tuner``: ``lr_find``, ``scale_batch_size``) from
``on_fit_start``, so the search and its trial rules are the tuner's. The tuner's
trials are real ``trainer.fit`` calls; from inside a running fit they would
overwrite that run's state, so every Trainer attribute is saved before and put
back after (with the trainer state, the loss scaler and the random generators),
and the trials neither resume from a checkpoint nor reach the profiler. The
model's weights are restored by the tuner itself.

After the search:

* LearningRateFinder: ``optimal_lr`` is the tuner's ``LRFinder`` (``.results``,
  ``.suggestion()``, ``.plot()``); with ``update_attr`` the suggestion is written to the
  model's ``lr``/``learning_rate`` (or ``attr_name``) and into the param groups of the
  optimizers this fit already built, as Lightning 2.6 does.
* BatchSizeFinder: ``optimal_batch_size`` is the size found (``binsearch`` then takes
  ``margin`` off, as Lightning does) and the model/datamodule field is set to it; the
  run's dataloaders are built with it.

Differences from Lightning: the trial fits call the module's ``setup``/``configure_model``/
``configure_optimizers``/``teardown`` again (Lightning re-runs only the loop), so those
hooks must tolerate a second call; both finders run in one process only (the tuner
refuses DDP; Lightning's LR finder allows it); BatchSizeFinder scales for ``fit`` only,
and warns instead of scaling at the start of validate/test/predict.
"""
from __future__ import annotations

import copy
import logging
import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Optional

from volt.callbacks.base import Callback
from volt.profilers import PassThroughProfiler
from volt.resume import capture_rng_state, restore_rng_state
from volt.tuner import LR_SWEEP_MODES, LRFinder, Tuner, check_sweep, lightning_hasattr, lightning_setattr

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

@contextmanager
def nested_tuning(trainer: "Trainer") -> Iterator[None]:
    """Let the tuner's trial fits run inside a running fit, and put the run back as it was."""
    saved = dict(vars(trainer))
    state = copy.copy(trainer.state)
    scaler = trainer.precision_plugin.scaler
    scaler_state = scaler.state_dict() if scaler is not None else None
    rng = capture_rng_state()
    trainer.profiler = PassThroughProfiler()
    try:
        yield
    finally:
        for name in [n for n in vars(trainer) if n not in saved]:
            delattr(trainer, name)
        vars(trainer).update(saved)
        vars(trainer.state).update(vars(state))  # the same object: the trials changed it in place
        if scaler is not None and scaler_state is not None:
            scaler.load_state_dict(scaler_state)
        restore_rng_state(rng)


def _positive_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}({name}={value!r}) must be an int >= {minimum}")


class LearningRateFinder(Callback):
    """Run the learning-rate range test when fit starts (Lightning's ``LearningRateFinder``).

    Args:
        min_lr / max_lr: the range swept.
        num_training_steps: steps of the sweep (one learning rate each).
        mode: ``"exponential"`` or ``"linear"`` growth of the learning rate.
        early_stop_threshold: stop once the loss exceeds this multiple of the best one (None: never).
        update_attr: write the suggestion to the model (and the fit's optimizers).
        attr_name: the field to write; default ``lr`` or ``learning_rate``.

    Subclasses may call ``lr_find(trainer, pl_module)`` from another hook (e.g. at chosen epochs).
    """

    SUPPORTED_MODES = LR_SWEEP_MODES

    def __init__(
        self,
        min_lr: float = 1e-8,
        max_lr: float = 1,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: Optional[float] = 4.0,
        update_attr: bool = True,
        attr_name: str = "",
    ) -> None:
        super().__init__()
        mode = mode.lower() if isinstance(mode, str) else mode
        check_sweep("LearningRateFinder", min_lr, max_lr, num_training_steps, mode, early_stop_threshold,
                    steps_name="num_training_steps")
        if not isinstance(update_attr, bool):
            raise TypeError(f"LearningRateFinder(update_attr={update_attr!r}) must be a bool")
        if not isinstance(attr_name, str):
            raise TypeError(f"LearningRateFinder(attr_name={attr_name!r}) must be a str")
        self._min_lr = min_lr
        self._max_lr = max_lr
        self._num_training_steps = num_training_steps
        self._mode = mode
        self._early_stop_threshold = early_stop_threshold
        self._update_attr = update_attr
        self._attr_name = attr_name
        self.optimal_lr: Optional[LRFinder] = None

    def lr_find(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Sweep now; sets ``optimal_lr`` (None under ``fast_dev_run``)."""
        train_loaders = getattr(trainer, "_loader_args", {}).get("train")
        with nested_tuning(trainer):
            finder = Tuner(trainer).lr_find(
                pl_module, train_dataloaders=train_loaders, datamodule=trainer.datamodule,
                min_lr=self._min_lr, max_lr=self._max_lr, num_training=self._num_training_steps, mode=self._mode,
                early_stop_threshold=self._early_stop_threshold, update_attr=self._update_attr,
                attr_name=self._attr_name,
            )
        self.optimal_lr = finder
        lr = finder.suggestion() if finder is not None and self._update_attr else None
        if lr is not None:  # the tuner set the model's field; the optimizers already exist
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self.lr_find(trainer, pl_module)


class BatchSizeFinder(Callback):
    """Find the largest batch size that fits when fit starts (Lightning's ``BatchSizeFinder``).

    Args:
        mode: ``"power"`` (double until out of memory) or ``"binsearch"`` (then bisect).
        steps_per_trial: training steps per tried size.
        init_val: first size tried.
        max_trials: most successful trials.
        batch_arg_name: the model/datamodule field (or hparam) the dataloaders read.
        margin: fraction taken off the ``binsearch`` result, as a safety buffer (0 <= margin < 1).
        max_val: largest size tried.

    The dataloaders must come from the LightningModule or LightningDataModule and read
    ``batch_arg_name``. Subclasses may call ``scale_batch_size(trainer, pl_module)`` elsewhere.
    """

    SUPPORTED_MODES = ("power", "binsearch")

    def __init__(
        self,
        mode: str = "power",
        steps_per_trial: int = 3,
        init_val: int = 2,
        max_trials: int = 25,
        batch_arg_name: str = "batch_size",
        margin: float = 0.05,
        max_val: int = 8192,
    ) -> None:
        super().__init__()
        mode = mode.lower() if isinstance(mode, str) else mode
        if mode not in self.SUPPORTED_MODES:
            raise ValueError(f"BatchSizeFinder(mode={mode!r}) must be one of {self.SUPPORTED_MODES}")
        for name, value in (("steps_per_trial", steps_per_trial), ("init_val", init_val), ("max_trials", max_trials),
                            ("max_val", max_val)):
            _positive_int("BatchSizeFinder", name, value)
        if max_val < init_val:
            raise ValueError(f"BatchSizeFinder(max_val={max_val}) must be >= init_val={init_val}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0.0 <= margin < 1.0:
            raise ValueError(f"BatchSizeFinder(margin={margin!r}) must be a number in [0, 1)")
        if not isinstance(batch_arg_name, str) or not batch_arg_name:
            raise ValueError(f"BatchSizeFinder(batch_arg_name={batch_arg_name!r}) must be a non-empty str")
        self._mode = mode
        self._steps_per_trial = steps_per_trial
        self._init_val = init_val
        self._max_trials = max_trials
        self._batch_arg_name = batch_arg_name
        self._margin = float(margin)
        self._max_val = max_val
        self.optimal_batch_size: Optional[int] = init_val

    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        if trainer.world_size > 1:
            raise RuntimeError("BatchSizeFinder is not supported with distributed strategies: find the batch size "
                               "in a one-process run (devices=1) and pass it to the distributed job")
        if stage == "fit" and getattr(trainer, "_loader_args", {}).get("train") is not None:
            raise ValueError("BatchSizeFinder cannot change the batch size of dataloaders passed to fit(): build them "
                             f"in the LightningModule or LightningDataModule from `self.{self._batch_arg_name}`")
        if not lightning_hasattr(pl_module, self._batch_arg_name, trainer.datamodule):
            raise AttributeError(f"BatchSizeFinder(batch_arg_name={self._batch_arg_name!r}): no such field in the "
                                 "model, the datamodule, nor their hparams")

    def scale_batch_size(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        """Search now; sets ``optimal_batch_size`` and the model/datamodule field."""
        datamodule = trainer.datamodule
        with nested_tuning(trainer):
            size = Tuner(trainer).scale_batch_size(
                pl_module, datamodule=datamodule, mode=self._mode, steps_per_trial=self._steps_per_trial,
                init_val=self._init_val, max_trials=self._max_trials, batch_arg_name=self._batch_arg_name,
                max_val=self._max_val,
            )
        if size is not None and self._mode == "binsearch" and self._margin > 0:
            reduced = max(1, int(size * (1 - self._margin)))
            if reduced != size:
                log.info("BatchSizeFinder: margin %.1f%% takes the batch size from %d to %d", self._margin * 100,
                         size, reduced)
                size = reduced
                lightning_setattr(pl_module, self._batch_arg_name, size, datamodule)
        self.optimal_batch_size = size
        _rebuild_train_loader(trainer)

    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self.scale_batch_size(trainer, pl_module)

    def _not_for_evaluation(self, trainer: "Trainer") -> None:
        warnings.warn(f"BatchSizeFinder: volt scales the batch size for fit() only; trainer.{trainer.state.fn}() runs "
                      f"with {self._batch_arg_name} as it is", UserWarning)

    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        if not trainer.sanity_checking and trainer.state.fn == "validate":
            self._not_for_evaluation(trainer)

    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._not_for_evaluation(trainer)

    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._not_for_evaluation(trainer)


def _rebuild_train_loader(trainer: "Trainer") -> None:
    """Make the running fit use loaders built with the new batch size."""
    if trainer.state.stage != "train":
        # fit loads the train loader after the sanity check (validation loaders right after
        # on_fit_start); one loaded early (estimated_stepping_batches) is loaded again.
        trainer.run_state.train_loader_loaded = False
        return
    from volt.trainer.fit_loop import _load_train_dataloader

    _load_train_dataloader(trainer)  # mid-training: the epoch in progress keeps its loader
