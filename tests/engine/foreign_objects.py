"""An object a checkpoint must not bring back: ``from foreign_objects import Foreign``.

Full unpickling rebuilds it by calling ``leave_mark``, which writes a file, so a test
sees whether a load ran foreign code; a weights-only load refuses it first.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def leave_mark(path: str) -> str:
    """What a malicious checkpoint would run on load: here, it leaves a file behind."""
    Path(path).write_text("ran")
    return "payload"


class Foreign:
    """An object that only full unpickling rebuilds, by calling ``leave_mark``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (leave_mark, (self.marker,))
