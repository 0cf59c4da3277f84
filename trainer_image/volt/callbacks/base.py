"""The Callback base class: every hook Lightning 2.x calls, plus Lightning 1.x's hooks.

Every hook is a no-op. The trainer dispatches a hook only to the callbacks
that override it (see ``overrides``), so an unused hook costs nothing per step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Type


class Callback:
    """Base class for callbacks. Override the hooks you need."""

    @property
    def state_key(self) -> str:
        """Key under which this callback's state is stored in a checkpoint."""
        return self._generate_state_key()

    def _generate_state_key(self, **kwargs: Any) -> str:
        if not kwargs:
            return type(self).__qualname__
        # Keyword order, not sorted: the same key Lightning writes, so callback states load across the two.
        return f"{type(self).__qualname__}{repr(kwargs)}"

    # --- setup / teardown -------------------------------------------------
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None: ...
    def teardown(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None: ...

    # --- 1.x init hooks (called from Trainer.__init__) ---------------------
    def on_init_start(self, trainer: "Trainer") -> None: ...
    def on_init_end(self, trainer: "Trainer") -> None: ...

    # --- fit / sanity check -----------------------------------------------
    def on_fit_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_fit_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_sanity_check_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_sanity_check_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...

    # --- training ---------------------------------------------------------
    def on_train_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_train_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_train_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_train_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_train_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int
    ) -> None: ...
    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None: ...

    # --- validation -------------------------------------------------------
    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_validation_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_validation_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_validation_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_validation_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_validation_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None: ...

    # --- test -------------------------------------------------------------
    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_test_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_test_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_test_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_test_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_test_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None: ...

    # --- predict ----------------------------------------------------------
    def on_predict_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_predict_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_predict_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_predict_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_predict_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None: ...
    def on_predict_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None: ...

    # --- 1.x epoch/batch hooks (around train, validation and test epochs) ---
    def on_epoch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_epoch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_batch_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_batch_end(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...

    # --- optimization -----------------------------------------------------
    def on_before_backward(self, trainer: "Trainer", pl_module: "LightningModule", loss: Any) -> None: ...
    def on_after_backward(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...
    def on_before_optimizer_step(
        self, trainer: "Trainer", pl_module: "LightningModule", optimizer: Any
    ) -> None: ...
    def on_before_zero_grad(self, trainer: "Trainer", pl_module: "LightningModule", optimizer: Any) -> None: ...

    # --- failures ---------------------------------------------------------
    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None: ...
    def on_keyboard_interrupt(self, trainer: "Trainer", pl_module: "LightningModule") -> None: ...

    # --- checkpoints ------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None: ...
    def on_save_checkpoint(
        self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: Dict[str, Any]
    ) -> None: ...
    def on_load_checkpoint(
        self, trainer: "Trainer", pl_module: "LightningModule", checkpoint: Dict[str, Any]
    ) -> None: ...


def overrides(callback: Callback, hook: str, base: Optional[Type[Callback]] = None) -> bool:
    """True when ``callback`` overrides ``hook`` of ``base`` (Callback by default)."""
    base = base or Callback
    impl = getattr(type(callback), hook, None)
    return impl is not None and impl is not getattr(base, hook, None)


def ignores_outputs(hook: Any) -> Any:
    """Marks an ``on_train_batch_end`` that never reads ``outputs``.

    When every hook that receives a batch's outputs is marked (or none does), the
    training loop skips detaching them into a dict each step. A subclass that
    overrides the hook without this mark gets detached outputs as usual.
    """
    hook._volt_ignores_outputs = True
    return hook


if TYPE_CHECKING:  # pragma: no cover - imports for type checkers only (the trainer imports callbacks)
    from volt.module import LightningModule
    from volt.trainer import Trainer
