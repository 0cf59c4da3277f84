"""Lightning's ``strategies.single_device`` path; the class lives in ``volt.strategies.single``."""
from volt.strategies.single import SingleDeviceStrategy

__all__ = ["SingleDeviceStrategy"]
