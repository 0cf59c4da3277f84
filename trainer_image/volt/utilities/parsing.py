"""Hyper-parameter containers, checks and lookups (Lightning's ``utilities.parsing``)."""
from __future__ import annotations

import pickle
from typing import Any, List, Optional


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


# --- attributes that may live on the model, its hparams, or the datamodule (the tuner sets them) ----

def _hparams_has(obj: Any, name: str) -> bool:
    hparams = getattr(obj, "hparams", None)
    if hparams is None:
        return False
    if isinstance(hparams, dict):
        return name in hparams
    return hasattr(hparams, name)


def _owners(model: Any, name: str, datamodule: Optional[Any]) -> List[Any]:
    """Where ``name`` is defined: model attribute, model.hparams, datamodule, datamodule.hparams."""
    found: List[Any] = []
    for obj in (model, datamodule):
        if obj is None:
            continue
        if name in vars(obj) or hasattr(type(obj), name):
            found.append(obj)
        if _hparams_has(obj, name):
            found.append(obj.hparams)
    return found


def lightning_hasattr(model: Any, name: str, datamodule: Optional[Any] = None) -> bool:
    return bool(_owners(model, name, datamodule))


def lightning_getattr(model: Any, name: str, datamodule: Optional[Any] = None) -> Any:
    owners = _owners(model, name, datamodule)
    if not owners:
        raise AttributeError(f"{name!r} is neither an attribute of the model, its hparams, nor the datamodule")
    owner = owners[0]
    return owner[name] if isinstance(owner, dict) else getattr(owner, name)


def lightning_setattr(model: Any, name: str, value: Any, datamodule: Optional[Any] = None) -> None:
    """Set ``name`` everywhere it is defined, so the next fit sees it whichever place it reads."""
    owners = _owners(model, name, datamodule)
    if not owners:
        raise AttributeError(f"{name!r} is neither an attribute of the model, its hparams, nor the datamodule")
    for owner in owners:
        if isinstance(owner, dict):
            owner[name] = value
        else:
            setattr(owner, name, value)
