"""Hyper-parameter containers and checks (Lightning's ``utilities.parsing``)."""
from __future__ import annotations

import pickle
from typing import Any


class AttributeDict(dict):
    """A dict whose keys are also attributes (``hparams.lr``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"no hyperparameter named {key!r}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def is_picklable(obj: object) -> bool:
    """Whether ``obj`` survives ``pickle.dumps`` (what a checkpoint's hyper-parameters must do)."""
    try:
        pickle.dumps(obj)
    except (pickle.PickleError, AttributeError, RuntimeError, TypeError):
        return False
    return True
