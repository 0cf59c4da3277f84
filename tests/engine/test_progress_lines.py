"""Logs a pod shows: progress lines on a piped stdout, rank prefixes from volt-run."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from ddp_support import child_env, free_port

SCRIPT = r"""
import sys, time, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import volt
from volt.callbacks.progress.progress_bar import ProgressBar

class Model(volt.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(4, 1)
    def training_step(self, batch, batch_idx):
        time.sleep(0.02)
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
trainer = volt.Trainer(max_epochs=int(sys.argv[1]), callbacks=[ProgressBar(log_interval_s=float(sys.argv[2]))],
                       logger=False, enable_checkpointing=False, enable_model_summary=False)
trainer.fit(Model(), DataLoader(data, batch_size=4))
"""
LINE = re.compile(r"^\[rank 0\] \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ epoch (\d+)/3 step (\d+)/48 \((\d+)%\) "
                  r"train_loss=\S+ (\d+\.\d\d) it/s ETA \d\d:\d\d$")


@pytest.mark.timeout(180)
def test_a_piped_stdout_gets_bounded_progress_lines_with_their_fields(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script), "3", "0.3"], env=child_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=170)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stdout
    assert "\r" not in done.stdout  # no bar redraws in a log
    assert len(lines) <= elapsed / 0.3 + 1, lines  # one line per interval at most, not one per step
    steps = []
    for line in lines:
        match = LINE.match(line)
        assert match, line
        steps.append(int(match.group(2)))
        assert float(match.group(4)) > 0
    assert steps == sorted(steps) and steps[-1] <= 48  # in order, during training


@pytest.mark.timeout(60)
def test_the_interval_is_checked():
    from volt.callbacks.progress.progress_bar import ProgressBar

    for bad in (-1, float("nan"), True, "30"):
        with pytest.raises(ValueError, match="log_interval_s"):
            ProgressBar(log_interval_s=bad)


@pytest.mark.timeout(120)
def test_volt_run_prefixes_each_workers_lines_with_its_global_rank(tmp_path):
    env = child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    command = "import os; print('hello from', os.environ['RANK']); print('second line', flush=True)"
    done = subprocess.run([sys.executable, "-m", "volt.launch", "--nproc-per-node", "2", "--", sys.executable, "-c",
                           command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=110, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    lines = done.stdout.splitlines()
    for rank in (0, 1):
        assert f"[rank {rank}] hello from {rank}" in lines, done.stdout
        assert f"[rank {rank}] second line" in lines, done.stdout


@pytest.mark.timeout(120)
def test_engine_log_lines_carry_time_and_rank_once(tmp_path):
    command = "import logging, volt; logging.getLogger('volt.test').info('hello')"
    alone = subprocess.run([sys.executable, "-c", command], env=child_env(RANK="0"), stderr=subprocess.PIPE,
                           text=True, timeout=110)
    assert re.search(r"^\[rank 0\] \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} volt.test INFO: hello$", alone.stderr, re.M), \
        alone.stderr
    # Under volt-run the launcher adds the rank: the engine does not repeat it.
    launched = subprocess.run([sys.executable, "-c", command], env=child_env(RANK="0", VOLT_LAUNCHER="volt-run"),
                              stderr=subprocess.PIPE, text=True, timeout=110)
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} volt.test INFO: hello$", launched.stderr, re.M), \
        launched.stderr
