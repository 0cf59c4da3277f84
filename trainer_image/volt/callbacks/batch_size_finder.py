"""Lightning's ``callbacks.batch_size_finder`` path; the class lives in ``volt.callbacks.finders``."""
from volt.callbacks.finders import BatchSizeFinder

__all__ = ["BatchSizeFinder"]
