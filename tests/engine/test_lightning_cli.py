"""volt.cli.LightningCLI against Lightning's: one script (cli_diff_script.py), two engines, the same config.

jsonargparse is an optional extra (``volt[cli]``); the test venv (``make lightning-env``) has it, so both
engines run there (volt from this checkout, which never imports Lightning). Without jsonargparse volt.cli
still imports and says what to install.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import yaml

HERE = Path(__file__).parent
SCRIPT = HERE / "cli_diff_script.py"
TRAINER_IMAGE = HERE.parent.parent / "trainer_image"
LIGHTNING = os.environ.get("VOLT_LIGHTNING_PYTHON")


def _has_jsonargparse() -> bool:
    if not LIGHTNING:
        return False
    return subprocess.run([LIGHTNING, "-c", "import jsonargparse"], capture_output=True, timeout=60).returncode == 0


needs_lightning = pytest.mark.skipif(
    not _has_jsonargparse(),
    reason="needs VOLT_LIGHTNING_PYTHON (make lightning-env) with jsonargparse[signatures] installed in that venv",
)

CONFIG = """\
seed_everything: 42
trainer:
  max_epochs: 1
  limit_train_batches: 3
  limit_val_batches: 2
  accelerator: cpu
  devices: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: {root}
  callbacks:
    - class_path: EarlyStopping
      init_args:
        monitor: val_loss
        patience: 3
model:
  hidden: 6
data:
  batch_size: 4
optimizer:
  class_path: torch.optim.Adam
  init_args:
    lr: 0.01
lr_scheduler:
  class_path: torch.optim.lr_scheduler.StepLR
  init_args:
    step_size: 1
    gamma: 0.5
"""

#: Lightning 2.6.6 Trainer arguments volt does not take (its CLI cannot list them).
LIGHTNING_ONLY_TRAINER_ARGS = {"enable_autolog_hparams", "model_registry"}


def start(engine: str, tmp_path: Path, args: List[str]) -> Tuple[subprocess.Popen, Path]:
    out = tmp_path / f"{engine}-{len(list(tmp_path.glob(engine + '-*')))}.json"
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TRAINER_IMAGE)}
    if engine == "lightning":
        env.pop("PYTHONPATH")
    proc = subprocess.Popen([LIGHTNING, str(SCRIPT), engine, str(out), *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, out


def both(tmp_path: Path, args_for: Any) -> Dict[str, Tuple[str, Path]]:
    """Run both engines at once; ``args_for(engine)`` gives each its CLI arguments."""
    runs = {engine: start(engine, tmp_path, args_for(engine)) for engine in ("volt", "lightning")}
    done = {}
    for engine, (proc, out) in runs.items():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode == 0, f"{engine}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
        done[engine] = (stdout, out)
    return done


def write_config(tmp_path: Path, engine: str) -> Path:
    path = tmp_path / f"{engine}.yaml"
    path.write_text(CONFIG.format(root=tmp_path / f"root-{engine}"))
    return path


@needs_lightning
@pytest.mark.timeout(300)
def test_fit_and_validate_from_a_config_file_match(tmp_path: Path) -> None:
    """``fit --config file --trainer.max_epochs 2`` (a command-line override on top of the file): the classes
    built, the optimizer and scheduler from the config, the weights and metrics after the fit; the config file
    SaveConfigCallback wrote; ``validate`` from that saved file."""
    runs = both(tmp_path, lambda e: ["fit", "--config", str(write_config(tmp_path, e)), "--trainer.max_epochs", "2"])
    volt, lightning = (json.loads(runs[e][1].read_text()) for e in ("volt", "lightning"))
    # Lightning records its instantiator for load_from_checkpoint; volt does not (docs/engine.md)
    assert lightning["hparams"].pop("_instantiator") == "lightning.pytorch.cli.instantiate_module"
    for key in ("subcommand", "global_step", "max_epochs", "hparams", "batch_size", "optimizer", "callbacks", "seed"):
        assert volt[key] == lightning[key], key
    assert volt["lr"] == pytest.approx(lightning["lr"]) and volt["lr"] == [0.0025]  # StepLR stepped twice
    assert volt["callback_metrics"] == pytest.approx(lightning["callback_metrics"], rel=1e-5)
    for name, values in lightning["weights"].items():
        assert volt["weights"][name] == pytest.approx(values, rel=1e-5, abs=1e-6), name
    assert volt["global_step"] == 6 and volt["hparams"] == {"hidden": 6, "activation": "tanh"}

    saved = {e: yaml.safe_load((tmp_path / f"root-{e}" / "config.yaml").read_text()) for e in ("volt", "lightning")}
    assert saved["volt"]["trainer"]["max_epochs"] == 2 and saved["volt"]["seed_everything"] == 42
    compare_configs(saved["volt"], saved["lightning"])

    runs = both(tmp_path, lambda e: ["validate", "--config", str(tmp_path / f"root-{e}" / "config.yaml")])
    volt, lightning = (json.loads(runs[e][1].read_text()) for e in ("volt", "lightning"))
    assert volt["subcommand"] == "validate" and set(volt["callback_metrics"]) == {"val_loss"}
    assert volt["callback_metrics"] == pytest.approx(lightning["callback_metrics"], rel=1e-5)


@needs_lightning
@pytest.mark.timeout(300)
def test_print_config_matches(tmp_path: Path) -> None:
    runs = both(tmp_path, lambda e: ["fit", "--config", str(write_config(tmp_path, e)), "--model.activation", "relu",
                                     "--print_config"])
    volt, lightning = (yaml.safe_load(runs[e][0]) for e in ("volt", "lightning"))
    assert runs["volt"][0].startswith("# volt==")
    assert volt["model"] == {"hidden": 6, "activation": "relu"}
    compare_configs(volt, lightning)


def compare_configs(volt: Dict[str, Any], lightning: Dict[str, Any]) -> None:
    """Equal but for the engine's own names: volt's Trainer also takes the 1.x names, Lightning's takes two
    arguments volt lacks, and Lightning's fit() takes ``weights_only``."""
    assert lightning.pop("weights_only", None) is None
    volt_trainer, lightning_trainer = volt.pop("trainer"), lightning.pop("trainer")
    assert volt == lightning
    assert set(lightning_trainer) - set(volt_trainer) == LIGHTNING_ONLY_TRAINER_ARGS
    for key in set(lightning_trainer) - LIGHTNING_ONLY_TRAINER_ARGS:
        expected = lightning_trainer[key]
        if key == "callbacks":
            expected = [{**c, "class_path": c["class_path"].replace("lightning.pytorch.", "volt.")} for c in expected]
        if key == "default_root_dir":  # each engine writes under its own directory
            expected = expected.replace("root-lightning", "root-volt")
        assert volt_trainer[key] == expected, key


def test_without_jsonargparse_the_module_imports_and_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['jsonargparse'] = None\n"
        "from volt.cli import LightningCLI\n"
        "try:\n    LightningCLI(args=['fit'])\nexcept ModuleNotFoundError as err:\n    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(TRAINER_IMAGE)})
    assert done.returncode == 0, done.stderr
    assert "pip install 'volt[cli]'" in done.stdout
