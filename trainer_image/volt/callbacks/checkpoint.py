"""Lightning's ``callbacks.checkpoint`` path; the class lives in ``volt.callbacks.checkpoint_base``."""
from volt.callbacks.checkpoint_base import Checkpoint

__all__ = ["Checkpoint"]
