"""SIGTERM: save a checkpoint on every rank and exit with ``exit_codes.CHECKPOINTED``.

The signal handler only records that a signal arrived. Ranks agree at a step
boundary without a per-step collective: every N batches each rank starts an
*asynchronous* MAX all-reduce of its flag on a CPU (gloo) group and reads the
previous one's result, which finished long ago. Nothing waits on the GPU and
nothing blocks the step; the price is a decision latency of N to 2N steps.
N is ``check_every_n_steps`` when set; by default it follows the step time, so
that the ranks agree about once per ``CHECK_INTERVAL_S`` whether a step takes a
millisecond or seconds (a fixed N of slow steps outlasts the grace period).
The same all-reduce carries each rank's time for the last N batches, so every
rank reads the same slowest time and picks the same next N: the collectives
stay matched. When the agreed flag is set, every rank calls
``trainer.save_checkpoint`` (rank 0 writes, atomically) and raises
``SystemExit(CHECKPOINTED)``.

A watchdog bounds the whole thing: if a rank is still alive ``grace_period``
seconds after the signal (stuck in a collective with a dead peer, or the steps
are too slow for N), it exits hard with 128 + SIGTERM so the supervisor sees
"terminated without a checkpoint" instead of a hang. Keep ``grace_period``
below the pod's ``terminationGracePeriodSeconds``.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
import torch.distributed as dist

from volt import exit_codes
from volt.callbacks.base import Callback, ignores_outputs
from volt.checkpoint import write_manifest
from volt.contract import job_contract

if TYPE_CHECKING:  # pragma: no cover
    from volt.module import LightningModule
    from volt.trainer.trainer import Trainer

log = logging.getLogger(__name__)

#: The first N of the adaptive cadence (it adapts from the second exchange on), and its bound.
FIRST_CHECK_EVERY = 1
MAX_CHECK_EVERY = 1000
#: Seconds of training between agreement points when ``check_every_n_steps`` is not set.
CHECK_INTERVAL_S = 1.0
DEFAULT_GRACE_PERIOD = 25.0

_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, None]


class TerminationFlag:
    """Records the first termination signal. The handler does nothing else."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.received_at: Optional[float] = None
        self._previous: dict[int, _Handler] = {}

    @property
    def is_set(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is None:  # plain assignments only: safe in a handler
            self.signum = signum
            self.received_at = time.monotonic()

    def install(self, signums: tuple[int, ...] = (signal.SIGTERM,)) -> bool:
        """Install the handler; False (and nothing done) off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for signum in signums:
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._handle)
        return True

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def clear(self) -> None:
        self.signum = None
        self.received_at = None


def _hard_exit_after(grace_period: float, signum: int) -> threading.Timer:
    def expire() -> None:
        log.error("no checkpoint within the %.1f s grace period after %s: exiting", grace_period, signal.Signals(signum).name)
        os._exit(exit_codes.from_signal(signum))

    timer = threading.Timer(grace_period, expire)
    timer.daemon = True
    timer.start()
    return timer


def next_check_every(step_s: float) -> int:
    """Batches between agreement points for steps of ``step_s`` seconds: about ``CHECK_INTERVAL_S`` each."""
    if step_s <= 0:
        return MAX_CHECK_EVERY
    return max(1, min(MAX_CHECK_EVERY, int(CHECK_INTERVAL_S / step_s)))


def _remove_older_preempted(keep: str) -> None:
    """Drop earlier SIGTERM checkpoints: a job preempted often would fill its volume.

    Called after the manifest names ``keep``, so the checkpoint a restart needs is never removed.
    """
    dirpath = os.path.dirname(keep)
    for name in os.listdir(dirpath):
        path = os.path.join(dirpath, name)
        if name.startswith("preempted-") and name.endswith(".ckpt") and path != keep:
            try:
                os.remove(path)
            except OSError as err:
                log.warning("could not remove old checkpoint %s: %s", path, err)


class PreemptionCallback(Callback):
    """Turns SIGTERM into "checkpoint on all ranks, exit ``CHECKPOINTED``".

    Args:
        check_every_n_steps: train batches between agreement points (default: the TrainingJob's
            ``VOLT_PREEMPTION_CHECK_EVERY_N_STEPS``, else about one agreement per
            ``CHECK_INTERVAL_S`` of training, from the slowest rank's step time).
            Single-process runs check every batch: there is nothing to agree with.
        grace_period: seconds from the signal to a hard exit (default: the TrainingJob's
            ``VOLT_GRACE_PERIOD_S``, else 25).
        dirpath: where the checkpoint goes: the TrainingJob's ``VOLT_CHECKPOINT_DIR``, else
            this argument, else the ModelCheckpoint's dirpath, else ``<default_root_dir>/checkpoints``.
    """

    def __init__(
        self,
        check_every_n_steps: Optional[int] = None,
        grace_period: Optional[float] = None,
        dirpath: Optional[str] = None,
    ) -> None:
        job = job_contract()  # built by the script, before the Trainer: the job's defaults fill in
        check_every_n_steps = job.default(check_every_n_steps, job.preemption_check_every_n_steps, None)
        grace_period = job.default(grace_period, job.grace_period_s, DEFAULT_GRACE_PERIOD)
        if check_every_n_steps is not None and (
            isinstance(check_every_n_steps, bool) or not isinstance(check_every_n_steps, int) or check_every_n_steps < 1
        ):
            raise ValueError(f"check_every_n_steps must be an int >= 1, got {check_every_n_steps!r}")
        if grace_period <= 0:
            raise ValueError(f"grace_period must be > 0 seconds, got {grace_period!r}")
        self.check_every_n_steps = check_every_n_steps  # None: adaptive
        self.grace_period = float(grace_period)
        self.dirpath = dirpath
        self.flag = TerminationFlag()
        self._installed = False
        self._batches = 0
        self._every = check_every_n_steps or FIRST_CHECK_EVERY  # batches between agreement points
        self._exchanged_at = 0.0  # monotonic time the last exchange started
        self._pending: Optional[Any] = None  # torch.distributed Work
        self._buffer: Optional[torch.Tensor] = None
        self._watchdog: Optional[threading.Timer] = None
        self._world_size: Optional[int] = None

    @property
    def state_key(self) -> str:
        return "PreemptionCallback"

    # --- lifecycle -------------------------------------------------------------
    def setup(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        self._world_size = None
        if stage == "fit":
            self._installed = self.flag.install()
            self._batches = 0
            self._every = self.check_every_n_steps or FIRST_CHECK_EVERY
            self._exchanged_at = time.monotonic()

    def teardown(self, trainer: "Trainer", pl_module: "LightningModule", stage: str) -> None:
        self._drain()
        if self._installed:
            self.flag.uninstall()
            self._installed = False

    def on_exception(self, trainer: "Trainer", pl_module: "LightningModule", exception: BaseException) -> None:
        self._pending = None  # never wait on a collective after a failure: peers may be gone
        if self._installed:  # teardown hooks do not run after an exception
            self.flag.uninstall()
            self._installed = False

    # --- the check --------------------------------------------------------------
    @ignores_outputs
    def on_train_batch_end(
        self, trainer: "Trainer", pl_module: "LightningModule", outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Runs every batch: attribute reads only (flag.signum, not the flag.is_set property).
        world_size = self._world_size
        if world_size is None:  # fixed for a run: read once (setup() forgets it)
            # Without a process group (a single process, or a strategy that only reports a
            # world size) there is nobody to agree with.
            world_size = self._world_size = trainer.world_size if dist.is_available() and dist.is_initialized() else 1
        if world_size == 1:  # nothing to agree with: act on our own signal at once
            if self.flag.signum is not None:
                self._arm_watchdog()
                self._checkpoint_and_exit(trainer)
            return
        if self.flag.signum is not None:
            self._arm_watchdog()
        self._batches += 1
        if self._batches < self._every:
            return
        self._batches = 0
        agreed = self._exchange(trainer)
        if agreed:
            self._checkpoint_and_exit(trainer)

    def _arm_watchdog(self) -> None:
        """From the first batch end after the signal: a hard exit if the save outlasts the grace period."""
        if self._watchdog is None:
            self._watchdog = _hard_exit_after(self.grace_period, self.flag.signum or signal.SIGTERM)

    def _exchange(self, trainer: "Trainer") -> bool:
        """Read the previous exchange's result and start the next one (async)."""
        interval_batches = self._every  # the batches since the last exchange started
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            signalled, slowest_s, batches = self._buffer.tolist()  # CPU tensor: no device sync
            if signalled > 0:
                # Every rank read the same result: none starts another exchange, so no
                # collective is left in flight when the ranks exit (one that is may
                # abort the process at shutdown: SIGABRT instead of CHECKPOINTED).
                return True
            if self.check_every_n_steps is None:
                self._every = next_check_every(slowest_s / max(batches, 1.0))
        group = getattr(trainer.strategy, "control_group", None)
        now = time.monotonic()
        # The flag, and how long this rank took for the interval that just ended, and its length.
        self._buffer = torch.tensor([1.0 if self.flag.is_set else 0.0, now - self._exchanged_at,
                                     float(interval_batches)], dtype=torch.float64)
        self._exchanged_at = now
        self._pending = dist.all_reduce(self._buffer, op=dist.ReduceOp.MAX, group=group, async_op=True)
        return False

    def _drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.wait()

    def _resolve_dirpath(self, trainer: "Trainer") -> str:
        callback = getattr(trainer, "checkpoint_callback", None)
        script_dir = self.dirpath or (str(callback.dirpath) if getattr(callback, "dirpath", None) else None)
        # the TrainingJob's directory first, as for ModelCheckpoint and the resume lookup
        return trainer.job_contract.checkpoint_dir_for(script_dir) or os.path.join(
            str(trainer.default_root_dir), "checkpoints")

    def _checkpoint_and_exit(self, trainer: "Trainer") -> None:
        self._pending = None  # the agreed exchange was the last collective of this kind
        name = signal.Signals(self.flag.signum).name if self.flag.signum else "a peer's signal"
        path = os.path.join(
            self._resolve_dirpath(trainer), f"preempted-epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt"
        )
        started = time.monotonic()
        # This runs inside on_train_batch_end, before the loop writes this step's metrics;
        # write them now or the step the checkpoint ends on is missing from the logs.
        trainer.flush_step_logs()
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            write_manifest(os.path.dirname(path), path, step=trainer.global_step, epoch=trainer.current_epoch)
            _remove_older_preempted(path)
            log.warning(
                "%s: saved %s in %.2f s; exiting with %d (%s)",
                name, path, time.monotonic() - started, exit_codes.CHECKPOINTED,
                exit_codes.describe(exit_codes.CHECKPOINTED),
            )
        raise SystemExit(exit_codes.CHECKPOINTED)
