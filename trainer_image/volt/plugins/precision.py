"""Lightning's ``plugins.precision`` path; the class lives in ``volt.precision``."""
from volt.precision import Precision

__all__ = ["Precision"]
