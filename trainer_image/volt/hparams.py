"""save_hyperparameters / hparams, shared by LightningModule and LightningDataModule."""
from __future__ import annotations

import copy
import inspect
from argparse import Namespace
from typing import Any, Dict, MutableMapping, Optional, Sequence, Union

from volt.utilities.parsing import AttributeDict


def _init_args_from_frame(frame: Any) -> Dict[str, Any]:
    """The arguments the ``__init__`` running in ``frame`` was called with."""
    code = frame.f_code
    local_vars = frame.f_locals
    names = list(code.co_varnames[: code.co_argcount + code.co_kwonlyargcount])
    out: Dict[str, Any] = {n: local_vars[n] for n in names[1:] if n in local_vars}  # skip self
    if code.co_flags & inspect.CO_VARKEYWORDS:
        kw_name = code.co_varnames[code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS)]
        out.update(local_vars.get(kw_name, {}))
    return out


class HyperparametersMixin:
    """Adds ``save_hyperparameters()``, ``hparams`` and ``hparams_initial``."""

    def save_hyperparameters(
        self,
        *args: Any,
        ignore: Optional[Union[Sequence[str], str]] = None,
        frame: Optional[Any] = None,
        logger: bool = True,
    ) -> None:
        """Store ``__init__`` arguments (all, the names in ``args``, or a dict/Namespace) in ``hparams``."""
        self._log_hyperparams = logger
        if len(args) == 1 and isinstance(args[0], (dict, Namespace, MutableMapping)):
            values = vars(args[0]) if isinstance(args[0], Namespace) else dict(args[0])
        else:
            if frame is None:
                frame = inspect.currentframe().f_back  # type: ignore[union-attr]
            init_args = _init_args_from_frame(frame)
            if args:
                unknown = [a for a in args if not isinstance(a, str) or a not in init_args]
                if unknown:
                    raise ValueError(
                        f"save_hyperparameters(*args): {unknown!r} are not arguments of __init__ "
                        f"(known: {sorted(init_args)})"
                    )
                values = {a: init_args[a] for a in args}
            else:
                values = init_args
        ignored = {ignore} if isinstance(ignore, str) else set(ignore or ())
        values = {k: v for k, v in values.items() if k not in ignored and not k.startswith("__")}
        hp = self.__dict__.get("_hparams")
        if hp is None:
            hp = AttributeDict()
            object.__setattr__(self, "_hparams", hp)
        hp.update(values)
        object.__setattr__(self, "_hparams_initial", copy.deepcopy(AttributeDict(hp)))

    @property
    def hparams(self) -> AttributeDict:
        hp = self.__dict__.get("_hparams")
        if hp is None:
            hp = AttributeDict()
            object.__setattr__(self, "_hparams", hp)
        return hp

    @property
    def hparams_initial(self) -> AttributeDict:
        return copy.deepcopy(self.__dict__.get("_hparams_initial") or AttributeDict())
