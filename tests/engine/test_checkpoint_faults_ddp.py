"""Under DDP (volt-run, 2 real processes, gloo): a truncated latest checkpoint, and a checkpoint directory of another job."""
import json
import os

import pytest
import torch

from ddp_support import example, logs, start_nodes, wait_all
from test_ddp_launch import assert_weights_close, reference_weights

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SAMPLES = "1600"  # 1600 / 2 ranks / 32 = 25 batches per epoch: every checkpoint below is mid-epoch


def test_ddp_resume_skips_a_truncated_latest_and_continues_exactly(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    env = dict(VOLT_CHECKPOINT_DIR=str(ckpt_dir), VOLT_CHECKPOINT_EVERY_N_STEPS="5", VOLT_JOB_UID="uid-a")
    first = start_nodes(1, 2, example("--max-epochs", "100", "--max-steps", "20", "--samples", SAMPLES),
                        tmp_path, **env)
    assert wait_all(first, 150) == [0], logs(tmp_path)
    manifest = json.loads((ckpt_dir / "latest.json").read_text())
    assert manifest["step"] == 20 and manifest["job_uid"] == "uid-a"
    # The example saves last.ckpt too; keep_last is 3 on a job's volume: steps 10, 15 and 20 stay.
    assert sorted(p.name for p in ckpt_dir.glob("*.ckpt")) == [
        "epoch=0-step=10.ckpt", "epoch=0-step=15.ckpt", "epoch=0-step=20.ckpt", "last.ckpt"]
    latest, twin, previous = (ckpt_dir / n for n in ("last.ckpt", "epoch=0-step=20.ckpt", "epoch=0-step=15.ckpt"))
    assert manifest["checkpoint"] == latest.name
    for damaged in (latest, twin):  # both files of step 20 lose their tail
        os.truncate(damaged, damaged.stat().st_size - 1000)

    resumed = start_nodes(1, 2, example("--max-epochs", "100", "--max-steps", "26", "--samples", SAMPLES,
                                        "--save-weights", str(tmp_path / "resumed.pt")),
                          tmp_path, VOLT_RESUME="auto", **env)
    assert wait_all(resumed, 150) == [0], logs(tmp_path)
    node0 = (tmp_path / "node0.log").read_text()
    assert f"volt: resumed from checkpoint {previous} at epoch 0, global step 15" in node0, logs(tmp_path)
    for damaged in (latest, twin):
        assert f"Checkpoint {damaged} is unusable" in node0, logs(tmp_path)
    assert f"resuming from {previous}" in node0 and "truncated" in node0, logs(tmp_path)
    # Both ranks loaded step 15 (rank 0's choice): the weights continue exactly from there.
    expected = reference_weights(int(SAMPLES), 16, 32, 0.05, 32, world_size=2, max_steps=26)
    assert_weights_close(torch.load(tmp_path / "resumed.pt"), expected,
                         "resumed from the checkpoint before a truncated latest, DDP differs from uninterrupted")


def test_ddp_job_refuses_another_jobs_directory_on_every_rank(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    env = dict(VOLT_CHECKPOINT_DIR=str(ckpt_dir), VOLT_CHECKPOINT_EVERY_N_STEPS="5")
    first = start_nodes(1, 2, example("--max-epochs", "100", "--max-steps", "5", "--samples", SAMPLES),
                        tmp_path, VOLT_JOB_UID="uid-old", **env)
    assert wait_all(first, 150) == [0], logs(tmp_path)
    second = start_nodes(1, 2, example("--max-epochs", "100", "--max-steps", "10", "--samples", SAMPLES),
                         tmp_path, VOLT_JOB_UID="uid-new", VOLT_RESUME="auto", **env)
    assert wait_all(second, 150) == [78], logs(tmp_path)  # CONFIG_ERROR, not a hang and not a fresh start
    node0 = (tmp_path / "node0.log").read_text()
    assert "written by job uid uid-old, but this is job uid uid-new" in node0, logs(tmp_path)
    assert json.loads((ckpt_dir / "latest.json").read_text())["job_uid"] == "uid-old"  # nothing was overwritten
