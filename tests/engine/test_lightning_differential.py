"""Differential test: the same script under volt and under Lightning 2.x must behave alike.

``lightning_diff_script.py`` holds the scenarios; only its import line depends on
the engine. Lightning runs in its own test-only venv (``make lightning-env``, which
``make test``/``make test-engine`` build and point ``VOLT_LIGHTNING_PYTHON`` at); volt
never depends on it. Both engines run at once, each in a subprocess running every
scenario (Lightning's import alone takes seconds). CPU, fp32, fixed seeds.

Where volt differs on purpose the test asserts the difference explicitly; each is
listed under "Differences from Lightning" in docs/engine.md.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from ddp_support import child_env, kill_all

SCRIPT = Path(__file__).with_name("lightning_diff_script.py")
DDP_METRICS_SCRIPT = Path(__file__).with_name("lightning_ddp_metrics_script.py")
DDP_SAMPLER_SCRIPT = Path(__file__).with_name("lightning_ddp_sampler_script.py")
ENV_VAR = "VOLT_LIGHTNING_PYTHON"
pytestmark = pytest.mark.timeout(240)

Results = Tuple[Dict[str, Any], Dict[str, Any]]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    lightning_python = os.environ.get(ENV_VAR)
    if not lightning_python:
        pytest.skip(f"{ENV_VAR} is not set: run `make lightning-env` and set {ENV_VAR} to its python "
                    "(`make test` and `make test-engine` do both)")
    if not os.access(lightning_python, os.X_OK):
        pytest.fail(f"{ENV_VAR}={lightning_python} is not an executable; build it with `make lightning-env`")
    out = tmp_path_factory.mktemp("differential")
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    runs = {
        engine: (subprocess.Popen([python, str(SCRIPT), engine, str(out / f"{engine}.json")], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), out / f"{engine}.json")
        for engine, python in (("volt", sys.executable), ("lightning", lightning_python))
    }
    loaded: Dict[str, Dict[str, Any]] = {}
    for engine, (proc, path) in runs.items():
        try:
            output, _ = proc.communicate(timeout=200)
        except subprocess.TimeoutExpired:
            for other, _path in runs.values():
                other.kill()
            raise
        assert proc.returncode == 0, f"the {engine} run failed:\n{output[-4000:]}"
        loaded[engine] = json.loads(path.read_text())
    return loaded["volt"], loaded["lightning"]


def scenario(results: Results, name: str) -> Tuple[Any, Any]:
    volt, lightning = results[0][name], results[1][name]
    for engine, data in (("volt", volt), ("lightning", lightning)):
        if isinstance(data, dict) and "error" in data:
            pytest.fail(f"scenario {name!r} failed under {engine}: {data['error']}\n{data['traceback']}")
    return volt, lightning


def assert_same(volt: Any, lightning: Any, path: str = "", rel: float = 1e-5, abs_: float = 1e-6) -> None:
    """Equal structure and values; floats within a tight tolerance (the same ops in the same order)."""
    if isinstance(lightning, dict):
        assert isinstance(volt, dict) and sorted(volt) == sorted(lightning), (
            f"{path}: keys differ: volt only {sorted(set(volt) - set(lightning))}, "
            f"Lightning only {sorted(set(lightning) - set(volt))}")
        for k in lightning:
            assert_same(volt[k], lightning[k], f"{path}/{k}", rel, abs_)
    elif isinstance(lightning, list):
        assert isinstance(volt, list) and len(volt) == len(lightning), f"{path}: {volt!r} != {lightning!r}"
        for i, (a, b) in enumerate(zip(volt, lightning)):
            assert_same(a, b, f"{path}[{i}]", rel, abs_)
    elif isinstance(lightning, float) and isinstance(volt, (int, float)):
        assert math.isclose(volt, lightning, rel_tol=rel, abs_tol=abs_), f"{path}: volt {volt} != Lightning {lightning}"
    else:
        assert volt == lightning, f"{path}: volt {volt!r} != Lightning {lightning!r}"


def test_hook_order_is_lightnings(results: Results) -> None:
    """Module and callback hooks, with stage/batch_idx/dataloader_idx, for fit (sanity check, mid-epoch
    validation, 2 epochs) and test: the same calls in the same order."""
    volt, lightning = scenario(results, "hook_order")
    for part in ("fit", "test"):
        diff = "\n".join(difflib.unified_diff(lightning[part], volt[part], "lightning", "volt", lineterm=""))
        assert volt[part] == lightning[part], f"{part} hook order differs:\n{diff}"
    assert "Callback.on_sanity_check_start" in volt["fit"]
    assert sum(call.startswith("training_step(") for call in volt["fit"]) == 6


def test_final_weights_match(results: Results) -> None:
    """SGD+momentum / Adam, epoch and step schedulers, norm and value clipping, accumulate_grad_batches=2
    over an odd number of batches (the last window steps with one batch)."""
    volt, lightning = scenario(results, "optimization")
    assert set(volt) == {"sgd-epoch-norm", "adam-step-value", "sgd-None-None"}
    assert_same(volt, lightning)
    assert volt["sgd-epoch-norm"]["global_step"] == 6  # 3 optimizer steps per epoch of 5 batches


def test_logged_metrics_match(results: Results) -> None:
    """self.log with on_step/on_epoch/prog_bar/logger/reduce_fx/batch_size from step and epoch hooks:
    the three metric dicts, what callbacks see mid-run, and every row the CSV logger wrote."""
    volt, lightning = scenario(results, "logging")
    # On purpose: volt's logged_metrics keeps the "epoch" it sends with epoch-level values (as 1.x did);
    # Lightning 2.x adds it for the loggers only.
    assert volt["logged_metrics"].pop("epoch") == 1.0 and "epoch" not in lightning["logged_metrics"]
    assert_same(volt, lightning)
    assert {"both_step", "both_epoch", "val_stepped", "ep_max"} <= set(volt["logged_metrics"])
    assert "bar_only" not in volt["logged_metrics"] and "bar_only" in volt["progress_bar_metrics"]


def test_test_and_validate_return_values_match(results: Results) -> None:
    volt, lightning = scenario(results, "evaluation")
    assert_same(volt, lightning)
    assert set(volt["test_two"][1]) == {"test_loss/dataloader_idx_1", "test_xsum/dataloader_idx_1"}


def test_checkpoints_match(results: Results) -> None:
    """ModelCheckpoint's files, best/last, callback state keys, hyper-parameters and weights; a checkpoint's
    top-level keys differ only by the engine's own entries."""
    volt, lightning = scenario(results, "checkpoint")
    # On purpose: volt writes a manifest naming the newest complete checkpoint next to the files (docs/checkpoints.md),
    # its own version key, and RNG/sampler state for exact mid-epoch resume.
    assert volt["files"] == lightning["files"] + ["latest.json"]
    volt["files"] = lightning["files"]
    assert set(volt["keys"]) - set(lightning["keys"]) == {"volt_version", "volt_resume"}
    assert set(lightning["keys"]) - set(volt["keys"]) == {"pytorch-lightning_version"}
    volt["keys"] = lightning["keys"]
    assert_same(volt, lightning)
    assert volt["state_dict"] == volt["final_weights"]  # last.ckpt holds the final weights


def test_loop_counters_match(results: Results) -> None:
    """global_step, current_epoch, batches run and validations run for the loop limits."""
    volt, lightning = scenario(results, "counters")
    for case in ("max_steps_mid_epoch", "max_steps_accumulate"):
        # On purpose: a fit stopped by max_steps in the middle of an epoch leaves current_epoch at the epoch it
        # stopped in (its checkpoint resumes there, mid-epoch); Lightning counts that epoch as completed.
        assert volt[case]["current_epoch"] == lightning[case]["current_epoch"] - 1, case
        volt[case]["current_epoch"] = lightning[case]["current_epoch"]
    assert_same(volt, lightning)
    assert volt["max_steps_mid_epoch"]["global_step"] == 3 and volt["limit_fraction"]["num_training_batches"] == 5


def test_manual_optimization_matches(results: Results) -> None:
    """Two toggled optimizers, manual_backward, clip_gradients, a scheduler stepped by hand: weights, global_step
    (one per optimizer step), learning rates and the hooks that run around each step."""
    volt, lightning = scenario(results, "manual_optimization")
    assert_same(volt, lightning)
    assert volt["global_step"] == 12 and "on_before_optimizer_step" in volt["calls"]


def test_early_stopping_and_reduce_lr_on_plateau_match(results: Results) -> None:
    volt, lightning = scenario(results, "early_stopping_and_plateau")
    assert_same(volt, lightning)
    assert volt["should_stop"] and volt["current_epoch"] < 8 and len(set(volt["lrs"])) > 1


def test_datamodule_hooks_two_val_loaders_and_predict_match(results: Results) -> None:
    volt, lightning = scenario(results, "datamodule_and_predict")
    assert_same(volt, lightning)
    assert {"val_loss/dataloader_idx_0", "val_loss/dataloader_idx_1"} <= set(volt["callback_metrics"])
    assert [len(p) for p in volt["predictions"]] == [1, 1]


def test_resume_from_checkpoint_and_batch_start_stop_match(results: Results) -> None:
    volt, lightning = scenario(results, "resume_and_batch_start_stop")
    assert_same(volt, lightning)
    assert volt["resumed"]["global_step"] == 12 and volt["batch_start_stop"]["global_step"] == 6


def test_bf16_mixed_matches(results: Results) -> None:
    volt, lightning = scenario(results, "bf16_mixed")
    assert_same(volt, lightning)
    assert volt["output_dtype"] == "torch.bfloat16" and volt["param_dtype"] == "torch.float32"


def test_callback_logging_outputs_checkpoint_names_and_lr_monitor_match(results: Results) -> None:
    """on_train_batch_end outputs (tensor and dict returns), pl_module.log from callbacks, ModelCheckpoint name
    templates (every_n_train_steps, metric formats, auto_insert_metric_name=False), LearningRateMonitor rows with
    accumulate_grad_batches=2, validate(ckpt_path="best") and the metrics left after it."""
    volt, lightning = scenario(results, "callbacks_and_files")
    for files in volt["files"].values():  # on purpose: the manifest, as in test_checkpoints_match
        files.remove("latest.json")
    # On purpose: LearningRateMonitor(logging_interval="step") writes once per optimizer step; Lightning writes
    # from every batch of an accumulation window, the same value at the same step (a duplicate row).
    rows = lightning["csv_rows"]
    deduplicated = [row for i, row in enumerate(rows) if i == 0 or row != rows[i - 1]]
    assert len(deduplicated) < len(rows)
    lightning["csv_rows"] = deduplicated
    assert_same(volt, lightning)
    assert volt["module_outputs"][:2] == [{"loss": "Tensor(requires_grad=False)"},
                                          {"extra": "Tensor(requires_grad=False)", "loss": "Tensor(requires_grad=False)"}]
    assert "cb_step" not in volt["callback_metrics"]  # validate() starts with empty metric dicts


def test_lambda_callback_accumulation_scheduler_toggled_optimizer_and_datamodule_checkpoint_match(
        results: Results) -> None:
    volt, lightning = scenario(results, "lightning_api")
    assert_same(volt, lightning)
    assert volt["global_step"] == 4 + 2 + 2  # factors 1, 3, 2 over 4 batches per epoch (a last short window steps)
    assert volt["restored"] == {"batch_size": 6, "served": 1} and all(volt["requires_grad"])


def test_trainer_properties_match(results: Results) -> None:
    """is_last_batch, evaluating, enable_validation, scaler, distributed_sampler_kwargs, received_sigterm."""
    volt, lightning = scenario(results, "trainer_properties")
    # On purpose: precision="16-mixed" on CPU runs fp16 autocast with a GradScaler("cpu") as asked (torch supports
    # both); Lightning replaces it with bf16-mixed, which has no scaler.
    assert volt["without_validation"][0].replace("scaler=True", "scaler=False") == lightning["without_validation"][0]
    volt["without_validation"][0] = lightning["without_validation"][0]
    assert_same(volt, lightning)
    assert "batch 2 last=True evaluating=False" in volt["with_validation"]
    assert "validation evaluating=True sanity=True" in volt["with_validation"]


def test_stepping_estimate_reloads_sanity_and_checkpoint_cadence_match(results: Results) -> None:
    """estimated_stepping_batches inside configure_optimizers (OneCycleLR), reload_dataloaders_every_n_epochs,
    num_sanity_val_steps=-1, a limit_val_batches fraction, ModelCheckpoint(every_n_epochs=2,
    save_on_train_epoch_end=True), EarlyStopping(check_on_train_epoch_end=True) and test() after fit."""
    volt, lightning = scenario(results, "more_loops")
    assert_same(volt, lightning)
    assert volt["stepping"] == [15.0] and volt["files"] == ["epoch=1.ckpt", "epoch=3.ckpt"]
    assert volt["loader_calls"] == ["train@0", "val@0", "train@2", "val@2", "train@4", "val@4"]


def test_default_logger_and_checkpoint_locations_match(results: Results) -> None:
    """Trainer defaults: TensorBoardLogger under lightning_logs/version_N, hparams.yaml, and ModelCheckpoint
    writing into the logger's version directory; a second run takes the next version."""
    volt, lightning = scenario(results, "default_outputs")
    assert_same(volt, lightning)
    assert volt["second"]["log_dir"] == os.path.join("lightning_logs", "version_1")


def test_prediction_writer_matches(results: Results) -> None:
    """BasePredictionWriter("batch_and_epoch") over a shuffled loader and a plain one: the batch indices, what is
    written per batch and at the end, and what predict() returns."""
    volt, lightning = scenario(results, "prediction_writer")
    assert_same(volt, lightning)
    assert volt["written"][0][:4] == ["batch", 0, 0, [7, 4, 2, 9]]  # the shuffled order, not 0..3


def test_logged_metrics_without_a_logger_match(results: Results) -> None:
    """logger=False: logged_metrics keep the step values and carry no ``epoch``, as Lightning's."""
    volt, lightning = scenario(results, "logged_without_logger")
    assert_same(volt, lightning)
    assert "epoch" not in volt["logged_metrics"] and {"both_step", "both_epoch"} <= set(volt["logged_metrics"])


def test_learning_rate_monitor_values_reach_callback_metrics(results: Results) -> None:
    volt, lightning = scenario(results, "lr_monitor_metrics")
    assert_same(volt, lightning)
    assert volt["after_fit"] == {"lr-SGD": pytest.approx(0.035)}


def test_missing_steps_raise_misconfiguration_exception(results: Results) -> None:
    volt, lightning = scenario(results, "misconfiguration")
    assert volt == lightning == {fn: "MisconfigurationException" for fn in ("validate", "test", "predict")}


@pytest.fixture(scope="module")
def volt_with_torchmetrics(tmp_path_factory: pytest.TempPathFactory, results: Results) -> Dict[str, Any]:
    """The torchmetrics scenario under volt, run by the Lightning venv's python (it has torchmetrics,
    Lightning's dependency; volt imports neither)."""
    out = tmp_path_factory.mktemp("torchmetrics") / "volt.json"
    trainer_image = Path(__file__).resolve().parents[2] / "trainer_image"
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "VOLT_DIFF_ONLY": "torchmetrics_logging",
           "PYTHONPATH": str(trainer_image)}
    done = subprocess.run([os.environ[ENV_VAR], str(SCRIPT), "volt", str(out)], env=env, capture_output=True,
                          text=True, timeout=200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads(out.read_text())


def test_torchmetrics_objects_log_as_in_lightning(results: Results, volt_with_torchmetrics: Dict[str, Any]) -> None:
    """torchmetrics objects logged with on_step only, on_epoch only and both (forward() and update()-only
    metrics), in training and validation, next to values computed by hand in epoch-end hooks: the three
    metric dicts, what a callback sees at epoch end, every CSV row, and the same fit with logger=False."""
    lightning = results[1]["torchmetrics_logging"]
    assert "skipped" not in lightning, "torchmetrics is missing from the Lightning venv"
    volt = volt_with_torchmetrics["torchmetrics_logging"]
    assert "error" not in volt, volt.get("traceback")
    # On purpose, as in test_logged_metrics_match: volt's logged_metrics keep the epoch sent to the loggers.
    assert volt["logger"]["logged_metrics"].pop("epoch") == 1.0
    assert_same(volt, lightning)
    assert {"mae_both_step", "mae_both_epoch", "mae_step_only"} <= set(volt["no_logger"]["logged_metrics"])
    assert {"mae_both_step", "mae_both_epoch", "mae_step_only"} <= set(volt["no_logger"]["callback_metrics"])
    if "skipped" not in results[0]["torchmetrics_logging"]:  # the main venv has torchmetrics after all
        assert_same(results[0]["torchmetrics_logging"], volt)


def test_combined_loaders_match(results: Results) -> None:
    """A dict and a list of training loaders (combined, max_size_cycle), CombinedLoader in min_size, max_size
    and max_size_cycle modes for training and sequential for validation: the batches every step receives,
    dataloader_idx, the counters and the weights; sequential cannot train."""
    volt, lightning = scenario(results, "combined_loaders")
    assert_same(volt, lightning)
    assert volt["sequential_train"] == "ValueError"
    assert {case: volt[case]["global_step"] for case in ("min_size", "max_size", "max_size_cycle")} == \
        {"min_size": 6, "max_size": 10, "max_size_cycle": 6}


@pytest.fixture(scope="module")
def ddp_torchmetrics(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """lightning_ddp_metrics_script.py under each engine: Trainer(devices=2, strategy="ddp") on CPU (gloo), each
    engine starting its second process itself; both run by the Lightning venv's python (it has torchmetrics)."""
    lightning_python = os.environ.get(ENV_VAR)
    if not lightning_python:
        pytest.skip(f"{ENV_VAR} is not set: run `make lightning-env` and set {ENV_VAR} to its python")
    out = tmp_path_factory.mktemp("ddp_torchmetrics")
    runs = {}
    for engine in ("volt", "lightning"):
        env = child_env(PYTHONHASHSEED="0", DDP_METRICS_ROOT=str(out / engine))
        with open(out / f"{engine}.log", "wb") as log:
            command = [lightning_python, str(DDP_METRICS_SCRIPT), engine, str(out / f"{engine}.json")]
            runs[engine] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
    try:
        for engine, proc in runs.items():  # about 70 s each, side by side, on a loaded 2-core VM
            code = proc.wait(timeout=360)
            assert code == 0, f"the {engine} DDP run failed:\n{(out / f'{engine}.log').read_text()[-4000:]}"
    finally:
        kill_all(list(runs.values()))
    return json.loads((out / "volt.json").read_text()), json.loads((out / "lightning.json").read_text())


@pytest.mark.timeout(420)
def test_torchmetrics_under_ddp_log_as_in_lightning(ddp_torchmetrics: Results) -> None:
    """torchmetrics objects under 2-process DDP, logged with on_step only, on_epoch only and both (forward()
    and update()-only), a sync_dist tensor, and compute() by hand in the epoch-end hooks: the three metric
    dicts on rank 0, what a callback sees at each train epoch end on both ranks, every CSV row and the
    final weights match Lightning's."""
    volt, lightning = ddp_torchmetrics
    assert (volt["world_size"], volt["global_step"]) == (lightning["world_size"], lightning["global_step"]) == (2, 8)
    # On purpose, as in test_logged_metrics_match: volt's logged_metrics keep the epoch sent to the loggers.
    assert volt["logged_metrics"].pop("epoch") == 1.0
    for key in ("callback_metrics", "logged_metrics", "progress_bar_metrics", "epoch_end", "csv_rows", "weights"):
        assert_same(volt[key], lightning[key], key)
    # The check has teeth: the ranks trained on different batches, so step values differ between them,
    # while every epoch value (synced by torchmetrics or sync_dist) is the same on both.
    rank0, rank1 = volt["epoch_end"]["train_epoch_end_1"]
    assert volt["epoch_end"]["seen_1"][0] != volt["epoch_end"]["seen_1"][1]
    assert rank0["mse_both_step"] != rank1["mse_both_step"]
    epoch_keys = [k for k in rank0 if not k.endswith("_step") and k not in ("mse_step_only",)]
    assert {k: rank0[k] for k in epoch_keys} == {k: rank1[k] for k in epoch_keys}
    assert {"mse_by_hand", "acc_by_hand", "val_by_hand", "loss_synced", "acc_both_epoch"} <= set(rank0)


@pytest.fixture(scope="module")
def ddp_samplers(tmp_path_factory: pytest.TempPathFactory) -> Results:
    """lightning_ddp_sampler_script.py under each engine (2 processes, gloo), side by side: what every rank saw."""
    lightning_python = os.environ.get(ENV_VAR)
    if not lightning_python:
        pytest.skip(f"{ENV_VAR} is not set: run `make lightning-env` and set {ENV_VAR} to its python")
    out = tmp_path_factory.mktemp("ddp_samplers")
    runs = {}
    for engine, python in (("volt", sys.executable), ("lightning", lightning_python)):
        with open(out / f"{engine}.log", "wb") as log:
            runs[engine] = subprocess.Popen([python, str(DDP_SAMPLER_SCRIPT), engine, str(out)],
                                            env=child_env(PYTHONHASHSEED="0"), stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for engine, proc in runs.items():  # about 50 s each, side by side, on a loaded 2-core VM
            code = proc.wait(timeout=300)
            assert code == 0, f"the {engine} DDP run failed:\n{(out / f'{engine}.log').read_text()[-4000:]}"
    finally:
        kill_all(list(runs.values()))
    return tuple({rank: json.loads((out / f"{engine}-{rank}.json").read_text()) for rank in (0, 1)}
                 for engine in ("volt", "lightning"))  # type: ignore[return-value]


@pytest.mark.timeout(360)
def test_ddp_samplers_deal_as_lightnings(ddp_samplers: Results) -> None:
    """The samples each of 2 ranks sees per stage and epoch: shuffled, unshuffled and custom-sampler
    training loaders (Lightning shuffles all three), evaluation loaders, set_epoch, drop_last,
    use_distributed_sampler=False, overfit_batches, seed_everything: the same indices as Lightning's.
    tests/engine/test_ddp_samplers.py asserts the rule itself."""
    volt, lightning = ddp_samplers
    for rank in (0, 1):
        # On purpose (docs/distributed.md): a shuffled predict loader is predicted in dataset order. Lightning
        # deals each rank's own RandomSampler permutation, so some samples are predicted twice, others never.
        volt_predicted = volt[rank]["evaluate_shuffle"].pop("predict/0")
        lightning[rank]["evaluate_shuffle"].pop("predict/0")
        assert volt_predicted == list(range(rank, 13, 2))
        # On purpose: torch's BatchSampler passed as DataLoader(batch_sampler=...) keeps its batch size (3);
        # Lightning re-creates such a loader without it, so it yields one sample at a time.
        volt_sizes, lightning_sizes = (side[rank].pop("fit_plain_batch_sampler_sizes") for side in (volt, lightning))
        assert volt_sizes == {"train/0": [3, 3, 1], "train/1": [3, 3, 1]}
        assert lightning_sizes == {"train/0": [1] * 7, "train/1": [1] * 7}
        assert_same(volt[rank], lightning[rank], f"rank {rank}")
    # The check has teeth: Lightning shuffles an unshuffled training loader, and the ranks see different samples.
    assert lightning[0]["fit_sequential"]["train/0"] != list(range(0, 13, 2))
    assert lightning[0]["fit_sequential"]["train/0"] != lightning[1]["fit_sequential"]["train/0"]
