"""Fixtures for engine tests. The tiny models and data they use live in tiny_models.py."""
from __future__ import annotations

import pytest
import torch

from tiny_models import TinyModel


@pytest.fixture(autouse=True)
def _no_operator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not pick up a TrainingJob's settings or launcher variables from the environment."""
    for name in ("VOLT_TRAINER", "VOLT_RESUME", "VOLT_METRICS_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny() -> TinyModel:
    torch.manual_seed(0)
    return TinyModel()
