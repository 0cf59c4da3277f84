"""Checkpoint: the base class of callbacks that save checkpoints (Lightning's ``callbacks.Checkpoint``).

It adds nothing to ``Callback``: it is a marker. The trainer treats every instance
of it as a checkpointing callback, as Lightning does: ``trainer.checkpoint_callbacks``,
no default ``ModelCheckpoint`` when one is passed, the ``enable_checkpointing=False``
check, and running after the other callbacks. ``ModelCheckpoint`` and
``OnExceptionCheckpoint`` derive from it; so can a user's own.
"""
from __future__ import annotations

from volt.callbacks.base import Callback


class Checkpoint(Callback):
    """Base class for checkpointing callbacks; subclass it for a custom one."""
