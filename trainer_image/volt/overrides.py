"""Settings a TrainingJob imposes on the script: ``VOLT_TRAINER``, ``VOLT_RESUME``, ``VOLT_CHECKPOINT_DIR``.

The operator passes the TrainingJob's ``spec.trainer`` as ``VOLT_TRAINER``, a JSON
object of snake_case Trainer arguments. They win over what the script passes,
because the manifest is what the user changes between runs; each override is
logged so nobody wonders why ``max_epochs=10`` in the code trained for 3.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Mapping, Optional

log = logging.getLogger(__name__)

ENV_TRAINER = "VOLT_TRAINER"
ENV_RESUME = "VOLT_RESUME"
ENV_CHECKPOINT_DIR = "VOLT_CHECKPOINT_DIR"

_UNSET = object()


def trainer_settings(env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Parse ``VOLT_TRAINER``; an empty or missing variable means no settings."""
    env = os.environ if env is None else env
    raw = env.get(ENV_TRAINER, "").strip()
    if not raw:
        return {}
    try:
        settings = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{ENV_TRAINER} is not valid JSON ({err.msg} at position {err.pos}): {raw[:200]!r}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{ENV_TRAINER} must be a JSON object of Trainer arguments, got {type(settings).__name__}")
    for key in settings:
        if not key.isidentifier() or key != key.lower():
            raise ValueError(
                f"{ENV_TRAINER} key {key!r} is not a snake_case Trainer argument name (e.g. max_epochs, num_nodes)"
            )
    return settings


def apply_env_overrides(kwargs: Mapping[str, Any], env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """Return ``kwargs`` with ``VOLT_TRAINER``'s values applied, logging each change.

    Unknown argument names are left for the Trainer's own validation, which
    names them; this function does not know the Trainer's signature.
    """
    merged = dict(kwargs)
    for key, value in trainer_settings(env).items():
        previous = merged.get(key, _UNSET)
        if previous is _UNSET:
            log.info("%s sets Trainer(%s=%r)", ENV_TRAINER, key, value)
        elif previous != value:
            log.warning("%s overrides Trainer(%s=%r) with %r", ENV_TRAINER, key, previous, value)
        merged[key] = value
    return merged


def resume_ckpt_path(ckpt_path: Optional[str], env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Apply the TrainingJob's resume policy (``VOLT_RESUME``) to ``fit(ckpt_path=...)``.

    ``auto``: resume from the latest checkpoint (``"last"``; nothing saved yet
    means a fresh start). ``never``: start fresh. Anything else: a checkpoint path.
    Without ``VOLT_RESUME`` the script's value stands.
    """
    env = os.environ if env is None else env
    policy = env.get(ENV_RESUME, "").strip()
    if not policy:
        return ckpt_path
    lowered = policy.lower()
    if lowered == "auto":
        wanted: Optional[str] = "last"
    elif lowered == "never":
        wanted = None
    else:
        wanted = policy
    if wanted != ckpt_path:
        log.warning("%s=%s overrides fit(ckpt_path=%r) with %r", ENV_RESUME, policy, ckpt_path, wanted)
    return wanted


def checkpoint_dir(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """The job's checkpoint directory (``VOLT_CHECKPOINT_DIR``), or None."""
    env = os.environ if env is None else env
    return env.get(ENV_CHECKPOINT_DIR) or None
