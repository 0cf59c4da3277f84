"""Lightning's ``trainer.states`` path; the classes live in ``volt.trainer.trainer``."""
from volt.trainer.trainer import TrainerFn, TrainerState

__all__ = ["TrainerFn", "TrainerState"]
