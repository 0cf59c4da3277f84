"""Lightning's ``callbacks.progress.rich_progress`` path; the classes live in ``volt.callbacks.rich_ui``."""
from volt.callbacks.rich_ui import RichProgressBar, RichProgressBarTheme

__all__ = ["RichProgressBar", "RichProgressBarTheme"]
