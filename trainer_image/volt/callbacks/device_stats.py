"""DeviceStatsMonitor: log device statistics at the trainer's logging cadence.

Metric names are Lightning's: ``DeviceStatsMonitor.<hook>/<stat>`` (the separator
is each logger's ``group_separator``), for the hooks ``on_train_batch_start``,
``on_train_batch_end``, ``on_validation_batch_start/end`` and ``on_test_batch_start/end``.

Where the numbers come from:

* CUDA: ``torch.cuda.memory_stats(device)``, the caching allocator's counters
  (``allocated_bytes.all.current``, ``reserved_bytes.all.peak``, ``num_ooms``, ...).
  They are kept on the host, so reading them never waits for the GPU.
* CPU: ``cpu_percent``, ``cpu_vm_percent`` and ``cpu_swap_percent`` from psutil.
  psutil is not a volt dependency: with ``cpu_stats=None`` and no psutil, CPU stats
  are skipped with a warning; ``cpu_stats=True`` without psutil is an error.
* MPS: psutil's numbers under Lightning's ``M1_*`` names.

Stats are read only on logging steps (``log_every_n_steps``, as Lightning's
``should_update_logs``), and sent straight to the loggers as Lightning does: they
do not enter ``trainer.callback_metrics``.
"""
from __future__ import annotations

import functools
import importlib.util
import warnings
from typing import TYPE_CHECKING, Any, Dict, Optional

import torch

from volt.callbacks.base import Callback, ignores_outputs

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer


@functools.lru_cache(maxsize=None)
def psutil_available() -> bool:
    """Whether psutil can be imported (looked up once)."""
    return importlib.util.find_spec("psutil") is not None


def cpu_stats(prefix: str = "cpu") -> Dict[str, float]:
    """Host CPU, memory and swap use in percent (needs psutil)."""
    if not psutil_available():
        raise ModuleNotFoundError("CPU stats need psutil, which is not installed: `pip install psutil`")
    import psutil

    return {
        f"{prefix}_vm_percent": float(psutil.virtual_memory().percent),
        f"{prefix}_percent": float(psutil.cpu_percent()),
        f"{prefix}_swap_percent": float(psutil.swap_memory().percent),
    }


def cuda_stats(device: torch.device) -> Dict[str, float]:
    """The CUDA caching allocator's statistics for ``device`` (host-side counters, no device sync)."""
    return {name: float(value) for name, value in torch.cuda.memory_stats(device).items()}


class DeviceStatsMonitor(Callback):
    """Log device stats on logging steps (Lightning's ``DeviceStatsMonitor``).

    Args:
        cpu_stats: ``None``: CPU stats only when training on the CPU (and psutil is
            installed). ``True``: CPU stats on any device (psutil required).
            ``False``: never CPU stats.

    Raises:
        ValueError: at ``fit`` when the Trainer has no logger.
        ModuleNotFoundError: when ``cpu_stats=True`` and psutil is not installed.
    """

    def __init__(self, cpu_stats: Optional[bool] = None) -> None:
        super().__init__()
        if cpu_stats is not None and not isinstance(cpu_stats, bool):
            raise TypeError(f"DeviceStatsMonitor(cpu_stats={cpu_stats!r}) must be None, True or False")
        self._cpu_stats = cpu_stats
        self._stepped_before: Optional[int] = None  # Lightning's _batches_that_stepped during this batch
        self._eval_ready = 0  # batches of the current evaluation run, this one included
        self._warned = False

    # --- checks ------------------------------------------------------------------------
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        self._stepped_before = None
        if stage == "fit" and not trainer.loggers:
            raise ValueError("DeviceStatsMonitor needs a logger: the Trainer was created with logger=False")
        if psutil_available():
            return
        device_type = trainer.strategy.root_device.type
        if self._cpu_stats:
            raise ModuleNotFoundError(
                "DeviceStatsMonitor(cpu_stats=True) needs psutil to read CPU stats, and it is not installed: "
                "`pip install psutil`, or pass cpu_stats=None/False"
            )
        if self._cpu_stats is None and device_type in ("cpu", "mps") and not self._warned:
            self._warned = True
            warnings.warn(
                f"DeviceStatsMonitor: psutil is not installed, so no {device_type.upper()} stats are logged "
                "(`pip install psutil` to get them)",
                UserWarning,
            )

    # --- what to read --------------------------------------------------------------------
    def _collect(self, device: torch.device) -> Dict[str, float]:
        kind = device.type
        if kind == "cpu":
            if self._cpu_stats is False or not psutil_available():
                return {}
            return cpu_stats()
        stats: Dict[str, float] = {}
        if kind == "cuda":
            stats = cuda_stats(device)
        elif kind == "mps" and psutil_available():
            stats = cpu_stats("M1")
        if self._cpu_stats:  # setup() made sure psutil is there
            stats.update(cpu_stats())
        return stats

    def _log(self, trainer: "Trainer", hook: str, step: int) -> None:
        stats = self._collect(trainer.strategy.root_device)
        if not stats:
            return
        prefix = f"{type(self).__qualname__}.{hook}"
        for logger in trainer.loggers:
            sep = logger.group_separator
            logger.log_metrics({f"{prefix}{sep}{name}": value for name, value in stats.items()}, step=step)

    # --- cadence ---------------------------------------------------------------------------
    @staticmethod
    def _due(trainer: "Trainer", count: int) -> bool:
        """Lightning's should_update_logs for a 1-based ``count``."""
        every = trainer.log_every_n_steps
        return every > 0 and (count % every == 0 or trainer.should_stop)

    def _eval_step(self, trainer: "Trainer") -> int:
        # Lightning logs eval stats at the fit loop's count, which inside fit does not yet
        # include the training batch that triggered validation.
        if trainer.state.fn == "fit" and self._stepped_before is not None:
            return self._stepped_before
        return trainer.progress.batches_that_stepped

    # --- training hooks ----------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int
    ) -> None:
        before = self._stepped_before = trainer.progress.batches_that_stepped
        if self._due(trainer, before + 1):
            self._log(trainer, "on_train_batch_start", before)

    @ignores_outputs
    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        before = self._stepped_before if self._stepped_before is not None else trainer.progress.batches_that_stepped
        if self._due(trainer, before + 1):
            self._log(trainer, "on_train_batch_end", before)

    # --- evaluation hooks ----------------------------------------------------------------------
    def on_validation_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._eval_ready = 0

    def on_test_start(self, trainer: "Trainer", pl_module: "LightningModule") -> None:
        self._eval_ready = 0

    def _eval_batch(self, trainer: "Trainer", hook: str, start: bool) -> None:
        if start:
            self._eval_ready += 1
        if self._due(trainer, self._eval_ready):
            self._log(trainer, hook, self._eval_step(trainer))

    def on_validation_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch(trainer, "on_validation_batch_start", start=True)

    def on_validation_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(trainer, "on_validation_batch_end", start=False)

    def on_test_batch_start(
        self, trainer: "Trainer", pl_module: "LightningModule", batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_batch(trainer, "on_test_batch_start", start=True)

    def on_test_batch_end(
        self,
        trainer: "Trainer",
        pl_module: "LightningModule",
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch(trainer, "on_test_batch_end", start=False)
