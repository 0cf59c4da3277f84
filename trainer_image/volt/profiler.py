"""Lightning 1.x's module name (``pytorch_lightning.profiler``): the same classes as :mod:`volt.profilers`."""
from volt.profilers import (AdvancedProfiler, PassThroughProfiler, Profiler, PyTorchProfiler,  # noqa: F401
                            SimpleProfiler)

__all__ = ["Profiler", "PassThroughProfiler", "SimpleProfiler", "AdvancedProfiler", "PyTorchProfiler"]
