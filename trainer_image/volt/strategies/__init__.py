"""Strategies: where the model runs and how processes communicate."""
from volt.strategies.single import SingleDeviceStrategy
from volt.strategies.strategy import Strategy

__all__ = ["Strategy", "SingleDeviceStrategy", "DDPStrategy"]


def __getattr__(name: str):
    # DDP is imported on first use: it pulls in torch.distributed machinery that a
    # single-device run never needs.
    if name == "DDPStrategy":
        from volt.strategies.ddp import DDPStrategy

        return DDPStrategy
    raise AttributeError(f"module 'volt.strategies' has no attribute {name!r}")
