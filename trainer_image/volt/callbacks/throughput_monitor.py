"""Lightning's ``callbacks.throughput_monitor`` path; the class lives in ``volt.callbacks.throughput``."""
from volt.callbacks.throughput import ThroughputMonitor

__all__ = ["ThroughputMonitor"]
