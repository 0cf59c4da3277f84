"""Lightning's ``trainer.states`` names. ``TrainerFn`` and ``TrainerState`` live in ``volt.trainer.trainer``;
``trainer.state.stage``/``status`` are plain strings there, and these enums compare equal to them
(``trainer.state.stage == RunningStage.TRAINING``)."""
from volt.trainer.trainer import TrainerFn, TrainerState
from volt.utilities.enums import LightningEnum


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
