"""volt.contract: the operator's pod variables, parsed once, with one precedence."""
import logging
import pathlib
import re
from dataclasses import fields
from typing import Any

import pytest

import volt
from volt import contract as C
from volt.contract import JobContract, JobContractError
from volt_operator.api import TrainingJobSpec
from volt_operator.builders import JobRef, build_env

pytestmark = pytest.mark.timeout(60)


def pod_env(**checkpoint: Any) -> dict:
    spec = TrainingJobSpec.model_validate({
        "image": "volt-trainer:test", "command": ["python", "train.py"],
        "trainer": {"numNodes": 2, "devices": 2, "accelerator": "cpu", "maxEpochs": 3},
        "checkpoint": {"claimName": "ckpts", "path": "/ckpt", "everyNSteps": 50, **checkpoint},
    })
    return {e["name"]: e["value"] for e in build_env(JobRef("mnist", "team-a", "uid-7"), spec, 1, 2, "auto")}


def test_every_variable_the_operator_sets_is_read_by_the_contract() -> None:
    env = pod_env()
    names = {getattr(C, n) for n in dir(C) if n.startswith("ENV_")}
    operator_vars = {k for k in env if k.startswith("VOLT_")}
    assert operator_vars <= names, f"the engine does not read {sorted(operator_vars - names)}"
    job = JobContract.from_env({**env, "VOLT_LAUNCHER": "volt-run"})
    assert job.trainer_settings == {"accelerator": "cpu", "devices": 2, "max_epochs": 3, "num_nodes": 2,
                                    "strategy": "ddp"}
    assert (job.job_name, job.job_uid, job.attempt, job.resume) == ("mnist", "uid-7", 2, "auto")
    assert (job.checkpoint_dir, job.checkpoint_every_n_steps) == ("/ckpt/mnist", 50)
    assert job.metrics_port == 9090 and job.rendezvous_timeout_s > 0 and job.grace_period_s > 0
    assert job.termination_message_path and job.under_volt_run


def test_outside_a_job_everything_is_unset() -> None:
    job = JobContract.from_env({"PATH": "/bin", "RANK": "0"})
    assert job == JobContract()
    assert all(getattr(job, f.name) in (None, {}, False) for f in fields(job))


@pytest.mark.parametrize("name, value, message", [
    ("VOLT_TRAINER", "{bad", "VOLT_TRAINER is not valid JSON"),
    ("VOLT_CHECKPOINT_EVERY_N_STEPS", "0", "VOLT_CHECKPOINT_EVERY_N_STEPS must be an int >= 1, got '0'"),
    ("VOLT_METRICS_PORT", "http", "VOLT_METRICS_PORT must be a port in 0..65535, got 'http'"),
    ("VOLT_METRICS_PORT", "70000", "VOLT_METRICS_PORT must be a port in 0..65535"),
    ("VOLT_ATTEMPT", "-1", "VOLT_ATTEMPT must be an int >= 0"),
    ("VOLT_RENDEZVOUS_TIMEOUT", "soon", "VOLT_RENDEZVOUS_TIMEOUT must be a number of seconds > 0"),
    ("VOLT_GRACE_PERIOD_S", "0", "VOLT_GRACE_PERIOD_S must be a number of seconds > 0"),
    ("VOLT_PREEMPTION_CHECK_EVERY_N_STEPS", "1.5", "VOLT_PREEMPTION_CHECK_EVERY_N_STEPS must be an int >= 1"),
    ("VOLT_UNEVEN_CHECK_EVERY_N_BATCHES", "x", "VOLT_UNEVEN_CHECK_EVERY_N_BATCHES must be an int >= 1"),
    ("VOLT_RESUME_ANY_JOB", "maybe", "VOLT_RESUME_ANY_JOB must be 1/true/yes or 0/false/no"),
])
def test_a_malformed_variable_is_named(name: str, value: str, message: str) -> None:
    with pytest.raises(JobContractError, match=message.replace("(", r"\(").replace(".", r"\.")):
        JobContract.from_env({name: value})


def test_a_malformed_variable_fails_the_trainer_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLT_GRACE_PERIOD_S", "soon")
    with pytest.raises(JobContractError, match="VOLT_GRACE_PERIOD_S"):
        volt.Trainer(logger=False)


def test_precedence(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="volt.contract")
    job = JobContract.from_env({"VOLT_CHECKPOINT_DIR": "/ckpt/job", "VOLT_RESUME": "auto",
                                "VOLT_GRACE_PERIOD_S": "20"})
    # 1. what the TrainingJob owns replaces the script's value
    assert job.checkpoint_dir_for("my/dir") == "/ckpt/job"
    assert job.resume_ckpt_path("some.ckpt") == "last"
    assert "VOLT_RESUME=auto overrides fit(ckpt_path='some.ckpt') with 'last'" in caplog.text
    # 2. and 3. the script's explicit value, else the TrainingJob's default, else volt's
    assert job.default(5.0, job.grace_period_s, 25.0) == 5.0
    assert job.default(None, job.grace_period_s, 25.0) == 20.0
    assert job.default(None, job.metrics_port, 9090) == 9090
    outside = JobContract()
    assert outside.checkpoint_dir_for("my/dir") == "my/dir" and outside.checkpoint_dir_for(None) is None
    assert outside.resume_ckpt_path("x.ckpt") == "x.ckpt"


def test_the_trainer_parses_the_contract_once_and_keeps_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("VOLT_CHECKPOINT_DIR", str(tmp_path / "job"))
    trainer = volt.Trainer(logger=False, default_root_dir=str(tmp_path))
    monkeypatch.setenv("VOLT_CHECKPOINT_DIR", "/elsewhere")
    assert trainer.job_contract.checkpoint_dir == str(tmp_path / "job")
    from volt.signals import PreemptionCallback

    preemption = next(c for c in trainer.callbacks if isinstance(c, PreemptionCallback))
    assert preemption._resolve_dirpath(trainer) == str(tmp_path / "job")
    assert PreemptionCallback(dirpath=str(tmp_path / "mine"))._resolve_dirpath(trainer) == str(tmp_path / "job")


def test_no_engine_module_reads_a_job_variable_by_itself() -> None:
    root = pathlib.Path(volt.__file__).parent
    reads = re.compile(r"""(?:get\(|environ\[)\s*["']VOLT_""")
    found = [f"{path.relative_to(root)}:{n}" for path in sorted(root.rglob("*.py")) if path.name != "contract.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if reads.search(line)]
    assert found == [], "read these through volt.contract.JobContract"
