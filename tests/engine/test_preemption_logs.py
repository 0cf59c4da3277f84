"""A SIGTERM checkpoint ends the run inside on_train_batch_end: that step's metrics are still logged."""
from __future__ import annotations

import os
import signal
from typing import Any, Dict, List, Optional

import pytest
from tiny_models import TinyModel, loader

import volt
from volt import exit_codes
from volt.loggers import Logger
from volt.signals import CHECK_INTERVAL_S, MAX_CHECK_EVERY, PreemptionCallback, next_check_every


class RecordingLogger(Logger):
    """Keeps every (step, metrics) it is given: a real Logger, written to memory."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: List[int] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: Dict[str, float], step: Optional[int] = None) -> None:
        if "train_loss" in metrics and step is not None:
            self.steps.append(step)


class SigtermAt(volt.Callback):
    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == self.batch_idx:
            os.kill(os.getpid(), signal.SIGTERM)  # the PreemptionCallback's handler only sets its flag


@pytest.mark.timeout(120)
def test_the_step_a_sigterm_checkpoint_ends_on_is_logged(tmp_path: Any) -> None:
    logger = RecordingLogger()
    # The callback's watchdog ends the process (os._exit) once the grace period after the
    # signal is over, whatever happened to the SystemExit: here that process is pytest's,
    # so the grace period outlasts the test session.
    preemption = PreemptionCallback(grace_period=10**7)
    trainer = volt.Trainer(max_epochs=1, log_every_n_steps=1, logger=logger, callbacks=[SigtermAt(5), preemption],
                           default_root_dir=str(tmp_path), enable_progress_bar=False, enable_model_summary=False)
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exited:
        trainer.fit(TinyModel(), loader(n=64, batch_size=4))
    assert exited.value.code == exit_codes.CHECKPOINTED
    assert trainer.global_step == 6
    # Steps 0..5: the sixth (batch 5, logged as step 5) ended the run and is there too.
    assert logger.steps == list(range(6))
    assert list(tmp_path.rglob("preempted-epoch=0-step=6.ckpt")), "no SIGTERM checkpoint was written"
    assert signal.getsignal(signal.SIGTERM) == handler_before, "the run left its SIGTERM handler installed"


def test_the_default_cadence_agrees_about_once_a_second_whatever_the_step_time():
    assert CHECK_INTERVAL_S == 1.0
    assert next_check_every(2.0) == 1  # slow steps: every step
    assert next_check_every(0.3) == 3
    assert next_check_every(0.001) == MAX_CHECK_EVERY == 1000  # fast steps: bounded
    assert next_check_every(0.0) == MAX_CHECK_EVERY
    assert PreemptionCallback().check_every_n_steps is None  # adaptive unless set
    assert PreemptionCallback(check_every_n_steps=4).check_every_n_steps == 4
