"""Progress bars (Lightning's ``callbacks.progress`` package): volt's bar is in ``progress_bar``."""
from volt.callbacks.progress.progress_bar import ProgressBar, ProgressBarBase, TQDMProgressBar

__all__ = ["ProgressBar", "ProgressBarBase", "TQDMProgressBar"]
