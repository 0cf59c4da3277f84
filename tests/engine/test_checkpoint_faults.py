"""Checkpoints under real faults: verified resume, a full or failing volume, retention, and job ownership.

The faults are real: checkpoint files are truncated and overwritten on disk, the
volume is a 1 MiB tmpfs that fills up (mounted here, unmounted in teardown; needs
root), and EIO comes from the file object the checkpoint is written through (no
device here can return EIO on demand: no device-mapper in this kernel).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import torch
from torch import nn

import volt
from volt import checkpoint as ckpt_io
from volt import exit_codes
from volt.callbacks import ModelCheckpoint
from volt.plugins import TorchCheckpointIO

from tiny_models import TinyModel, loader, quiet_trainer

pytestmark = pytest.mark.timeout(120)

JOB_ENV = ("VOLT_JOB_UID", "VOLT_RESUME_ANY_JOB", "VOLT_CHECKPOINT_KEEP_LAST", "VOLT_CHECKPOINT_DIR",
           "VOLT_TERMINATION_MESSAGE_PATH", "VOLT_CHECKPOINT_EVERY_N_STEPS")


@pytest.fixture(autouse=True)
def _no_job_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in JOB_ENV:
        monkeypatch.delenv(name, raising=False)


class Scored(TinyModel):
    """Logs `score`: 10 at the first step, then 0, 1, 2...: with mode="max" the first stays the best one."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.log("score", 10.0 if self.global_step == 0 else float(self.global_step - 1))
        return super().training_step(batch, batch_idx)


def train(tmp_path: Path, dirpath: Path, steps: int, ckpt_path: Optional[str] = None, keep_last: Optional[int] = 3,
          **checkpoint_args: Any) -> volt.Trainer:
    """Fit Scored for `steps` optimizer steps, checkpointing every step into `dirpath`."""
    torch.manual_seed(0)
    callback = ModelCheckpoint(dirpath=dirpath, every_n_train_steps=1, keep_last=keep_last, **checkpoint_args)
    trainer = quiet_trainer(tmp_path, max_steps=steps, enable_checkpointing=True, callbacks=[callback])
    trainer.fit(Scored(), loader(n=80), ckpt_path=ckpt_path)
    return trainer


def step_files(dirpath: Path) -> List[str]:
    return sorted(n for n in os.listdir(dirpath) if n.endswith(".ckpt"))


# --- verified checkpoints -------------------------------------------------------------------------
def test_manifest_records_size_and_the_sha256_a_reader_can_check(tmp_path: Path) -> None:
    trainer = train(tmp_path, tmp_path / "ck", steps=3)
    data = json.loads((tmp_path / "ck" / "latest.json").read_text())
    path = tmp_path / "ck" / data["checkpoint"]
    assert data["format"] == 2 and data["step"] == 3
    assert data["size"] == path.stat().st_size
    assert data["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()  # what `sha256sum` prints
    # The earlier checkpoints are listed too, newest first, each verifiable.
    assert [e["step"] for e in data["history"]] == [2, 1]
    for entry in data["history"]:
        assert hashlib.sha256((tmp_path / "ck" / entry["checkpoint"]).read_bytes()).hexdigest() == entry["sha256"]
    assert trainer.checkpoint_callback.best_model_path == str(path)


def test_history_lists_each_existing_file_once_and_only_this_jobs(tmp_path: Path) -> None:
    for step, name in ((1, "a.ckpt"), (2, "last.ckpt"), (3, "b.ckpt"), (4, "last.ckpt")):
        ckpt_io.atomic_save({"step": step}, tmp_path / name)
        ckpt_io.write_manifest(tmp_path, tmp_path / name, step=step, epoch=0, job_uid="uid-1")
    manifest = ckpt_io.read_manifest(tmp_path)
    # last.ckpt was overwritten at step 4: its step-2 entry is gone with its old bytes.
    assert [(e.checkpoint, e.step) for e in manifest.entries()] == [("last.ckpt", 4), ("b.ckpt", 3), ("a.ckpt", 1)]
    os.remove(tmp_path / "a.ckpt")
    ckpt_io.atomic_save({"step": 5}, tmp_path / "c.ckpt")
    manifest = ckpt_io.write_manifest(tmp_path, tmp_path / "c.ckpt", step=5, epoch=0, job_uid="uid-1")
    assert [e.checkpoint for e in manifest.entries()] == ["c.ckpt", "last.ckpt", "b.ckpt"]  # a deleted file goes
    assert ckpt_io.recent_checkpoints(tmp_path, 2) == {str(tmp_path / "c.ckpt"), str(tmp_path / "last.ckpt")}
    other = ckpt_io.write_manifest(tmp_path, tmp_path / "c.ckpt", step=5, epoch=0, job_uid="uid-2")
    assert other.history == ()  # another job's checkpoints are never its fallback


def test_verify_checkpoint_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "a.ckpt"
    ckpt_io.atomic_save({"w": torch.arange(1000.0)}, path)
    entry = ckpt_io.write_manifest(tmp_path, path, step=1, epoch=0).latest
    assert ckpt_io.verify_checkpoint(path, entry) is None and ckpt_io.verify_checkpoint(path) is None
    _flip_a_byte(path)
    assert "does not match the manifest" in ckpt_io.verify_checkpoint(path, entry)
    assert ckpt_io.verify_checkpoint(path) is None  # without a checksum a flipped byte goes unnoticed here
    _truncate(path)
    assert "where the manifest recorded" in ckpt_io.verify_checkpoint(path, entry)
    assert "without its central directory" in ckpt_io.verify_checkpoint(path)
    path.write_bytes(b"")
    assert ckpt_io.verify_checkpoint(path) == "empty file"
    assert ckpt_io.verify_checkpoint(tmp_path / "gone.ckpt") == "missing"


def _truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as f:  # same size, different bytes: only the checksum notices
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte], ids=["truncated", "bit-flip"])
def test_fit_resumes_from_the_newest_valid_checkpoint_when_the_latest_is_damaged(
        tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture) -> None:
    dirpath = tmp_path / "ck"
    train(tmp_path, dirpath, steps=3)
    latest = dirpath / ckpt_io.read_manifest(dirpath).checkpoint
    previous = dirpath / "epoch=0-step=2.ckpt"
    damage(latest)
    assert ckpt_io.resolve_ckpt_path("last", dirpath) == str(previous)  # ckpt_path="last" follows the same rule
    with caplog.at_level(logging.WARNING, logger="volt.checkpoint"):
        resumed = train(tmp_path, dirpath, steps=5, ckpt_path="last")
    assert resumed.ckpt_path == str(previous)
    warning = next(r.getMessage() for r in caplog.records if "unusable" in r.getMessage())
    assert str(latest) in warning and str(previous) in warning
    assert resumed.global_step == 5  # 2 restored + 3 trained


def test_an_unloadable_latest_is_skipped_too(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file whose checksum matches what was written but that torch cannot load (not a checkpoint at all)."""
    dirpath = tmp_path / "ck"
    train(tmp_path, dirpath, steps=2)
    bogus = dirpath / "bogus.ckpt"
    ckpt_io.atomic_write(bogus, lambda f: f.write(b"\x80\x04not a pickle at all"))
    ckpt_io.write_manifest(dirpath, bogus, step=9, epoch=0)
    assert ckpt_io.verify_checkpoint(bogus, ckpt_io.read_manifest(dirpath).latest) is None  # the bytes are intact
    with caplog.at_level(logging.WARNING, logger="volt.checkpoint"):
        resumed = train(tmp_path, dirpath, steps=3, ckpt_path="last")
    assert resumed.ckpt_path == str(dirpath / "epoch=0-step=2.ckpt")
    assert any("cannot be loaded" in r.getMessage() and str(bogus) in r.getMessage() for r in caplog.records)


def test_no_valid_checkpoint_is_a_clear_configuration_error(tmp_path: Path) -> None:
    dirpath = tmp_path / "ck"
    train(tmp_path, dirpath, steps=2)
    for name in step_files(dirpath):
        _truncate(dirpath / name)
    with pytest.raises(ckpt_io.CheckpointCorruptError, match="No valid checkpoint to resume from") as info:
        ckpt_io.resolve_ckpt_path("last", dirpath)
    assert "epoch=0-step=1.ckpt" in str(info.value) and "epoch=0-step=2.ckpt" in str(info.value)
    with pytest.raises(SystemExit) as exited:  # fit(): the process exits with CONFIG_ERROR, not a fresh start
        train(tmp_path, dirpath, steps=3, ckpt_path="last")
    assert exited.value.code == exit_codes.CONFIG_ERROR
    assert isinstance(exited.value.__cause__, ckpt_io.CheckpointCorruptError)


def test_manifest_from_an_older_volt_still_resumes(tmp_path: Path) -> None:
    """Format 1 (no size, checksum or history): the named file is used when torch can read it."""
    dirpath = tmp_path / "ck"
    train(tmp_path, dirpath, steps=2)
    data = json.loads((dirpath / "latest.json").read_text())
    old = {k: data[k] for k in ("checkpoint", "epoch", "step", "time", "unix_time")} | {"format": 1}
    (dirpath / "latest.json").write_text(json.dumps(old))
    assert ckpt_io.resolve_ckpt_path("last", dirpath) == str(dirpath / data["checkpoint"])
    _truncate(dirpath / data["checkpoint"])  # no checksum: the zip's missing central directory gives it away
    assert ckpt_io.resolve_ckpt_path("last", dirpath) == str(dirpath / "epoch=0-step=1.ckpt")


# --- a full or failing volume --------------------------------------------------------------------
@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs: writes past it fail with ENOSPC."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "volume"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


class Wide(TinyModel):
    """About 150 KB of weights plus SGD momentum: three 300 KB checkpoints fit in 1 MiB, a fourth does not."""

    def __init__(self) -> None:
        super().__init__()
        self.wide = nn.Linear(4, 7500)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return super().training_step(batch, batch_idx) + 0.0 * self.wide(batch[0]).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


_FILL_THE_VOLUME = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, sys.argv[3])
    from test_checkpoint_faults import Wide
    from tiny_models import loader
    import volt
    from volt.callbacks import ModelCheckpoint
    torch.manual_seed(0)
    trainer = volt.Trainer(max_steps=6, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                           enable_model_summary=False, default_root_dir=sys.argv[2],
                           callbacks=[ModelCheckpoint(dirpath=sys.argv[1], every_n_train_steps=1, keep_last=3)])
    trainer.fit(Wide(), loader(n=80))
    """
)


def test_a_full_volume_exits_retryable_and_keeps_the_latest_valid(tiny_volume: Path, tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               VOLT_TERMINATION_MESSAGE_PATH=str(message))
    here = str(Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", _FILL_THE_VOLUME, str(tiny_volume), str(tmp_path), here],
                          env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == exit_codes.CHECKPOINT_VOLUME_FULL, proc.stderr[-3000:]
    assert exit_codes.is_retryable(proc.returncode)
    assert "the checkpoint volume is full" in proc.stderr and "ENOSPC" in proc.stderr
    assert message.read_text().startswith("CheckpointVolumeFull: the checkpoint volume is full: writing ")
    # Never a corrupt latest: the manifest names a complete checkpoint that verifies and loads; no temp file left.
    manifest = ckpt_io.read_manifest(tiny_volume)
    assert manifest is not None and manifest.step == 3  # keep_last=3: the fourth save found no room
    latest = ckpt_io.latest_checkpoint(tiny_volume)
    assert latest == manifest.path(tiny_volume)
    assert ckpt_io.load(latest)["global_step"] == manifest.step
    assert not [n for n in os.listdir(tiny_volume) if n.endswith(".tmp")]


def test_atomic_save_on_a_full_volume_raises_the_volume_error_and_changes_nothing(tiny_volume: Path) -> None:
    small = tiny_volume / "small.ckpt"
    ckpt_io.atomic_save({"w": torch.zeros(1000)}, small)
    ckpt_io.write_manifest(tiny_volume, small, step=1, epoch=0)
    before = (tiny_volume / "latest.json").read_bytes()
    with pytest.raises(ckpt_io.CheckpointVolumeError) as info:
        ckpt_io.atomic_save({"w": torch.zeros(2 * 1024 * 1024 // 4)}, tiny_volume / "big.ckpt")  # 2 MiB
    assert info.value.errno == errno.ENOSPC and info.value.full
    assert info.value.exit_code == exit_codes.CHECKPOINT_VOLUME_FULL and info.value.reason == "CheckpointVolumeFull"
    assert isinstance(info.value, OSError)  # callers that catch OSError still do
    assert sorted(os.listdir(tiny_volume)) == ["latest.json", "small.ckpt"]
    assert (tiny_volume / "latest.json").read_bytes() == before
    assert ckpt_io.latest_checkpoint(tiny_volume) == str(small)


class FailingFile:
    """A real file object that raises EIO once `limit` bytes went through it, like a dying disk."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw, self.left = raw, limit

    def write(self, data: Any) -> int:
        self.left -= memoryview(data).nbytes
        if self.left < 0:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class FailingDiskIO(TorchCheckpointIO):
    """Writes like the default CheckpointIO until `fail_from_save`; from then on the disk returns EIO mid-file."""

    def __init__(self, fail_from_save: int) -> None:
        self.saves = 0
        self.fail_from_save = fail_from_save

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        self.saves += 1
        if self.saves < self.fail_from_save:
            return super().save_checkpoint(checkpoint, path, storage_options)
        ckpt_io.atomic_write(path, lambda f: torch.save(checkpoint, FailingFile(f, limit=200)))


def test_eio_while_saving_exits_with_the_volume_error_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    message = tmp_path / "termination-log"
    monkeypatch.setenv("VOLT_TERMINATION_MESSAGE_PATH", str(message))
    dirpath = tmp_path / "ck"
    torch.manual_seed(0)
    trainer = quiet_trainer(tmp_path, max_steps=5, enable_checkpointing=True, plugins=[FailingDiskIO(3)],
                            callbacks=[ModelCheckpoint(dirpath=dirpath, every_n_train_steps=1, keep_last=3)])
    with pytest.raises(SystemExit) as exited:
        trainer.fit(TinyModel(), loader(n=80))
    assert exited.value.code == exit_codes.CHECKPOINT_VOLUME_ERROR
    error = exited.value.__cause__
    assert isinstance(error, ckpt_io.CheckpointVolumeError) and error.errno == errno.EIO
    assert message.read_text().startswith("CheckpointVolumeError: the checkpoint volume is failing: writing ")
    assert ckpt_io.read_manifest(dirpath).step == 2  # the last good save stays the latest
    assert ckpt_io.latest_checkpoint(dirpath) == str(dirpath / "epoch=0-step=2.ckpt")
    assert step_files(dirpath) == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt"]  # and no partial file


def test_errors_that_are_not_the_volume_stay_user_errors(tmp_path: Path) -> None:
    class Unpicklable:
        def __reduce__(self) -> Any:
            raise TypeError("cannot pickle this")

    with pytest.raises(TypeError, match="cannot pickle this"):
        ckpt_io.atomic_save({"x": Unpicklable()}, tmp_path / "a.ckpt")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root may write anyway
            with pytest.raises(PermissionError):
                ckpt_io.atomic_save({}, read_only / "a.ckpt")
    finally:
        read_only.chmod(0o700)


# --- retention -----------------------------------------------------------------------------------
def test_retention_keeps_the_last_k_checkpoints(tmp_path: Path) -> None:
    train(tmp_path, tmp_path / "k3", steps=6, keep_last=3)
    assert step_files(tmp_path / "k3") == ["epoch=0-step=4.ckpt", "epoch=0-step=5.ckpt", "epoch=0-step=6.ckpt"]
    train(tmp_path, tmp_path / "k1", steps=6, keep_last=1)  # save_top_k=1 as before: one file
    assert step_files(tmp_path / "k1") == ["epoch=0-step=6.ckpt"]


def test_retention_and_top_k_keep_their_own_files(tmp_path: Path) -> None:
    """Top-2 by score keeps step 1 (the best) and the newest; retention also keeps the steps before it."""
    trainer = train(tmp_path, tmp_path / "k3", steps=6, keep_last=3, monitor="score", mode="max", save_top_k=2)
    assert sorted(os.path.basename(p) for p in trainer.checkpoint_callback.best_k_models) == [
        "epoch=0-step=1.ckpt", "epoch=0-step=6.ckpt"]
    assert step_files(tmp_path / "k3") == [
        "epoch=0-step=1.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=5.ckpt", "epoch=0-step=6.ckpt"]
    train(tmp_path, tmp_path / "k1", steps=6, keep_last=1, monitor="score", mode="max", save_top_k=2)
    assert step_files(tmp_path / "k1") == ["epoch=0-step=1.ckpt", "epoch=0-step=6.ckpt"]  # Lightning's files


def test_retention_comes_from_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLT_CHECKPOINT_DIR", str(tmp_path / "job"))
    assert ModelCheckpoint().keep_last == 3  # a TrainingJob's volume
    monkeypatch.setenv("VOLT_CHECKPOINT_KEEP_LAST", "2")
    assert ModelCheckpoint().keep_last == 2
    assert ModelCheckpoint(keep_last=5).keep_last == 5  # the script's argument wins
    train(tmp_path, tmp_path / "ignored", steps=4, keep_last=None)
    assert step_files(tmp_path / "job") == ["epoch=0-step=3.ckpt", "epoch=0-step=4.ckpt"]
    monkeypatch.setenv("VOLT_CHECKPOINT_KEEP_LAST", "zero")
    with pytest.raises(ValueError, match="VOLT_CHECKPOINT_KEEP_LAST must be an int >= 1, got 'zero'"):
        ModelCheckpoint()
    monkeypatch.delenv("VOLT_CHECKPOINT_KEEP_LAST")  # a malformed job variable fails every ModelCheckpoint first
    with pytest.raises(ValueError, match=r"ModelCheckpoint\(keep_last=0\) must be an int >= 1"):
        ModelCheckpoint(keep_last=0)
    monkeypatch.delenv("VOLT_CHECKPOINT_DIR")
    assert ModelCheckpoint().keep_last == 1  # a local run: Lightning's behaviour


def test_retention_survives_a_restart(tmp_path: Path) -> None:
    """Files released before a restart are still deleted after it (the callback state remembers them)."""
    dirpath = tmp_path / "ck"
    train(tmp_path, dirpath, steps=4, keep_last=2)
    assert step_files(dirpath) == ["epoch=0-step=3.ckpt", "epoch=0-step=4.ckpt"]
    train(tmp_path, dirpath, steps=7, keep_last=2, ckpt_path="last")
    assert step_files(dirpath) == ["epoch=0-step=6.ckpt", "epoch=0-step=7.ckpt"]


# --- a job never resumes another job's run --------------------------------------------------------
def test_a_directory_of_another_job_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    dirpath = tmp_path / "ck"
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    monkeypatch.setenv("VOLT_JOB_UID", first)
    train(tmp_path, dirpath, steps=2)
    assert ckpt_io.read_manifest(dirpath).job_uid == first

    monkeypatch.setenv("VOLT_JOB_UID", second)
    monkeypatch.setenv("VOLT_TERMINATION_MESSAGE_PATH", str(tmp_path / "termination-log"))
    with pytest.raises(SystemExit) as exited:
        train(tmp_path, dirpath, steps=3, ckpt_path="last")
    assert exited.value.code == exit_codes.CONFIG_ERROR
    message = str(exited.value.__cause__)
    assert first in message and second in message and "VOLT_RESUME_ANY_JOB=1" in message
    assert "allowForeignCheckpoints" in message
    assert (tmp_path / "termination-log").read_text() == f"CheckpointOfAnotherJob: {message}"  # for the job's status
    monkeypatch.delenv("VOLT_TERMINATION_MESSAGE_PATH")

    monkeypatch.setenv("VOLT_RESUME_ANY_JOB", "1")  # asked for: resumes, with a warning
    with caplog.at_level(logging.WARNING, logger="volt.checkpoint"):
        resumed = train(tmp_path, dirpath, steps=3, ckpt_path="last")
    assert resumed.ckpt_path == str(dirpath / "epoch=0-step=2.ckpt")
    assert any(first in r.getMessage() and second in r.getMessage() for r in caplog.records)
    assert ckpt_io.read_manifest(dirpath).job_uid == second  # from now on it is this job's run

    monkeypatch.setenv("VOLT_RESUME_ANY_JOB", "maybe")
    with pytest.raises(ValueError, match="VOLT_RESUME_ANY_JOB must be 1/true/yes or 0/false/no, got 'maybe'"):
        ckpt_io.job_ownership()


def test_a_manifest_without_uid_is_accepted_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    dirpath = tmp_path / "ck"
    train(tmp_path, dirpath, steps=2)  # no VOLT_JOB_UID: an older volt or a local run
    assert ckpt_io.read_manifest(dirpath).job_uid is None
    monkeypatch.setenv("VOLT_JOB_UID", "uid-new")
    with caplog.at_level(logging.WARNING, logger="volt.checkpoint"):
        resumed = train(tmp_path, dirpath, steps=3, ckpt_path="last")
    assert resumed.ckpt_path == str(dirpath / "epoch=0-step=2.ckpt")
    assert any("records no job uid" in r.getMessage() for r in caplog.records)
