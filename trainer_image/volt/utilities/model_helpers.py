"""Whether a subclass overrides a hook (the Trainer dispatches only overridden hooks)."""
from __future__ import annotations

from typing import Any


def is_overridden(name: str, obj: Any, base: type) -> bool:
    """True when ``type(obj)`` defines ``name`` differently from ``base``."""
    impl = getattr(type(obj), name, None)
    return impl is not None and impl is not getattr(base, name, None)
