"""Lightning's ``callbacks.device_stats_monitor`` path; the class lives in ``volt.callbacks.device_stats``."""
from volt.callbacks.device_stats import DeviceStatsMonitor

__all__ = ["DeviceStatsMonitor"]
