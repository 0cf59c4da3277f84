"""One process, one device (CPU, one CUDA GPU or MPS)."""
from __future__ import annotations

from typing import Any, Union

import torch

from volt.strategies.strategy import Strategy


class SingleDeviceStrategy(Strategy):
    """Train on ``device`` in this process; every collective is the identity."""

    def __init__(self, device: Union[str, torch.device] = "cpu") -> None:
        super().__init__()
        self._device = torch.device(device)

    @property
    def root_device(self) -> torch.device:
        return self._device

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        # The hot path: no wrapper to route through on one device.
        return self._lightning_module.training_step(*args, **kwargs)  # type: ignore[union-attr]

    def setup_environment(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)

    def __repr__(self) -> str:
        return f"SingleDeviceStrategy(device={str(self._device)!r})"
