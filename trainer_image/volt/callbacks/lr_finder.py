"""Lightning's ``callbacks.lr_finder`` path; the class lives in ``volt.callbacks.finders``."""
from volt.callbacks.finders import LearningRateFinder

__all__ = ["LearningRateFinder"]
