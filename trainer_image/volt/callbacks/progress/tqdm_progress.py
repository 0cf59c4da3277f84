"""Lightning's ``callbacks.progress.tqdm_progress`` path: volt's own bar, which never needs tqdm."""
from volt.callbacks.progress.progress_bar import TQDMProgressBar

__all__ = ["TQDMProgressBar"]
