"""The Trainer and its loops."""
from volt.seed import seed_everything
from volt.trainer.trainer import Trainer

__all__ = ["Trainer", "seed_everything"]
