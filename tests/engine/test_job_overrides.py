"""Every Lightning 1.x and 2.x way of choosing devices, run through volt-run in a TrainingJob's environment.

The environment is the one the operator gives a pod (``builders.build_env``), so the script's own
placement meets the TrainingJob's (``VOLT_TRAINER`` always names accelerator and devices): the job's
must win whatever names the script used, and the job must train with the job's world size.
"""
import json
import re
from pathlib import Path
from typing import Any, Dict

import pytest

from ddp_support import child_env, free_port, logs, script, volt_run, wait_all
from volt_operator.api import TrainingJobSpec
from volt_operator.builders import JobRef, build_env

pytestmark = pytest.mark.slow

JOB = JobRef("spelling", "default", "0b3c-uid")

# What a script may pass, as the Lightning 1.x tutorials and the 2.x docs write it.
SPELLINGS = {
    "1.x ddp_cpu": {"num_processes": 2, "accelerator": "ddp_cpu"},
    "1.x gpus": {"gpus": 2},
    "1.x gpus list + auto_select": {"gpus": "0,1", "auto_select_gpus": True},
    "1.x accelerator=ddp + gpus": {"accelerator": "ddp", "gpus": 2},
    "1.x distributed_backend": {"distributed_backend": "ddp", "num_processes": 2},
    "1.x tpu_cores": {"tpu_cores": 8},
    "1.x accelerator=dp": {"accelerator": "dp", "gpus": 1},
    "1.x accelerator=ddp2": {"accelerator": "ddp2", "gpus": 4},
    "1.x one process": {"num_processes": 1},
    "2.x gpu devices strategy": {"accelerator": "gpu", "devices": 4, "strategy": "ddp"},
    "2.x single device": {"accelerator": "cpu", "devices": 1, "strategy": "single_device"},
    "2.x ddp_spawn": {"strategy": "ddp_spawn", "devices": 3},
    "2.x the job's own values": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
    "2.x DDPStrategy instance": {"strategy": {"DDPStrategy": {"find_unused_parameters": True}}},
    "nothing": {},
}


def operator_env(tmp: Path) -> Dict[str, str]:
    """The pod environment for a 1-node x 2-process CPU TrainingJob that also sets maxSteps."""
    spec = TrainingJobSpec.model_validate({
        "image": "volt-trainer:test", "command": ["python", "train.py"],
        "trainer": {"numNodes": 1, "devices": 2, "accelerator": "cpu", "maxSteps": 3},
    })
    env = {e["name"]: e["value"] for e in build_env(JOB, spec, rank=0, attempt=0, resume="never")}
    # A pod has its own network; here the "pod" shares the host with other tests.
    port = str(free_port())
    env.update(MASTER_ADDR="127.0.0.1", PET_MASTER_ADDR="127.0.0.1", MASTER_PORT=port, PET_MASTER_PORT=port,
               VOLT_METRICS_PORT="0", VOLT_TERMINATION_MESSAGE_PATH=str(tmp / "termination-log"))
    return env


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kwargs", list(SPELLINGS.values()), ids=list(SPELLINGS))
def test_the_training_jobs_placement_replaces_the_scripts_whatever_its_spelling(tmp_path: Path,
                                                                               kwargs: Dict[str, Any]) -> None:
    env = operator_env(tmp_path)
    assert json.loads(env["VOLT_TRAINER"])["devices"] == 2 and env["WORLD_SIZE"] == "2"
    proc = volt_run(script("trainer_spelling.py", json.dumps(kwargs)), child_env(**env), tmp_path / "node0.log")
    assert wait_all([proc], 200) == [0], logs(tmp_path)
    text = (tmp_path / "node0.log").read_text()
    trained = sorted(re.findall(r"trained: rank=(\d) (.*)", text))
    expected = "processes=2 world_size=2 devices=2 num_nodes=1 accelerator=cpu strategy=DDPStrategy steps=3"
    assert trained == [("0", expected), ("1", expected)], logs(tmp_path)
    assert "both given" not in text
    replaced = re.findall(r"VOLT_TRAINER replaces the script's Trainer\((.*)\) with the TrainingJob's", text)
    job = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    differs = {k for k, v in kwargs.items() if k != "strategy" or isinstance(v, str)} - {
        k for k, v in job.items() if kwargs.get(k) == v}
    if differs:  # one line per rank naming every replaced argument
        assert len(replaced) == 2 and all(set(re.findall(r"(\w+)=", r)) == differs for r in replaced), text
    else:
        assert replaced == [], text
    if isinstance(kwargs.get("strategy"), dict):  # an info line: only rank 0 logs at info level
        assert "VOLT_TRAINER keeps the script's DDPStrategy" in text, text
