"""What the experiment-tracker loggers (MLflow, W&B, Comet) share: which checkpoints to upload, the
ModelCheckpoint settings recorded with them, and comparing a client library's version."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Tuple

#: The ModelCheckpoint settings stored next to an uploaded checkpoint (Lightning's metadata keys).
CHECKPOINT_SETTINGS = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only", "_every_n_train_steps")


def version_tuple(version: str) -> Tuple[int, ...]:
    """``"2.8.0rc1"`` -> ``(2, 8, 0)``: enough to compare against a minimum version."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = re.match(r"\d+", piece)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def checkpoints_to_log(checkpoint_callback: Any, logged: Mapping[str, float]) -> List[Tuple[float, str, Any]]:
    """``(mtime, path, score)`` of the callback's checkpoints not uploaded yet or rewritten since, oldest first.

    The candidates are its last, best and top-k files that still exist on disk.
    """
    scores: Dict[str, Any] = {}
    if getattr(checkpoint_callback, "last_model_path", "") and hasattr(checkpoint_callback, "current_score"):
        scores[checkpoint_callback.last_model_path] = checkpoint_callback.current_score
    if getattr(checkpoint_callback, "best_model_path", "") and hasattr(checkpoint_callback, "best_model_score"):
        scores[checkpoint_callback.best_model_path] = checkpoint_callback.best_model_score
    scores.update(getattr(checkpoint_callback, "best_k_models", None) or {})
    found = []
    for path, score in scores.items():
        if not os.path.isfile(path):
            continue
        mtime = os.stat(path).st_mtime
        if path not in logged or logged[path] < mtime:
            found.append((mtime, path, score))
    return sorted(found, key=lambda item: (item[0], item[1]))


def checkpoint_settings(checkpoint_callback: Any) -> Dict[str, Any]:
    return {k: getattr(checkpoint_callback, k) for k in CHECKPOINT_SETTINGS if hasattr(checkpoint_callback, k)}
