"""Sharded async checkpoints and resuming at another world size, with real gloo processes."""
import json
import shutil
from collections import Counter

import pytest
import torch

from ddp_support import SCRIPTS, child_env, free_port, kill_all, kill_leftovers, logs, volt_run, wait_all, wait_for
from volt.checkpoint import read_manifest, verify_checkpoint
from volt.checkpoint_convert import main as convert_main

pytestmark = pytest.mark.slow

SAMPLES = 240  # divisible by 4, 3 and 2: no DistributedSampler padding, so "exactly once" is exact


def _run(tmp_path, name, nproc, out, *args, wait=True):
    out.mkdir(exist_ok=True)
    command = ["--nproc-per-node", str(nproc), "--master-port", str(free_port()),
               str(SCRIPTS / "resize_train.py"), str(out), *args]
    proc = volt_run(command, child_env(), tmp_path / f"{name}.log")
    if wait:
        assert wait_all([proc], 280) == [0], logs(tmp_path)
        return (tmp_path / f"{name}.log").read_text()
    return proc


def _seen(out, epoch, world):
    return Counter(i for r in range(world) for i in map(int, (out / f"seen-e{epoch}-r{r}-w{world}.txt").read_text().split()))


@pytest.mark.timeout(900)
def test_fsdp_sharded_checkpoint_at_4_resumes_at_2_and_3_seeing_every_sample_once(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = _run(tmp_path, "w4", 4, tmp_path / "w4", "fsdp", "--ckpt-dir", str(ckpt))
    assert "done: world=4 epoch=1 step=8" in first, first
    assert _seen(tmp_path / "w4", 0, 4) == Counter(range(SAMPLES))
    manifest = json.loads((ckpt / "latest.json").read_text())
    assert manifest["format"] == 3 and (ckpt / manifest["checkpoint"]).is_dir()
    assert sorted(manifest["files"]) == [".metadata"] + [f"__{r}_0.distcp" for r in range(4)]  # 4 writers
    loss0 = float((tmp_path / "w4" / "loss-e0-w4.txt").read_text())

    for world, accumulate in ((2, 2), (3, 1)):
        resumed_dir = tmp_path / f"ckpt{world}"
        shutil.copytree(ckpt, resumed_dir)
        out = tmp_path / f"w{world}"
        log = _run(tmp_path, f"w{world}", world, out, "fsdp", "--ckpt-dir", str(resumed_dir), "--ckpt-path", "last",
                   "--max-epochs", "2")
        assert "resumed from checkpoint" in log and f"done: world={world} epoch=2" in log, log
        assert f"accumulate={accumulate}" in log, log  # 4 -> 2 keeps the global batch; 4 -> 3 cannot
        if world == 3:
            assert "the global batch changes by a factor 3/4" in log, log
        assert _seen(out, 1, world) == Counter(range(SAMPLES))  # every sample of the epoch exactly once
        assert float((out / f"loss-e1-w{world}.txt").read_text()) < loss0  # the loss continues to fall

    # the converter writes one file that torch.load reads, with full tensors
    single = tmp_path / "single.ckpt"
    assert convert_main([str(ckpt / "last.ckpt"), str(single)]) == 0
    state = torch.load(single, weights_only=False)
    assert state["state_dict"]["net.0.weight"].shape == (32, 16) and state["global_step"] == 8


@pytest.mark.timeout(600)
def test_ddp_mid_epoch_checkpoint_at_4_resumes_at_2_finishing_the_epoch_with_every_sample_once(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = _run(tmp_path, "w4", 4, tmp_path / "w4", "ddp", "--ckpt-dir", str(ckpt), "--max-steps", "4")
    assert "done: world=4 epoch=0 step=4" in first, first  # stopped after 4 of the epoch's 8 batches
    shutil.copytree(ckpt, tmp_path / "ckpt3")  # the 2-process run below adds its own checkpoints to ckpt
    log = _run(tmp_path, "w2", 2, tmp_path / "w2", "ddp", "--ckpt-dir", str(ckpt), "--ckpt-path", "last")
    assert "batch 4 -> 8 per process" in log and "done: world=2 epoch=1" in log, log  # 8 + 7 batches of 15
    assert "accumulate=2" in log, log  # the global batch kept
    assert _seen(tmp_path / "w4", 0, 4) + _seen(tmp_path / "w2", 0, 2) == Counter(range(SAMPLES))
    # at 3 processes the 128 samples done are not a whole number of batches (24 samples): the other 112 are
    # re-dealt, padded to 114 with 2 copies of samples done before (as DistributedSampler pads)
    log = _run(tmp_path, "w3", 3, tmp_path / "w3", "ddp", "--ckpt-dir", str(tmp_path / "ckpt3"), "--ckpt-path", "last")
    assert "128 of its 240 samples are done; the other 112 are re-dealt to the 3 processes (2 padding copies)" in log, log
    _assert_redealt(_seen(tmp_path / "w4", 0, 4), _seen(tmp_path / "w3", 0, 3), SAMPLES, 3, drop_last=False)


def _assert_redealt(before, after, samples, world, drop_last, batch_size=8):
    """The epoch's samples across a resize: none twice but the padding, none skipped but drop_last's."""
    consumed = sum(before.values())
    assert max(before.values()) == 1 and sum(before.values()) < samples, before  # stopped mid-epoch, no padding yet
    seen = before + after
    if drop_last:  # each rank's incomplete last batch of the re-dealt rest is dropped: fewer than world x batch
        assert max(seen.values()) == 1, seen
        share = -(-(samples - consumed) // world)
        assert sum(after.values()) == world * (share // batch_size) * batch_size, (after, share)
    else:  # every sample, and fewer than `world` padding copies of samples done before the resize
        padding = -(samples - consumed) % world
        assert set(seen) == set(range(samples)), sorted(set(range(samples)) - set(seen))
        assert sum(seen.values()) == samples + padding, seen
        assert all(index in before for index, count in seen.items() if count > 1), seen


@pytest.mark.timeout(600)
@pytest.mark.parametrize("samples, batch_size, drop_last, steps", [
    (10, 1, False, 2),  # 8 done of 10, padded: 3 at 4 processes; the other 2 + 1 padding copy, 1 batch each at 3
    (11, 2, False, 1),  # 8 done of 11: the other 3 dealt one each at 3 processes, no padding
    (22, 2, True, 1),  # 8 done of 22: 14 + 1 padding, 5 each at 3 processes, the incomplete 5th dropped
])
def test_ddp_mid_epoch_checkpoint_at_4_resumes_at_3_when_the_rest_does_not_divide(tmp_path, samples, batch_size,
                                                                                    drop_last, steps):
    ckpt = tmp_path / "ckpt"
    data = ["--samples", str(samples), "--batch-size", str(batch_size)] + (["--drop-last"] if drop_last else [])
    first = _run(tmp_path, "w4", 4, tmp_path / "w4", "ddp", "--ckpt-dir", str(ckpt), "--max-steps", str(steps),
                 "--every-n-steps", str(steps), *data)
    assert f"done: world=4 epoch=0 step={steps}" in first, first
    log = _run(tmp_path, "w3", 3, tmp_path / "w3", "ddp", "--ckpt-dir", str(ckpt), "--ckpt-path", "last", *data)
    assert "re-dealt to the 3 processes" in log and "done: world=3 epoch=1" in log, log
    _assert_redealt(_seen(tmp_path / "w4", 0, 4), _seen(tmp_path / "w3", 0, 3), samples, 3, drop_last, batch_size)


@pytest.mark.timeout(600)
def test_ddp_killed_inside_an_async_save_leaves_a_manifest_naming_a_complete_checkpoint(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    proc = _run(tmp_path, "killed", 2, out, "ddp", "--sharded", "--ckpt-dir", str(ckpt), "--block-commit-at-step", "8",
                wait=False)
    try:
        wait_for(lambda: (out / "blocked").exists() or proc.poll() is not None, 280, "the blocked async save")
        assert proc.poll() is None, logs(tmp_path)
    finally:
        kill_all([proc])  # SIGKILL: the step-8 shards are written, never committed
        kill_leftovers(str(out))  # the workers, in sessions of their own, outlive volt-run's group
    manifest = read_manifest(ckpt)
    assert manifest is not None and manifest.step == 4, manifest
    assert verify_checkpoint(manifest.path(ckpt), manifest.latest) is None
    assert any(p.name.startswith(".") and p.name.endswith(".tmp") for p in ckpt.iterdir())  # the uncommitted one
    log = _run(tmp_path, "resumed", 2, out, "ddp", "--sharded", "--ckpt-dir", str(ckpt), "--ckpt-path", "last")
    assert "resumed from checkpoint" in log and "global step 4" in log and "done: world=2 epoch=1 step=15" in log, log
