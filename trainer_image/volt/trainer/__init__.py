"""The Trainer and its loops."""
from volt.trainer.trainer import Trainer

__all__ = ["Trainer"]
