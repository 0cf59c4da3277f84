"""Checkpoint IO: atomic writes, the latest.json manifest and ckpt_path resolution.

The crash tests kill a real writer process with SIGKILL while it is saving and
check that the previous checkpoint named by the manifest is still loadable.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from volt import checkpoint as ckpt_io


def test_atomic_save_roundtrip_and_no_temp_left(tmp_path):
    state = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "global_step": 42}
    path = tmp_path / "sub" / "a.ckpt"
    size = ckpt_io.atomic_save(state, path)
    assert size == path.stat().st_size > 0
    loaded = ckpt_io.load(path)
    assert torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])
    assert loaded["global_step"] == 42
    assert os.listdir(path.parent) == ["a.ckpt"]


def test_atomic_save_failure_keeps_old_file_and_cleans_temp(tmp_path):
    path = tmp_path / "a.ckpt"
    ckpt_io.atomic_save({"v": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom while serializing")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt_io.atomic_save({"v": 2, "bad": Unpicklable()}, path)
    assert ckpt_io.load(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["a.ckpt"]


def test_load_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        ckpt_io.load(tmp_path / "nope.ckpt")


def test_manifest_roundtrip(tmp_path):
    ckpt = tmp_path / "epoch=0-step=5.ckpt"
    ckpt_io.atomic_save({"x": 1}, ckpt)
    m = ckpt_io.write_manifest(tmp_path, ckpt, step=5, epoch=0)
    data = json.loads((tmp_path / "latest.json").read_text())
    assert data["checkpoint"] == "epoch=0-step=5.ckpt" and data["step"] == 5 and data["epoch"] == 0
    assert data["time"].endswith("+00:00")
    assert ckpt_io.read_manifest(tmp_path) == m
    assert ckpt_io.latest_checkpoint(tmp_path) == str(ckpt)


def test_manifest_rejects_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        ckpt_io.write_manifest(tmp_path, tmp_path / "missing.ckpt", step=1, epoch=0)
    other = tmp_path / "other"
    other.mkdir()
    ckpt_io.atomic_save({}, other / "a.ckpt")
    with pytest.raises(ValueError, match="dirpath"):
        ckpt_io.write_manifest(tmp_path / "x", other / "a.ckpt", step=1, epoch=0)
    # A file in a sub-directory (filename templates with "/") is named relatively.
    assert ckpt_io.write_manifest(tmp_path, other / "a.ckpt", step=1, epoch=0).checkpoint == "other/a.ckpt"
    assert ckpt_io.latest_checkpoint(tmp_path) == str(other / "a.ckpt")


def test_latest_checkpoint_fallbacks(tmp_path):
    assert ckpt_io.latest_checkpoint(None) is None
    assert ckpt_io.latest_checkpoint(tmp_path / "absent") is None
    assert ckpt_io.latest_checkpoint(tmp_path) is None
    old, new = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    ckpt_io.atomic_save({"n": 1}, old)
    ckpt_io.atomic_save({"n": 2}, new)
    os.utime(old, (1_000, 1_000))
    # No manifest: newest by mtime.
    assert ckpt_io.latest_checkpoint(tmp_path) == str(new)
    # Manifest wins over mtime.
    ckpt_io.write_manifest(tmp_path, old, step=1, epoch=0)
    assert ckpt_io.latest_checkpoint(tmp_path) == str(old)
    # Manifest naming a deleted file: fall back to what exists.
    old.unlink()
    assert ckpt_io.latest_checkpoint(tmp_path) == str(new)
    # A corrupt manifest is ignored, not fatal.
    (tmp_path / "latest.json").write_text("{not json")
    assert ckpt_io.latest_checkpoint(tmp_path) == str(new)


def test_resolve_ckpt_path(tmp_path):
    assert ckpt_io.resolve_ckpt_path(None, tmp_path) is None
    # "last" with nothing saved yet = start fresh (first pod start).
    assert ckpt_io.resolve_ckpt_path("last", tmp_path) is None
    assert ckpt_io.resolve_ckpt_path("last", None) is None
    ckpt = tmp_path / "last.ckpt"
    ckpt_io.atomic_save({}, ckpt)
    ckpt_io.write_manifest(tmp_path, ckpt, step=3, epoch=1)
    assert ckpt_io.resolve_ckpt_path("last", tmp_path) == str(ckpt)
    assert ckpt_io.resolve_ckpt_path("best", tmp_path, best_path=str(ckpt)) == str(ckpt)
    with pytest.raises(ValueError, match="best"):
        ckpt_io.resolve_ckpt_path("best", tmp_path, best_path="")
    with pytest.raises(FileNotFoundError, match="best"):
        ckpt_io.resolve_ckpt_path("best", tmp_path, best_path=str(tmp_path / "gone.ckpt"))
    assert ckpt_io.resolve_ckpt_path(str(ckpt), None) == str(ckpt)
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        ckpt_io.resolve_ckpt_path(str(tmp_path / "nope.ckpt"), None)
    with pytest.raises(TypeError, match="ckpt_path"):
        ckpt_io.resolve_ckpt_path(3, None)  # type: ignore[arg-type]


def test_remove_stale_temp_files(tmp_path):
    (tmp_path / ".a.ckpt.x1y2.tmp").write_bytes(b"partial")
    (tmp_path / "a.ckpt").write_bytes(b"")
    assert ckpt_io.remove_stale_temp_files(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == ["a.ckpt"]


# --- real crashes --------------------------------------------------------------

# The writer saves checkpoint k (a tensor filled with k) and then names it in the
# manifest, forever. Each state is large enough that a write takes a while.
_WRITER = textwrap.dedent(
    """
    import os, sys, torch
    from volt import checkpoint as ckpt_io
    d, numel = sys.argv[1], int(sys.argv[2])
    k = 0
    while True:
        k += 1
        path = os.path.join(d, f"step={k}.ckpt")
        ckpt_io.atomic_save({"global_step": k, "w": torch.full((numel,), float(k))}, path)
        ckpt_io.write_manifest(d, path, step=k, epoch=0)
        print(k, flush=True)
        if k > 2:  # keep the disk use bounded, like save_top_k would
            os.unlink(os.path.join(d, f"step={k - 2}.ckpt"))
    """
)


def _start_writer(dirpath, numel):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(dirpath), str(numel)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )


def _assert_latest_is_complete(dirpath):
    manifest = ckpt_io.read_manifest(dirpath)
    assert manifest is not None
    latest = ckpt_io.latest_checkpoint(dirpath)
    assert latest == os.path.join(dirpath, manifest.checkpoint)
    state = ckpt_io.load(latest)
    assert state["global_step"] == manifest.step
    w = state["w"]
    assert bool((w == float(manifest.step)).all()), "checkpoint content does not match the manifest"
    return manifest


@pytest.mark.timeout(120)
def test_sigkill_mid_write_leaves_previous_latest_loadable(tmp_path):
    """Kill the writer while its temp file is partially written."""
    numel = 64 * 1024 * 1024 // 4  # 64 MiB per checkpoint
    proc = _start_writer(tmp_path, numel)
    try:
        assert proc.stdout.readline().strip() == "1"  # checkpoint 1 + manifest complete
        # Wait until the next checkpoint's temp file exists and has data, then kill.
        deadline = time.monotonic() + 60
        partial = None
        while time.monotonic() < deadline and partial is None:
            for name in os.listdir(tmp_path):
                if name.endswith(".tmp"):
                    try:
                        size = os.path.getsize(tmp_path / name)
                    except FileNotFoundError:
                        continue
                    if 0 < size < numel * 4:
                        partial = name
                        break
        assert partial is not None, "never observed a partially written checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    manifest = _assert_latest_is_complete(tmp_path)
    # The killed write is not named anywhere and its temp file can be swept.
    assert not manifest.checkpoint.endswith(".tmp")
    assert ckpt_io.remove_stale_temp_files(tmp_path) >= 1
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


@pytest.mark.timeout(120)
def test_sigkill_at_random_points_never_corrupts_latest(tmp_path):
    """Kill the writer at arbitrary moments (mid-data, pre-rename, mid-manifest...)."""
    rng = random.Random(1234)
    numel = 8 * 1024 * 1024 // 4  # 8 MiB per checkpoint
    for trial in range(2):
        d = tmp_path / f"t{trial}"
        d.mkdir()
        proc = _start_writer(d, numel)
        try:
            assert proc.stdout.readline().strip() == "1"
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _assert_latest_is_complete(d)


def test_files_get_the_umask_default_mode(tmp_path):
    old = os.umask(0o027)
    try:
        ckpt = tmp_path / "a.ckpt"
        ckpt_io.atomic_save({"x": 1}, ckpt)
        ckpt_io.write_manifest(tmp_path, ckpt, step=1, epoch=0)
        assert ckpt.stat().st_mode & 0o777 == 0o640
        assert (tmp_path / "latest.json").stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        ckpt_io.atomic_save({"x": 2}, ckpt)
        assert ckpt.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)
