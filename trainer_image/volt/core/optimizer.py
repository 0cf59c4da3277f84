"""Lightning's ``core.optimizer`` path; the wrapper lives in ``volt.trainer.optimizers``."""
from volt.trainer.optimizers import LightningOptimizer

__all__ = ["LightningOptimizer"]
