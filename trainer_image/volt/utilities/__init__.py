"""Helpers with no dependency on the rest of volt (the bottom layer), by Lightning's names.

Submodules follow ``lightning.pytorch.utilities``: ``rank_zero``, ``types``, ``exceptions``,
``combined_loader``, ``grads``, ``parsing``, ``enums``, ``parameter_tying``, ``data``,
``model_helpers``, ``seed``, ``throughput``; ``apply_func`` holds the batch walkers. Nothing here imports a higher layer.
"""
from volt.utilities.apply_func import apply_to_collection, apply_to_tensors, move_data_to_device
from volt.utilities.combined_loader import CombinedLoader
from volt.utilities.data import extract_batch_size, infer_batch_size, loader_kwargs, suggested_max_num_workers
from volt.utilities.enums import GradClipAlgorithmType, LightningEnum
from volt.utilities.exceptions import MisconfigurationException
from volt.utilities.grads import grad_norm
from volt.utilities.model_helpers import is_overridden
from volt.utilities.parameter_tying import find_shared_parameters, set_shared_parameters
from volt.utilities.parsing import AttributeDict, is_picklable
from volt.utilities.rank_zero import rank_zero_deprecation, rank_zero_info, rank_zero_only, rank_zero_warn
from volt.utilities.throughput import measure_flops

__all__ = [
    "AttributeDict",
    "CombinedLoader",
    "GradClipAlgorithmType",
    "LightningEnum",
    "MisconfigurationException",
    "apply_to_collection",
    "apply_to_tensors",
    "extract_batch_size",
    "find_shared_parameters",
    "grad_norm",
    "infer_batch_size",
    "is_overridden",
    "is_picklable",
    "loader_kwargs",
    "measure_flops",
    "move_data_to_device",
    "rank_zero_deprecation",
    "rank_zero_info",
    "rank_zero_only",
    "rank_zero_warn",
    "set_shared_parameters",
    "suggested_max_num_workers",
]
