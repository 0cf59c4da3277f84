"""Lightning's ``callbacks.rich_model_summary`` path; the class lives in ``volt.callbacks.rich_ui``."""
from volt.callbacks.rich_ui import RichModelSummary

__all__ = ["RichModelSummary"]
