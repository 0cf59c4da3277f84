"""Lightning's public module paths exist under volt with the same names (a port changes only its imports).

Every path below is importable as ``volt.<path>`` and exposes the names listed. Against the installed
Lightning (``VOLT_LIGHTNING_PYTHON``) the test also enumerates each path's public names there: each must be
provided by volt, or be listed in ``NOT_PROVIDED`` with the reason (docs/engine.md, "Porting").
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

import volt

#: Lightning module paths (relative to ``lightning.pytorch``) that ports import public names from.
PATHS: List[str] = [
    "",
    "core", "core.module", "core.datamodule", "core.optimizer", "core.mixins", "core.mixins.hparams_mixin",
    "callbacks", "callbacks.callback", "callbacks.checkpoint", "callbacks.batch_size_finder",
    "callbacks.device_stats_monitor", "callbacks.early_stopping", "callbacks.finetuning",
    "callbacks.gradient_accumulation_scheduler", "callbacks.lambda_function", "callbacks.lr_finder",
    "callbacks.lr_monitor", "callbacks.model_checkpoint", "callbacks.model_summary",
    "callbacks.on_exception_checkpoint", "callbacks.prediction_writer", "callbacks.progress",
    "callbacks.progress.progress_bar", "callbacks.progress.tqdm_progress", "callbacks.progress.rich_progress",
    "callbacks.pruning", "callbacks.rich_model_summary", "callbacks.spike", "callbacks.stochastic_weight_avg",
    "callbacks.throughput_monitor", "callbacks.timer", "callbacks.weight_averaging",
    "loggers", "loggers.logger", "loggers.csv_logs", "loggers.tensorboard", "loggers.mlflow", "loggers.wandb",
    "loggers.comet",
    "strategies", "strategies.ddp", "strategies.single_device", "strategies.strategy",
    "plugins", "plugins.io", "plugins.precision",
    "profilers", "trainer", "trainer.trainer", "trainer.states", "tuner",
    "utilities", "utilities.types", "utilities.rank_zero", "utilities.exceptions", "utilities.combined_loader",
    "utilities.grads", "utilities.parsing", "utilities.enums", "utilities.parameter_tying", "utilities.data",
    "utilities.model_helpers", "utilities.seed",
    "demos", "demos.boring_classes",
    "cli",
]

#: Names Lightning imports into a path without listing them in ``__all__`` (ports use them).
EXTRA_NAMES: Dict[str, List[str]] = {
    "": ["Callback", "LightningDataModule", "LightningModule", "Trainer", "seed_everything"],
    "loggers.logger": ["rank_zero_experiment"],
    "utilities.exceptions": ["MisconfigurationException"],
    "utilities.rank_zero": [
        "LightningDeprecationWarning", "WarningCache", "rank_prefixed_message", "rank_zero_debug",
        "rank_zero_deprecation", "rank_zero_info", "rank_zero_only", "rank_zero_warn",
    ],
    "utilities.types": [
        "EVAL_DATALOADERS", "LRSchedulerPLType", "LRSchedulerTypeTuple", "LRSchedulerTypeUnion",
        "OptimizerLRScheduler", "STEP_OUTPUT", "TRAIN_DATALOADERS",
    ],
}

#: ``path:name`` (or ``path`` for a whole module) that volt leaves out, and why.
_HARDWARE = "strategies and plugins for hardware or sharding volt does not run (DDP and one device only)"
_PRECISION = "pass Precision(name, device) (volt.plugins.Precision) or Trainer(precision=...)"
_BAR = "volt draws its own bar and never needs tqdm or rich: their internals have no volt twin"
_INTERNAL = "a Lightning-internal helper, not part of what scripts import"
NOT_PROVIDED: Dict[str, str] = {
    "callbacks.early_stopping:EarlyStoppingReason": "volt's EarlyStopping keeps no stopping-reason record",
    "callbacks.progress.progress_bar:get_standard_metrics": _BAR,
    "callbacks.progress.tqdm_progress:Tqdm": _BAR,
    "callbacks.progress.tqdm_progress:convert_inf": _BAR,
    **{f"callbacks.progress.rich_progress:{n}": _BAR for n in (
        "BatchesProcessedColumn", "CustomBarColumn", "CustomInfiniteTask", "CustomProgress", "CustomTimeColumn",
        "MetricsTextColumn", "ProcessingSpeedColumn")},
    "loggers:LitLogger": "logs to the Lightning AI platform",
    "loggers.logger:merge_dicts": _INTERNAL,
    "loggers.csv_logs:ExperimentWriter": "CSVLogger's writer is private in volt",
    **{f"strategies:{n}": _HARDWARE for n in (
        "DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy", "ParallelStrategy")},
    **{f"plugins{sub}:{n}": _HARDWARE for sub, names in {
        "": ("AsyncCheckpointIO", "BitsandbytesPrecision", "DeepSpeedPrecision", "FSDPPrecision",
             "TransformerEnginePrecision", "XLACheckpointIO", "XLAPrecision"),
        ".io": ("AsyncCheckpointIO", "XLACheckpointIO"),
        ".precision": ("BitsandbytesPrecision", "DeepSpeedPrecision", "FSDPPrecision", "TransformerEnginePrecision",
                       "XLAPrecision"),
    }.items() for n in names},
    **{f"plugins{sub}:{n}": _PRECISION for sub in ("", ".precision")
       for n in ("DoublePrecision", "HalfPrecision", "MixedPrecision")},
    "plugins:LayerSync": "Trainer(sync_batchnorm=True) is the switch",
    "plugins:TorchSyncBatchNorm": "Trainer(sync_batchnorm=True) is the switch",
    "profilers:XLAProfiler": _HARDWARE,
    "utilities:disable_possible_user_warnings": "volt raises no PossibleUserWarning to silence",
    "utilities:is_shared_filesystem": "volt's checkpoints are written by rank 0 to the volume the TrainingJob mounts",
    "utilities.types:DistributedDataParallel": "a typing Protocol; annotate with torch's DistributedDataParallel",
    "utilities.exceptions:SIGTERMException": "on SIGTERM volt checkpoints and exits with SystemExit (docs/distributed.md)",
    **{f"utilities.parsing:{n}": _INTERNAL for n in (
        "clean_namespace", "collect_init_args", "get_init_args", "parse_class_init_keys", "save_hyperparameters")},
    "utilities.data:has_len_all_ranks": _INTERNAL,
    "utilities.model_helpers:get_torchvision_model": "needs torchvision, not a volt dependency",
    **{f"demos:{n}": "demos that download a text corpus" for n in (
        "LightningLSTM", "LightningTransformer", "SequenceSampler", "SimpleLSTM", "Transformer", "WikiText2")},
}


def _volt_module(path: str):
    return importlib.import_module("volt" + ("." + path if path else ""))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", PATHS)
def test_volt_has_the_path_and_its_names(path: str) -> None:
    module = _volt_module(path)
    for name in EXTRA_NAMES.get(path, []) + list(getattr(module, "__all__", [])):
        assert hasattr(module, name), f"volt.{path} lacks {name}"
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            # a re-export of where the code lives, never a second copy
            home = importlib.import_module(obj.__module__)
            assert getattr(home, obj.__name__, None) is obj or obj.__module__.startswith("volt.")


def test_utilities_is_the_bottom_layer() -> None:
    """volt.utilities imports nothing from volt but itself."""
    allowed = ("from volt.utilities", "import volt.utilities")
    for source in (Path(volt.__file__).parent / "utilities").glob("*.py"):
        for line in source.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("from volt", "import volt")):
                assert stripped.startswith(allowed), f"volt/utilities/{source.name} imports a higher layer: {stripped}"


def test_rank_zero_only_has_one_home() -> None:
    from volt.loggers import rank_zero_only as from_loggers
    from volt.loggers.base import rank_zero_only as from_base
    from volt.utilities import rank_zero_only
    from volt.utilities.rank_zero import rank_zero_only as from_rank_zero

    assert rank_zero_only is from_loggers is from_base is from_rank_zero


def _lightning_names() -> Dict[str, List[str]]:
    python = os.environ.get("VOLT_LIGHTNING_PYTHON")
    if not python:
        pytest.skip("VOLT_LIGHTNING_PYTHON is not set (make lightning-env)")
    script = Path(__file__).with_name("lightning_names_script.py")
    done = subprocess.run([python, str(script), json.dumps(PATHS), json.dumps(EXTRA_NAMES)],
                          capture_output=True, text=True, timeout=240, cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_every_lightning_name_is_provided_or_listed() -> None:
    lightning = _lightning_names()
    missing = []
    for path, names in lightning.items():
        if path in NOT_PROVIDED:
            continue
        module = _volt_module(path)
        missing += [f"{path}:{n}" for n in names if not hasattr(module, n) and f"{path}:{n}" not in NOT_PROVIDED]
    assert not missing, f"Lightning names missing under volt (provide them or list them in NOT_PROVIDED): {missing}"
    stale = []
    for key in NOT_PROVIDED:
        path, _, name = key.partition(":")
        assert path in lightning, key
        if name:
            assert name in lightning[path], f"{key} is not a Lightning name"
            if hasattr(_volt_module(path), name):
                stale.append(key)
    assert not stale, f"listed as not provided but volt has them: {stale}"


def test_top_level_exposes_lightnings_subpackages() -> None:
    """``import lightning.pytorch as pl`` then ``pl.loggers.CSVLogger`` / ``pl.callbacks.ModelCheckpoint``."""
    for name in ("callbacks", "core", "loggers", "plugins", "profilers", "strategies", "trainer", "tuner", "utilities"):
        assert inspect.ismodule(getattr(volt, name, None)), f"volt.{name} is not reachable after `import volt`"
