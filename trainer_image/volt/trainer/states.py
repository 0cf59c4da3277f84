"""Lightning's ``trainer.states`` names. ``trainer.state`` is a ``TrainerState`` whose ``stage`` and
``status`` are plain strings; the enums compare equal to them (``trainer.state.stage == RunningStage.TRAINING``)."""
from dataclasses import dataclass
from typing import Optional

from volt.utilities.enums import LightningEnum


class TrainerFn:
    """The entry point running: the values of ``trainer.state.fn``."""

    FITTING = "fit"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


@dataclass
class TrainerState:
    """What the trainer is doing: ``fn`` (the entry point), ``stage`` (the loop), ``status``."""

    fn: Optional[str] = None
    stage: Optional[str] = None  # train | sanity_check | validate | test | predict
    status: str = "initializing"  # running | finished | interrupted

    @property
    def finished(self) -> bool:
        return self.status == "finished"


class RunningStage(LightningEnum):
    """The values of ``trainer.state.stage``."""

    TRAINING = "train"
    SANITY_CHECKING = "sanity_check"
    VALIDATING = "validate"
    TESTING = "test"
    PREDICTING = "predict"


class TrainerStatus(LightningEnum):
    """The values of ``trainer.state.status``."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"


__all__ = ["RunningStage", "TrainerFn", "TrainerState", "TrainerStatus"]
