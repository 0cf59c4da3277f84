"""DDP through volt-run with the pod env contract: 2 "nodes" x 2 processes on localhost (gloo)."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DistributedSampler

from ddp_support import child_env, example, logs, start_nodes, wait_all, wait_for
from volt import seed_everything
from volt.examples.synthetic import RegressionModel, SyntheticRegression

pytestmark = pytest.mark.slow


def reference_weights(samples, features, hidden, lr, batch_size, world_size, epochs=None, max_steps=None, seed=0):
    """Plain-torch training on the union of the ranks' batches: what DDP must reproduce.

    Mirrors the example: SGD with momentum, StepLR(gamma=0.9) after each full epoch.
    """
    seed_everything(seed)
    model = RegressionModel(features, hidden, lr)
    data = SyntheticRegression(samples, features, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    step, epoch = 0, 0
    while (epochs is None or epoch < epochs) and (max_steps is None or step < max_steps):
        shards = []
        for rank in range(world_size):
            sampler = DistributedSampler(data, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        for start in range(0, len(shards[0]), batch_size):
            optimizer.zero_grad()
            losses = [F.mse_loss(model(data.x[s[start:start + batch_size]]), data.y[s[start:start + batch_size]])
                      for s in shards]
            torch.stack(losses).mean().backward()  # DDP averages the ranks' gradients
            optimizer.step()
            step += 1
            if max_steps is not None and step == max_steps:
                return model.state_dict()
        scheduler.step()
        epoch += 1
    return model.state_dict()


def assert_weights_close(actual, expected, what):
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {what}")


@pytest.mark.timeout(300)
def test_two_nodes_two_processes_equal_single_process_on_the_global_batch(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    procs = start_nodes(
        2, 2,
        example("--max-epochs", "5", "--samples", "256", "--batch-size", "32", "--save-weights",
                str(tmp_path / "ddp.pt")),
        tmp_path, VOLT_CHECKPOINT_DIR=str(ckpt_dir),
        VOLT_TRAINER='{"num_nodes": 2, "devices": 2, "strategy": "ddp", "max_epochs": 3}',
    )
    assert wait_all(procs, 240) == [0, 0], logs(tmp_path)
    node0 = (tmp_path / "node0.log").read_text()
    assert "done: epoch=3 step=6" in node0, logs(tmp_path)  # 256 samples / 4 ranks / 32 = 2 steps per epoch
    assert "VOLT_TRAINER overrides Trainer(max_epochs=5) with 3" in node0  # and it was applied: epoch=3 above
    ddp = torch.load(tmp_path / "ddp.pt")
    expected = reference_weights(256, 16, 32, 0.05, 32, world_size=4, epochs=3)
    assert_weights_close(ddp, expected, "DDP differs from single-process training on the global batch")
    manifest = json.loads((ckpt_dir / "latest.json").read_text())
    assert (ckpt_dir / manifest["checkpoint"]).is_file()


@pytest.mark.timeout(300)
def test_sigterm_checkpoints_exits_retryable_and_resume_continues_exactly(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    env = dict(VOLT_CHECKPOINT_DIR=str(ckpt_dir), VOLT_PREEMPTION_CHECK_EVERY_N_STEPS="4", VOLT_GRACE_PERIOD_S="60")
    # First attempt without a launcher: Trainer(devices=2) re-executes the script under volt-run,
    # in the same process, which is the one that gets SIGTERM.
    with open(tmp_path / "first.log", "wb") as out:
        first = subprocess.Popen(
            # 1600 samples / 2 ranks / 32 = 25 batches per epoch: agreement points (every 4th batch)
            # fall mid-epoch except at multiples of 100 (the epoch-boundary case has its own test)
            [sys.executable, *example("--max-epochs", "1000000", "--samples", "1600", "--every-n-steps", "10")[1:]],
            env=child_env(VOLT_TRAINER='{"devices": 2, "accelerator": "cpu"}', **env), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
        )
    try:
        wait_for(lambda: (ckpt_dir / "latest.json").exists(), 150, "the first checkpoint")
        os.kill(first.pid, signal.SIGTERM)
        # 75: every rank saved and exited within the 60 s grace period (after it, 143), however busy the machine.
        assert wait_all([first], 90) == [75], logs(tmp_path)
    finally:
        wait_all([first], 0.1)
    first_log = (tmp_path / "first.log").read_text()
    assert "re-running under volt-run" in first_log or "2 process(es), world size 2" in first_log, logs(tmp_path)
    manifest = json.loads((ckpt_dir / "latest.json").read_text())
    assert manifest["checkpoint"].startswith("preempted-"), manifest
    saved = torch.load(ckpt_dir / manifest["checkpoint"], weights_only=False)
    step = saved["global_step"]
    assert step > 0 and saved["volt_resume"]["world_size"] == 2

    # The restart (VOLT_RESUME=auto, as the operator sets it) continues from that checkpoint.
    procs = start_nodes(1, 2, example("--max-epochs", "1000000", "--max-steps", str(step + 6), "--samples", "1600",
                                      "--save-weights", str(tmp_path / "resumed.pt")),
                        tmp_path, VOLT_RESUME="auto", **env)
    assert wait_all(procs, 150) == [0], logs(tmp_path)
    resumed_log = (tmp_path / "node0.log").read_text()
    assert f"step={step + 6} " in resumed_log, logs(tmp_path)
    assert f"volt: resumed from checkpoint {ckpt_dir / manifest['checkpoint']} at epoch " in resumed_log
    # Exactly: a batch trained twice or skipped would move the weights far beyond the tolerance.
    expected = reference_weights(1600, 16, 32, 0.05, 32, world_size=2, max_steps=step + 6)
    assert_weights_close(torch.load(tmp_path / "resumed.pt"), expected,
                         f"interrupted at step {step} and resumed, DDP differs from uninterrupted training")


@pytest.mark.timeout(240)
def test_a_signal_to_one_node_checkpoints_the_whole_gang_within_a_short_grace_period(tmp_path):
    # A deleted pod: only node 1 gets SIGTERM. Steps of 0.3 s and a 9 s grace period: a
    # fixed cadence of 10 steps (or one adapted to the wrong interval) agrees too late and
    # the gang ends 76/143. By default the ranks agree about once a second, whatever the step.
    ckpt_dir = tmp_path / "ckpt"
    procs = start_nodes(2, 2, example("--max-epochs", "1000000", "--samples", "2048", "--step-delay", "0.3",
                                      "--every-n-steps", "3"),
                        tmp_path, VOLT_CHECKPOINT_DIR=str(ckpt_dir), VOLT_GRACE_PERIOD_S="9")
    try:
        wait_for(lambda: (ckpt_dir / "latest.json").exists(), 150, "the first checkpoint")
        os.kill(procs[1].pid, signal.SIGTERM)
        assert wait_all(procs, 60) == [75, 75], logs(tmp_path)
    finally:
        wait_all(procs, 0.1)
    assert "a peer's signal: saved" in (tmp_path / "node0.log").read_text(), logs(tmp_path)
    assert json.loads((ckpt_dir / "latest.json").read_text())["checkpoint"].startswith("preempted-"), logs(tmp_path)
