"""String enums (Lightning's ``utilities.enums``)."""
from __future__ import annotations

from enum import Enum
from typing import Any


class LightningEnum(str, Enum):
    """A str enum that compares equal to its value in any case (``GradClipAlgorithmType.NORM == "Norm"``)."""

    @classmethod
    def from_str(cls, value: str, source: str = "key") -> "LightningEnum":
        for member in cls:
            if (source in ("key", "any") and member.name.lower() == value.lower()) or (
                source in ("value", "any") and member.value.lower() == value.lower()
            ):
                return member
        raise ValueError(f"{value!r} is not a {cls.__name__}; use one of {[m.value for m in cls]}")

    def __eq__(self, other: Any) -> bool:
        other = other.value if isinstance(other, Enum) else str(other)
        return self.value.lower() == other.lower()

    def __hash__(self) -> int:
        return hash(self.value.lower())


class GradClipAlgorithmType(LightningEnum):
    """``Trainer(gradient_clip_algorithm=...)``'s values."""

    VALUE = "value"
    NORM = "norm"
