"""Exceptions a port catches by Lightning's names."""
from __future__ import annotations


class MisconfigurationException(ValueError):
    """The Trainer, module or data is set up in a way that cannot run (Lightning's name).

    A ValueError, so code written against volt's earlier ValueErrors still catches it.
    """

