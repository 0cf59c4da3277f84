"""End to end: the default logger's TensorBoard files outlive a gang restart on the checkpoint volume.

A 2-node CPU TrainingJob whose script keeps the default logger runs in the trainer
image (which installs tensorboard) on the session's real nodes. It is interrupted once
mid-training (a node pod deleted), restarts as a new gang and ends Succeeded. TensorBoard's
own reader then finds, under `<checkpoint path>/<job>/logs` on the job's volume, one run
per attempt whose `train_loss` steps start at 0, resume where the checkpoint left off and
end at the job's last step: no run overwritten, no restart from 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from job_helpers import RESUMED, apply, explain, volume_dir, watch_table  # noqa: F401 (explain: fixture)
from operator_process import OperatorProcess, job_status, wait_until
from real_nodes import example, namespace, operator  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow]

JOB = "tblogs"
MAX_STEPS = 120

# The default logger (Trainer(logger=None)): TensorBoard under <VOLT_CHECKPOINT_DIR>/logs.
# Attempt 0 spends 0.5 s a step, so it cannot finish before the test interrupts it however
# loaded the machine; the restarted gang does the rest quickly.
SCRIPT = """\
import os, time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import volt

STEP_SECONDS = 0.5 if os.environ.get("VOLT_ATTEMPT", "0") == "0" else 0.02


class Tiny(volt.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        time.sleep(STEP_SECONDS)
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


generator = torch.Generator().manual_seed(0)
data = TensorDataset(torch.randn(512, 4, generator=generator), torch.randn(512, 1, generator=generator))
trainer = volt.Trainer(enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Tiny(), DataLoader(data, batch_size=2, shuffle=True))
"""


def _train_loss_steps(run: Path) -> List[int]:
    """The steps of the `train_loss` scalar in TensorBoard run directory ``run``, in file order."""
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    if "train_loss" not in events.Tags()["scalars"]:
        return []
    return [point.step for point in events.Scalars("train_loss")]


@pytest.mark.timeout(900)
def test_tensorboard_runs_on_the_volume_continue_across_a_gang_restart(
        operator: OperatorProcess, namespace: str, explain: List[str]) -> None:
    kube = operator.kube
    explain.append(JOB)
    pvc, job = example(command=["python", "-c", SCRIPT], args=[],
                       failurePolicy={"maxRestarts": 2, "backoffSeconds": 1},
                       cleanPodPolicy="None")  # keep every pod's logs for the diagnosis
    job["metadata"]["name"] = JOB
    job["spec"]["trainer"] = {"numNodes": 2, "devices": 1, "accelerator": "cpu", "strategy": "ddp",
                              "maxSteps": MAX_STEPS, "logEveryNSteps": 1}
    job["spec"]["checkpoint"]["everyNSteps"] = 10
    apply(kube, namespace, pvc, job)

    def checkpointed() -> Optional[int]:
        st = job_status(kube, namespace, JOB)
        step = (st.get("checkpoint") or {}).get("step") or 0
        return step if st.get("phase") == "Running" and st.get("attempt", 0) == 0 and step >= 10 else None

    wait_until("attempt 0's first checkpoint while Running", checkpointed, 300, every=1.0)
    kube.kubectl("delete", "-n", namespace, "pod", f"{JOB}-node-1", "--wait=false")
    wait_until("a gang restart", lambda: job_status(kube, namespace, JOB).get("restarts", 0) >= 1, 120)
    rows = watch_table(kube, namespace, JOB, ("Succeeded", "Failed"), 360)
    status = job_status(kube, namespace, JOB)
    assert status["phase"] == "Succeeded", (status, rows[-3:])
    assert status["restarts"] == 1 and status["training"]["step"] == MAX_STEPS, status

    logs = kube.kubectl("logs", "-n", namespace, f"{JOB}-node-0").stdout
    match = RESUMED.search(logs)
    assert match, f"rank 0 of attempt 1 did not resume from a checkpoint:\n{logs[-3000:]}"
    resumed = int(match.group(3))
    assert 10 <= resumed < MAX_STEPS, match.group(0)

    # One TensorBoard run per attempt, in the job's own directory on its volume.
    root = volume_dir(kube, namespace, "volt-checkpoints") / JOB / "logs" / "lightning_logs"
    runs = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    assert [r.name for r in runs] == ["version_0", "version_1"], sorted(str(p) for p in root.rglob("*"))
    for run in runs:
        files = sorted(p.name for p in run.glob("events.out.tfevents.*"))
        assert len(files) == 1, f"{run} holds {files}: one event file per attempt"
    steps: Dict[str, List[int]] = {run.name: _train_loss_steps(run) for run in runs}
    before, after = steps["version_0"], steps["version_1"]

    # Attempt 0 logged from the first step (logged steps count from 0); attempt 1 went on
    # from the step it resumed at, one point per step, up to the job's last step.
    assert before and before[0] == 0 and before == list(range(len(before))), before
    assert after == list(range(resumed, MAX_STEPS)), (resumed, after)
    # Together the runs have a point for every step (a step replayed after a periodic
    # checkpoint shows in both), the step the SIGTERM checkpoint was taken at included: it
    # ends the process inside on_train_batch_end and writes that step's metrics first.
    missing = set(range(MAX_STEPS)) - set(before) - set(after)
    assert not missing, (resumed, sorted(missing), before[-3:])
    assert before[-1] < MAX_STEPS - 1, "attempt 0 finished the job: nothing was interrupted"
