"""Gradient norms per parameter, for logging (Lightning's ``utilities.grad_norm``)."""
from __future__ import annotations

from typing import Dict, Union

import torch
from torch.nn import Module


def grad_norm(module: Module, norm_type: Union[float, int, str], group_separator: str = "/") -> Dict[str, torch.Tensor]:
    """The ``norm_type``-norm of each parameter's gradient, keyed ``grad_{p}_norm/{name}``, and of all
    gradients together as one vector (``grad_{p}_norm_total``). Parameters without a gradient are left
    out. The values stay tensors on the gradients' device: nothing is copied to the host here."""
    p = float(norm_type)
    if p <= 0:
        raise ValueError(f"grad_norm: `norm_type` must be a positive number or 'inf', got {norm_type!r}")
    norms = {
        f"grad_{p}_norm{group_separator}{name}": param.grad.detach().norm(p)
        for name, param in module.named_parameters()
        if param.grad is not None
    }
    if norms:
        norms[f"grad_{p}_norm_total"] = torch.stack(list(norms.values())).norm(p)
    return norms
