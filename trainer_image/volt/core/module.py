"""Lightning's ``core.module`` path; the class lives in ``volt.module``."""
from volt.module import LightningModule

__all__ = ["LightningModule"]
