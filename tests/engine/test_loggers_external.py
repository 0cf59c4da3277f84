"""MLFlowLogger, WandbLogger and CometLogger, exercised for real and offline.

The client libraries are not volt dependencies: they live in the Lightning test venv
(``make lightning-env``, ``VOLT_LIGHTNING_PYTHON``). ``loggers_external_script.py`` runs there
twice at once, once per engine: it trains a small model with each logger and reads back what
MLflow (file store), W&B (the offline run's ``.wandb`` file) and Comet (the offline archive)
recorded. The tests check volt's records against what was logged (a CSVLogger beside the
logger, the hparams, the checkpoint files) and against Lightning 2.6.6's records of the same
run. In volt's own venv (no client libraries) they check the errors that name the package.
"""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

SCRIPT = Path(__file__).with_name("loggers_external_script.py")
ENV_VAR = "VOLT_LIGHTNING_PYTHON"
LIBRARIES = ("mlflow", "wandb", "comet_ml")
pytestmark = pytest.mark.timeout(180)

Results = Dict[str, Dict[str, Any]]


# --------------------------------------------------------------------------------------------
# without the client libraries (volt's own venv)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module, cls, package", [
    ("volt.loggers.mlflow", "MLFlowLogger", "mlflow"),
    ("volt.loggers.wandb", "WandbLogger", "wandb"),
    ("volt.loggers.comet", "CometLogger", "comet-ml"),
])
def test_missing_library_names_the_package(monkeypatch: pytest.MonkeyPatch, module: str, cls: str,
                                           package: str) -> None:
    import importlib

    for name in LIBRARIES:  # absent whatever this venv holds: None in sys.modules hides a package
        monkeypatch.setitem(sys.modules, name, None)
    logger_cls = getattr(importlib.import_module(module), cls)
    with pytest.raises(ModuleNotFoundError, match=f"pip install {package}"):
        logger_cls()


def test_loggers_import_without_their_libraries() -> None:
    code = ("import sys; import volt.loggers.mlflow, volt.loggers.wandb, volt.loggers.comet; "
            f"print([m for m in {LIBRARIES!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": _pythonpath()})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# the two runs
# --------------------------------------------------------------------------------------------
def _pythonpath() -> str:
    trainer_image = str(Path(__file__).resolve().parents[2] / "trainer_image")
    return os.pathsep.join([trainer_image] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def _offline_env(home: Path) -> Dict[str, str]:
    """Offline modes and no telemetry for all three libraries; their caches under ``home``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "WANDB_", "COMET_")) and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update({
        "PYTHONPATH": _pythonpath(), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "HOME": str(home),
        "MLFLOW_ALLOW_FILE_STORE": "true",  # mlflow 3.x refuses the file store unless asked
        "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true", "WANDB_X_DISABLE_STATS": "true", "WANDB_X_DISABLE_MACHINE_INFO": "true",
        "WANDB_DATA_DIR": str(home / "wandb-data"), "WANDB_CACHE_DIR": str(home / "wandb-cache"),
        "WANDB_CONFIG_DIR": str(home / "wandb-config"),
        "COMET_START_ONLINE": "false", "COMET_DISABLE_AUTO_LOGGING": "1", "COMET_ERROR_TRACKING_ENABLE": "false",
        "COMET_DISABLE_ANNOUNCEMENT": "true", "COMET_OFFLINE_DIRECTORY": str(home / "comet-default"),
    })
    return env


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    python = os.environ.get(ENV_VAR)
    if not python:
        pytest.skip(f"{ENV_VAR} is not set: run `make lightning-env` and set {ENV_VAR} to its python "
                    "(`make test` and `make test-engine` do both)")
    missing = subprocess.run(
        [python, "-c", f"import importlib.util as u; print([m for m in {LIBRARIES!r} if u.find_spec(m) is None])"],
        capture_output=True, text=True, timeout=60)
    if missing.returncode != 0 or missing.stdout.strip() != "[]":
        pytest.fail(f"{ENV_VAR}={python} lacks client libraries {missing.stdout.strip()}{missing.stderr[-500:]}: "
                    "install wandb, mlflow-skinny and comet_ml there (`make lightning-env`)")
    out = tmp_path_factory.mktemp("loggers-external")
    env = _offline_env(out)
    procs = {engine: subprocess.Popen([python, str(SCRIPT), engine, str(out / f"{engine}.json")], env=env, cwd=out,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for engine in ("volt", "lightning")}
    loaded: Results = {}
    try:
        for engine, proc in procs.items():
            output, _ = proc.communicate(timeout=150)
            assert proc.returncode == 0, f"the {engine} run failed:\n{output[-4000:]}"
            loaded[engine] = json.loads((out / f"{engine}.json").read_text())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    return loaded


def scenario(results: Results, name: str) -> Tuple[Any, Any]:
    """(volt, Lightning) results of one scenario, copies a test may edit; fails if one raised."""
    for engine in ("volt", "lightning"):
        if "error" in results[engine][name]:
            pytest.fail(f"{name} failed under {engine}: {results[engine][name]['traceback']}")
    return copy.deepcopy(results["volt"][name]), copy.deepcopy(results["lightning"][name])


def assert_close(volt: Any, lightning: Any, path: str = "") -> None:
    """Equal structure and values; floats within a tight tolerance (same model, same seeds, same ops)."""
    if isinstance(lightning, dict):
        assert isinstance(volt, dict) and sorted(volt) == sorted(lightning), (
            f"{path}: keys differ: volt only {sorted(set(volt) - set(lightning))}, "
            f"Lightning only {sorted(set(lightning) - set(volt))}")
        for key in lightning:
            assert_close(volt[key], lightning[key], f"{path}/{key}")
    elif isinstance(lightning, list):
        assert isinstance(volt, list) and len(volt) == len(lightning), f"{path}: {volt!r} != {lightning!r}"
        for i, (a, b) in enumerate(zip(volt, lightning)):
            assert_close(a, b, f"{path}[{i}]")
    elif isinstance(lightning, float) and isinstance(volt, (int, float)) and not isinstance(volt, bool):
        assert math.isclose(volt, lightning, rel_tol=1e-5, abs_tol=1e-6), f"{path}: volt {volt} != Lightning {lightning}"
    else:
        assert volt == lightning, f"{path}: volt {volt!r} != Lightning {lightning!r}"


def csv_series(rows: List[Dict[str, float]], prefix: str = "") -> Dict[str, List[List[float]]]:
    """{metric: [[step, value], ...]} of what the trainer sent to the loggers (the CSVLogger's rows)."""
    series: Dict[str, List[List[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step":
                series.setdefault(prefix + key, []).append([row["step"], value])
    return series


def test_volt_logger_modules_import_no_client_library(results: Results) -> None:
    volt, _ = scenario(results, "imports")
    assert volt["imported_at_start"] == {name: False for name in LIBRARIES}


# --------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------
def test_mlflow_store_holds_what_was_logged(results: Results) -> None:
    volt, _ = scenario(results, "mlflow")
    store, logged = volt["store"], volt["logged"]
    series = csv_series(logged["csv"])
    assert sorted(store["metrics"]) == sorted(series) == ["epoch", "train_loss_epoch", "train_loss_step", "val_loss"]
    for key, points in series.items():
        assert_close(store["metrics"][key], points, key)
    assert [step for step, _ in store["metrics"]["train_loss_step"]] == [1, 3, 5, 7]
    assert store["params"] == {"lr": "0.05", "layers/hidden": "8", "layers/act": "relu", "name": "tiny"}
    assert store["status"] == "FINISHED"
    assert store["tags"]["mlflow.runName"] == "run-a" and store["tags"]["team"] == "ml"
    # log_model=True: each kept checkpoint once, at the end, with its metadata and aliases.
    assert logged["checkpoint_dir"] == "mlruns/{name}/{version}/checkpoints"
    for filename, sha in logged["checkpoints"].items():
        stem = filename[:-len(".ckpt")]
        assert store["artifacts"][f"{stem}/{filename}"] == sha
        aliases = "['latest', 'best']" if filename == logged["best"] else "['latest']"
        assert store["artifacts"][f"{stem}/aliases.txt"] == aliases
        assert f"original_filename: {filename}" in store["artifacts"][f"{stem}/metadata.yaml"]
    assert len(store["artifacts"]) == 3 * len(logged["checkpoints"])
    assert volt["properties"] == {"name_is_experiment_id": True, "version_is_run_id": True, "save_dir": "mlruns",
                                  "log_dir": None, "unpickled_version_kept": True}


def test_mlflow_matches_lightning(results: Results) -> None:
    volt, lightning = scenario(results, "mlflow")
    assert_close(volt["store"]["metrics"], lightning["store"]["metrics"])
    for key in ("params", "status", "tags"):
        assert volt["store"][key] == lightning["store"][key], key
    assert sorted(volt["store"]["artifacts"]) == sorted(lightning["store"]["artifacts"])
    for path, content in volt["store"]["artifacts"].items():
        if path.endswith((".txt", ".yaml")):
            assert content == lightning["store"]["artifacts"][path], path
    assert volt["properties"] == lightning["properties"]
    for key in ("checkpoint_dir", "trainer_log_dir", "best", "hparams"):
        assert volt["logged"][key] == lightning["logged"][key], key


def test_mlflow_log_model_all_uploads_each_save(results: Results) -> None:
    volt, lightning = scenario(results, "mlflow_all")
    store = volt["store"]
    assert sorted(store["metrics"]) == sorted(csv_series(volt["logged"]["csv"], "fold0-"))
    for filename, sha in volt["logged"]["checkpoints"].items():  # the files left: their last upload is current
        assert store["artifacts"][f"{filename[:-5]}/{filename}"] == sha
    assert sorted(store["artifacts"]) == sorted(lightning["store"]["artifacts"])
    assert_close(store["metrics"], lightning["store"]["metrics"])


def test_mlflow_direct_calls_match_lightning(results: Results) -> None:
    volt, lightning = scenario(results, "mlflow_direct")
    store = volt["store"]
    assert {k: v for k, v in store["metrics"].items() if k != "resumed"} == {  # step None is 0
        "p-a": [[0, 1.0], [5, 3.0]], "p-bweird": [[0, 2.0]]}
    assert store["params"]["opt/name"] == "sgd" and store["params"]["blocks/1/w"] == "2"
    assert store["params"]["long"] == "x" * 250
    assert store["status"] == "FAILED"
    assert store["metrics"]["resumed"] == [[9, 1.0]] and volt["resumed_same_run"]
    for run in (volt, lightning):  # a generated name ("adorable-snake-2") when run_name is not given
        assert run["store"]["tags"].pop("mlflow.runName")
    assert volt == lightning


# --------------------------------------------------------------------------------------------
# W&B
# --------------------------------------------------------------------------------------------
def _metric_rows(history: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """History rows of trainer metrics: without watch() histograms and media (dict values) or wandb's _step."""
    rows = [{k: v for k, v in row.items() if not isinstance(v, dict) and k != "_step"} for row in history]
    return [row for row in rows if set(row) - {"trainer/global_step"}]


def test_wandb_run_holds_what_was_logged(results: Results) -> None:
    volt, _ = scenario(results, "wandb")
    run, logged = volt["run"], volt["logged"]
    rows = [{k: v for k, v in row.items() if k != "trainer/global_step"} for row in _metric_rows(run["history"])]
    expected = [{k: v for k, v in row.items() if k != "step"} for row in logged["csv"]]
    assert_close(rows, expected)
    assert [row["trainer/global_step"] for row in _metric_rows(run["history"])] == [r["step"] for r in logged["csv"]]
    assert ["trainer/global_step", "", False] in run["defined"] and ["*", "trainer/global_step", True] in run["defined"]
    assert run["config"] == logged["hparams"]
    assert run["run"]["project"] == "volt-test" and run["run"]["display_name"] == "run-a"
    assert any(k.startswith("gradients/") for row in run["history"] for k in row), "watch() logged no gradients"
    media = {k: v for row in run["history"] for k, v in row.items() if k in ("table", "text", "image")}
    assert media == {"table": {"_type": "table-file"}, "text": {"_type": "table-file"},
                     "image": {"_type": "images/separated"}}
    # log_model=True: one artifact version per kept checkpoint, logged when the fit succeeded.
    assert logged["checkpoint_dir"] == "volt-test/{version}/checkpoints"
    models = [art for art in run["artifacts"] if art["type"] == "model"]
    assert {art["files"]["model.ckpt"] for art in models} == set(logged["checkpoints"].values())
    assert len(models) == len(logged["checkpoints"])
    for art in models:
        assert art["name"] == f"model-{run['run']['id']}" and art["type"] == "model"
        best = art["metadata"]["original_filename"] == logged["best"]
        assert art["aliases"] == (["best", "latest"] if best else ["latest"])
    assert volt["properties"]["version_before_run"] is None and volt["properties"]["name"] == "volt-test"


def _without_ids(artifacts: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Artifacts without the run id in their names, and without the checkpoints' hashes (each engine
    writes its own checkpoint keys); the tables' files are the same bytes under both."""
    return [{**a, "name": a["name"].split("-")[0],
             "files": sorted(a["files"]) if a["type"] == "model" else a["files"]} for a in artifacts]


def test_wandb_matches_lightning(results: Results) -> None:
    volt, lightning = scenario(results, "wandb")
    assert_close(volt["run"]["history"], lightning["run"]["history"])
    for key in ("config", "defined"):
        assert volt["run"][key] == lightning["run"][key], key
    assert_close(_without_ids(volt["run"]["artifacts"]), _without_ids(lightning["run"]["artifacts"]))
    assert volt["properties"] == lightning["properties"]
    assert volt["errors"] == {"not_a_list": "TypeError", "length": "ValueError"} == lightning["errors"]
    for key in ("checkpoint_dir", "trainer_log_dir", "best"):
        assert volt["logged"][key] == lightning["logged"][key], key


def test_wandb_offline_and_direct_calls_match_lightning(results: Results) -> None:
    volt, lightning = scenario(results, "wandb_offline")
    run = volt["run"]
    assert volt["refused_offline_log_model"] and volt["version"] == "fixedid1"
    assert volt["unpickled"] == ["fixedid1", True]
    assert volt["run_dirs"] == ["offline"]
    # A step goes in as trainer/global_step (the x axis; step_sync fills it in rows logged without one).
    assert [r["pre-x"] for r in run["history"]] == [1.0, 2.0]
    assert run["history"][1]["trainer/global_step"] == 3
    # A callable stands for what it returns, or its name when it needs arguments.
    assert run["config"] == {"fn": "len", "factory": 3, "cls": "Linear", "obj": run["config"]["obj"],
                             "nested": {"k": 1}}
    assert run["config"]["obj"].startswith("<object object")
    for result in (volt, lightning):  # str() of an object holds its address
        del result["run"]["config"]["obj"]
    assert volt == lightning


# --------------------------------------------------------------------------------------------
# Comet
# --------------------------------------------------------------------------------------------
def test_comet_archive_holds_what_was_logged(results: Results) -> None:
    volt, _ = scenario(results, "comet")
    archive, logged = volt["archive"], volt["logged"]
    assert archive["project"] == "volt-test" and archive["others"]["Name"] == "run-a"
    assert archive["others"]["Created from"] == "volt"
    expected: Dict[str, List[List[float]]] = {}
    for row in logged["csv"]:  # epoch is each metric's context in Comet, not a metric
        for key, value in row.items():
            if key not in ("step", "epoch"):
                expected.setdefault(f"pre_{key}", []).append([row["step"], int(row["epoch"]), value])
    got = {k: v for k, v in archive["metrics"].items() if k.startswith("pre_")}
    assert_close(got, expected)
    assert archive["params"] == {"lr": 0.05, "layers|hidden": 8, "layers|act": "relu", "name": "tiny"}
    assert archive["graph"].startswith("Model(")
    assert logged["checkpoint_dir"] == "comet/volt-test/{version}/checkpoints"  # save_dir/name/version
    assert volt["properties"] == {"name": "volt-test", "save_dir": "comet", "log_dir": None,
                                  "key_is_experiment_key": True, "unpickled": [None, True]}


def test_comet_matches_lightning(results: Results) -> None:
    volt, lightning = scenario(results, "comet")
    assert lightning["archive"]["others"].pop("Created from") == "pytorch-lightning"
    volt["archive"]["others"].pop("Created from")
    for key in ("metrics", "params", "others", "graph", "project"):
        assert_close(volt["archive"][key], lightning["archive"][key], key)
    assert volt["properties"] == lightning["properties"]
    for key in ("checkpoint_dir", "trainer_log_dir", "best", "hparams"):
        assert volt["logged"][key] == lightning["logged"][key], key


def test_comet_online_false_writes_the_offline_archive(results: Results) -> None:
    """Kept different: Lightning 2.6.6 also disables the experiment for online=False (issue #21617)."""
    volt, lightning = scenario(results, "comet_online_false")
    archive = volt["archive"]
    assert archive is not None, "online=False wrote no offline archive"
    assert archive["params"] == {"a": 1, "nested|b": 2}
    assert archive["metrics"]["loss"] == [[4, 1, 0.5]]
    assert lightning["archive"] is None


def test_volt_honours_the_arguments_lightning_drops(results: Results) -> None:
    """WandbLogger(dir=...) and CometLogger's pre-2.5 names (offline, save_dir, project_name, experiment_name)."""
    volt, _ = scenario(results, "volt_only")
    assert volt["wandb_dir"] == {"save_dir": "w", "run_written": True}
    assert volt["comet_old_names"] == {"save_dir": "comet", "project": "volt-test", "name": "old-names",
                                       "loss": [[1, None, 0.25]]}


# --------------------------------------------------------------------------------------------
# other ranks
# --------------------------------------------------------------------------------------------
def test_other_ranks_get_a_dummy_experiment_and_write_nothing(results: Results) -> None:
    volt, lightning = scenario(results, "rank_one")
    for name in ("mlflow", "wandb", "comet"):
        assert volt[name] == {"dummy": True, "noop_call": True, "version": None}, name
    assert volt["files"] == ["saved.ckpt"], volt["files"]  # the checkpoint only: no run, no upload
    assert volt == lightning
