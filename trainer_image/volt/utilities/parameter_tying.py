"""Parameters shared between layers (Lightning's ``utilities.parameter_tying``)."""
from __future__ import annotations

from typing import Dict, List

from torch import nn


def find_shared_parameters(module: nn.Module) -> List[List[str]]:
    """Groups of parameter names that refer to the same tensor (only groups of two or more)."""
    names_by_param: Dict[int, List[str]] = {}
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for name, param in mod.named_parameters(recurse=False, remove_duplicate=False):
            full = f"{mod_name}.{name}" if mod_name else name
            names_by_param.setdefault(id(param), [])
            if full not in names_by_param[id(param)]:
                names_by_param[id(param)].append(full)
    return [names for names in names_by_param.values() if len(names) > 1]


def set_shared_parameters(module: nn.Module, shared_params: List[List[str]]) -> nn.Module:
    """Make every name of each group point at the group's first parameter again (after a move that
    untied them)."""
    for names in shared_params:
        source = module.get_parameter(names[0])
        for name in names[1:]:
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            setattr(owner, attr, source)
    return module
