"""Lightning's ``core.optimizer`` path; the wrapper lives in ``volt.trainer.optimizers``."""
from volt.trainer.optimizers import LightningOptimizer, do_nothing_closure

__all__ = ["LightningOptimizer", "do_nothing_closure"]
