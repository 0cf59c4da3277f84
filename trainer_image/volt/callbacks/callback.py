"""Lightning's ``callbacks.callback`` path; the class lives in ``volt.callbacks.base``."""
from volt.callbacks.base import Callback

__all__ = ["Callback"]
