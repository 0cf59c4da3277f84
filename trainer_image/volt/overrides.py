"""Apply a TrainingJob's Trainer settings (``VOLT_TRAINER``) to the script's Trainer arguments.

The settings win over what the script passes, because the manifest is what the
user changes between runs; each change is logged once so nobody wonders why
``max_epochs=10`` in the code trained for 3.

Where the processes run is one decision made of several arguments, and a script
may spell it with Lightning 1.x names (``gpus=2``, ``num_processes=2``,
``accelerator='ddp_cpu'``, ``distributed_backend='ddp'``, ``tpu_cores=8``) or
2.x ones (``accelerator``, ``devices``, ``strategy``). When the TrainingJob
places the job (it names any of ``PLACEMENT``), the script's whole placement is
replaced, whatever names it used: mixing the job's ``devices=2`` with the
script's ``gpus=2`` would only make a "both given" error.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping

from volt.contract import ENV_TRAINER

log = logging.getLogger(__name__)

#: Trainer arguments (1.x and 2.x names) that together say where the processes run and how they talk.
PLACEMENT = (
    "accelerator", "strategy", "devices", "gpus", "num_processes", "tpu_cores", "ipus", "distributed_backend",
    "auto_select_gpus",
)

_UNSET = object()


def _is_ddp_name(name: Any) -> bool:
    return isinstance(name, str) and (name.lower().startswith("ddp") or name.lower() == "dp")


def _keeps_strategy_instance(script: Any, job: Any) -> bool:
    """A configured strategy object (e.g. ``DDPStrategy(find_unused_parameters=True)``) is how the
    script wants DDP run, not where: it stays when the TrainingJob asks for DDP or names no strategy;
    the Trainer then gives it the job's accelerator, devices and nodes."""
    return not isinstance(script, str) and hasattr(script, "_configure") and (job is None or _is_ddp_name(job))


def _without_strategy_plugins(plugins: Any) -> Any:
    """``plugins`` minus 1.x strategy names (``plugins='ddp_sharded'``); other plugins stay."""
    if isinstance(plugins, str):
        return None
    if isinstance(plugins, (list, tuple)):
        return [p for p in plugins if not isinstance(p, str)]
    return plugins


def apply_trainer_settings(kwargs: Mapping[str, Any], settings: Mapping[str, Any]) -> Dict[str, Any]:
    """Return ``kwargs`` (the script's explicit Trainer arguments) with the TrainingJob's ``settings``
    applied, logging each change once.

    Unknown argument names are left for the Trainer's own validation, which names them.
    """
    merged = dict(kwargs)
    settings = dict(settings)
    if any(key in settings for key in PLACEMENT):
        replaced: List[str] = []
        for key in PLACEMENT:
            if key not in merged or key in settings and settings[key] == merged[key]:
                continue
            if key == "strategy" and _keeps_strategy_instance(merged[key], settings.get("strategy")):
                log.info("%s keeps the script's %s and runs it with the TrainingJob's devices",
                         ENV_TRAINER, type(merged[key]).__name__)
                settings.pop("strategy", None)
                continue
            replaced.append(f"{key}={merged.pop(key)!r}")
        if "plugins" in merged and "strategy" in settings:
            kept = _without_strategy_plugins(merged["plugins"])
            if kept != merged["plugins"]:
                replaced.append(f"plugins={merged['plugins']!r}")
                merged["plugins"] = kept
        if replaced:
            placement = {key: settings[key] for key in PLACEMENT if key in settings}
            log.warning("%s replaces the script's Trainer(%s) with the TrainingJob's Trainer(%s)", ENV_TRAINER,
                        ", ".join(replaced), ", ".join(f"{k}={v!r}" for k, v in placement.items()))
            merged.update(placement)  # named in the line above: not logged again below
    for key, value in settings.items():
        previous = merged.get(key, _UNSET)
        if previous is _UNSET:
            log.info("%s sets Trainer(%s=%r)", ENV_TRAINER, key, value)
        elif previous != value:
            log.warning("%s overrides Trainer(%s=%r) with %r", ENV_TRAINER, key, previous, value)
        merged[key] = value
    return merged
