"""Exact resume building blocks: RNG snapshots and skipping done batches without loading them."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from volt.resume import capture_rng_state, restore_rng_state, resume_epoch_iterator, skip_batches

pytestmark = pytest.mark.timeout(60)


class CountingDataset(Dataset):
    def __init__(self, n):
        self.n = n
        self.loaded = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.loaded.append(i)
        return torch.tensor(i)


def _epoch(loader, steps_rng):
    """Batches of one epoch, each followed by a 'training step' that draws random numbers."""
    out = []
    for batch in loader:
        out.append((batch.tolist(), torch.rand(1).item(), random.random(), float(np.random.rand())))
        steps_rng.append(capture_rng_state())
    return out


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_mid_epoch_replays_order_and_rng_exactly(num_workers):
    torch.manual_seed(123)
    random.seed(1)
    np.random.seed(2)
    ds = CountingDataset(40)
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=num_workers)
    _epoch(loader, [])  # epoch 0 moves the generators along
    epoch_start = capture_rng_state()
    states = []
    full = _epoch(loader, states)

    k = 3  # the checkpoint was taken after batch k-1
    torch.manual_seed(999)  # a fresh process: the generators are somewhere else entirely
    ds.loaded.clear()
    it = resume_epoch_iterator(loader, k, epoch_start, states[k - 1])
    rest = []
    for batch in it:
        rest.append((batch.tolist(), torch.rand(1).item(), random.random(), float(np.random.rand())))
    assert rest == full[k:]
    skipped = {i for b, *_ in full[:k] for i in b}
    if num_workers == 0:  # workers load in their own process
        assert not skipped & set(ds.loaded), "skipped batches must not be loaded"
    resumed_loader = skip_batches(loader, k)
    assert len(resumed_loader) == len(loader)
    assert sum(1 for _ in resumed_loader) == len(loader) - k
    assert sum(1 for _ in resumed_loader) == len(loader), "the next epoch is whole again"


def test_skip_batches_rejects_bad_input():
    with pytest.raises(ValueError, match="n must be >= 0"):
        skip_batches(DataLoader(CountingDataset(4)), -1)
    with pytest.raises(TypeError, match="map-style torch DataLoader"):
        skip_batches([1, 2, 3], 1)
    with pytest.raises(ValueError, match="capture_rng_state"):
        restore_rng_state({})


# --- end to end: SIGKILL a real training process mid-epoch, resume with ckpt_path="last" ----------

import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from ddp_support import child_env, wait_for  # noqa: E402

BATCHES_PER_EPOCH = 8  # 256 samples / batch 32
RUN_ARGS = ["--max-epochs", "1000000", "--max-steps", "400", "--samples", "256", "--batch-size", "32",
            "--every-n-steps", "5"]


def _start(tmp_path, name, *extra):
    with open(tmp_path / f"{name}.log", "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "volt.examples.synthetic", *RUN_ARGS, *extra], env=child_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)


def _log(tmp_path, name):
    return (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:]


def _manifest(dirpath):
    try:
        return json.loads((dirpath / "latest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_mid_epoch_then_resume_last_gives_bit_identical_weights(tmp_path):
    run_dir = tmp_path / "run"
    reference = _start(tmp_path, "reference", "--ckpt-dir", str(tmp_path / "ref"), "--save-weights",
                       str(tmp_path / "reference.pt"))
    # ckpt_path="last" with nothing saved yet starts fresh (a first pod start). The victim sleeps
    # 0.05 s per step (no effect on the weights): its 400 steps outlast the wait for a mid-epoch
    # checkpoint on any machine, and a new one comes every 0.25 s or more, longer than a poll.
    victim = _start(tmp_path, "victim", "--ckpt-dir", str(run_dir), "--ckpt-path", "last", "--step-delay", "0.05")
    try:
        def mid_epoch_checkpoint():
            manifest = _manifest(run_dir)
            return manifest is not None and manifest["step"] >= 20 and manifest["step"] % BATCHES_PER_EPOCH
        wait_for(mid_epoch_checkpoint, 150, "a mid-epoch checkpoint")
        os.killpg(victim.pid, signal.SIGKILL)
        assert victim.wait(30) == -signal.SIGKILL, "the run finished before it could be killed"
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
    manifest = _manifest(run_dir)
    saved = torch.load(run_dir / manifest["checkpoint"], weights_only=False)
    batch_idx = saved["loops"]["fit_loop"]["batch_idx"]
    assert 0 < batch_idx < BATCHES_PER_EPOCH, f"expected a mid-epoch checkpoint, got batch_idx={batch_idx}"

    resumed = _start(tmp_path, "resumed", "--ckpt-dir", str(run_dir), "--ckpt-path", "last", "--save-weights",
                     str(tmp_path / "resumed.pt"))
    try:
        assert resumed.wait(150) == 0, _log(tmp_path, "resumed")
        assert reference.wait(150) == 0, _log(tmp_path, "reference")
    finally:
        for proc in (resumed, reference):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert "step=400 " in _log(tmp_path, "resumed") and "step=400 " in _log(tmp_path, "reference")
    expected, actual = torch.load(tmp_path / "reference.pt"), torch.load(tmp_path / "resumed.pt")
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resume from step {saved['global_step']}"

    # The same checkpoint under another world size, without the batch size that says how many samples
    # of the epoch are done (a checkpoint of an older volt), is refused, naming both sizes.
    saved["volt_resume"]["world_size"] = 2
    saved["volt_resume"].pop("batch_size", None)
    torch.save(saved, tmp_path / "from-2-ranks.ckpt")
    from volt.examples import synthetic

    with pytest.raises(ValueError, match=r"written by 2 process\(es\) but this run has 1"):
        synthetic.main([*RUN_ARGS, "--ckpt-dir", str(tmp_path / "other"), "--ckpt-path",
                        str(tmp_path / "from-2-ranks.ckpt")])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_resume_from_an_epoch_boundary_checkpoint_is_bit_identical(tmp_path):
    """A checkpoint at an epoch's last batch (before validation and the epoch's LR step) resumes exactly."""
    reference = _start(tmp_path, "reference", "--max-steps", "40", "--ckpt-dir", str(tmp_path / "ref"),
                       "--save-weights", str(tmp_path / "reference.pt"))
    first = _start(tmp_path, "first", "--max-steps", "16", "--every-n-steps", "4", "--ckpt-dir", str(tmp_path / "run"))
    resumed = None
    try:
        assert first.wait(150) == 0, _log(tmp_path, "first")
        saved = torch.load(tmp_path / "run" / _manifest(tmp_path / "run")["checkpoint"], weights_only=False)
        assert saved["global_step"] == 16 and saved["loops"]["fit_loop"]["epoch_batches_done"]
        resumed = _start(tmp_path, "resumed", "--max-steps", "40", "--ckpt-dir", str(tmp_path / "run"),
                         "--ckpt-path", "last", "--save-weights", str(tmp_path / "resumed.pt"))
        assert resumed.wait(150) == 0, _log(tmp_path, "resumed")
        assert reference.wait(150) == 0, _log(tmp_path, "reference")
    finally:
        for proc in (first, reference, resumed):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    expected, actual = torch.load(tmp_path / "reference.pt"), torch.load(tmp_path / "resumed.pt")
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resuming at an epoch boundary"


# --- DDP: new processes resume a mid-epoch checkpoint exactly ---------------------------------------

from ddp_support import example, logs, start_nodes, wait_all  # noqa: E402

DDP_ARGS = ["--max-epochs", "1000000", "--samples", "256", "--batch-size", "32"]


def _ddp_run(tmp_path, name, num_nodes, *args, **env):
    run_dir = tmp_path / name
    run_dir.mkdir()
    layout = json.dumps({"num_nodes": num_nodes, "devices": 2, "strategy": "ddp"})
    procs = start_nodes(num_nodes, 2, example(*DDP_ARGS, *args), run_dir, VOLT_TRAINER=layout, **env)
    assert wait_all(procs, 400) == [0] * num_nodes, logs(run_dir)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("num_nodes, stop_at", [(1, 6), (2, 5)], ids=["2-ranks", "2x2-ranks"])
def test_ddp_resume_mid_epoch_is_bit_identical(tmp_path, num_nodes, stop_at):
    """256 samples, 32 per rank and step: 4 steps per epoch on 2 ranks, 2 on 4; both stops are mid-epoch.

    With 4 ranks gloo's ring sums an element in an order that depends on its place in
    DDP's gradient bucket; the resumed processes must reduce in the same layout as the
    uninterrupted ones from their first iteration on.
    """
    total = 12
    _ddp_run(tmp_path, "reference", num_nodes, "--max-steps", str(total), "--ckpt-dir", str(tmp_path / "ref-ckpt"),
             "--save-weights", str(tmp_path / "reference.pt"))
    _ddp_run(tmp_path, "first", num_nodes, "--max-steps", str(stop_at), "--every-n-steps", str(stop_at),
             "--ckpt-dir", str(tmp_path / "ckpt"))
    saved = torch.load(tmp_path / "ckpt" / _manifest(tmp_path / "ckpt")["checkpoint"], weights_only=False)
    assert saved["global_step"] == stop_at and saved["loops"]["fit_loop"]["batch_idx"] > 0, "not mid-epoch"
    _ddp_run(tmp_path, "resumed", num_nodes, "--max-steps", str(total), "--ckpt-dir", str(tmp_path / "ckpt"),
             "--save-weights", str(tmp_path / "resumed.pt"), VOLT_RESUME="auto")
    assert "resumed from checkpoint" in logs(tmp_path / "resumed")
    expected, actual = torch.load(tmp_path / "reference.pt"), torch.load(tmp_path / "resumed.pt")
    for name in expected:
        assert torch.equal(expected[name], actual[name]), (
            f"{name} differs by {(expected[name] - actual[name]).abs().max().item():.3g} after resuming at step "
            f"{stop_at} on {2 * num_nodes} ranks")
