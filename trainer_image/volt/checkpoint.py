"""Checkpoint IO: atomic writes, loading, and the ``latest.json`` manifest.

A checkpoint file is either absent or complete: ``atomic_save`` writes to a
temporary file in the same directory, fsyncs it, renames it over the target
(``os.replace`` is atomic on POSIX) and fsyncs the directory so the rename
itself survives a power loss. A process killed at any point leaves the old
file (or nothing) behind, plus at most one stale ``.*.tmp`` file that
``remove_stale_temp_files`` deletes.

The manifest ``<dir>/latest.json`` names the latest complete, resumable
checkpoint in its directory. It is written (atomically, the same way) only
after the checkpoint it names is on disk, so it never points at a partial file.
``resolve_ckpt_path(ckpt_path="last", ...)`` reads it; see docs/checkpoints.md.
"""
from __future__ import annotations

import datetime as _dt
import glob
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Union

import torch

log = logging.getLogger(__name__)

MANIFEST_NAME = "latest.json"
MANIFEST_FORMAT = 1
CHECKPOINT_SUFFIX = ".ckpt"
_TEMP_PREFIX = "."
_TEMP_SUFFIX = ".tmp"

PathLike = Union[str, "os.PathLike[str]"]
MapLocation = Union[None, str, torch.device, dict, Callable[..., Any]]


def _fsync_dir(dirpath: str) -> None:
    # Persist the directory entry created by the rename; not supported on every
    # filesystem (some network filesystems refuse O_RDONLY on directories).
    try:
        fd = os.open(dirpath, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    """The process umask, read without changing it (os.umask is a process-wide swap)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: swap and restore at once
    os.umask(mask)
    return mask


def _atomic_write(path: PathLike, write: Callable[[str], None]) -> int:
    """Run ``write(tmp_path)`` on a temp file next to ``path``, then atomically move it into place."""
    path = os.fspath(path)
    dirpath = os.path.dirname(os.path.abspath(path))
    os.makedirs(dirpath, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(
        prefix=_TEMP_PREFIX + os.path.basename(path) + ".", suffix=_TEMP_SUFFIX, dir=dirpath
    )
    os.close(fd)
    try:
        # mkstemp creates 0600; give the file the mode open() would (0666 minus the
        # umask) so other readers of a shared checkpoint volume (eval jobs, another UID) can read it.
        os.chmod(tmp_path, 0o666 & ~_current_umask())
        # Writers get a path, not a Python file object: torch.save then writes
        # from C++ directly, measurably faster for large states.
        write(tmp_path)
        fd = os.open(tmp_path, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        size = os.path.getsize(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        # Includes KeyboardInterrupt/SystemExit: never leave our temp file behind.
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(dirpath)
    return size


def _write_bytes(payload: bytes) -> Callable[[str], None]:
    def write(tmp_path: str) -> None:
        with open(tmp_path, "wb") as f:
            f.write(payload)

    return write


def atomic_save(obj: Any, path: PathLike) -> int:
    """``torch.save(obj)`` to ``path`` so that ``path`` is never seen half-written.

    Returns the number of bytes written.
    """
    if not os.fspath(path):
        raise ValueError("atomic_save: `path` must be a non-empty file path")
    return _atomic_write(path, lambda tmp_path: torch.save(obj, tmp_path))


def load(path: PathLike, map_location: MapLocation = None, weights_only: bool = False) -> Any:
    """Load a checkpoint written by ``atomic_save`` (or ``torch.save``).

    ``weights_only=False`` by default because Lightning-style checkpoints hold
    hyper-parameters and callback states that are arbitrary Python objects:
    load only checkpoints you trust.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path!r}")
    return torch.load(path, map_location=map_location, weights_only=weights_only)


@dataclass(frozen=True)
class Manifest:
    """What ``latest.json`` says: the newest complete checkpoint in its directory."""

    checkpoint: str  # path relative to the manifest's directory (usually a bare file name)
    step: int
    epoch: int
    time: str  # ISO 8601, UTC
    unix_time: float
    format: int = MANIFEST_FORMAT

    def path(self, dirpath: PathLike) -> str:
        return os.path.join(os.fspath(dirpath), self.checkpoint)


def write_manifest(dirpath: PathLike, ckpt_path: PathLike, *, step: int, epoch: int) -> Manifest:
    """Record ``ckpt_path`` (a complete checkpoint under ``dirpath``) as the latest one.

    Call it only after the checkpoint file is fully written (``atomic_save`` returned).
    The manifest stores the path relative to ``dirpath`` so the volume can be
    mounted elsewhere after a restart.
    """
    dirpath = os.path.abspath(os.fspath(dirpath))
    ckpt_path = os.path.abspath(os.fspath(ckpt_path))
    relative = os.path.relpath(ckpt_path, dirpath)
    if relative.startswith(os.pardir + os.sep) or relative == os.pardir:
        raise ValueError(f"write_manifest: `ckpt_path` {ckpt_path!r} must be inside `dirpath` {dirpath!r}")
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"write_manifest: `ckpt_path` {ckpt_path!r} does not exist")
    now = time.time()
    manifest = Manifest(
        checkpoint=relative,
        step=int(step),
        epoch=int(epoch),
        time=_dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="seconds"),
        unix_time=now,
    )
    payload = (json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(os.path.join(dirpath, MANIFEST_NAME), _write_bytes(payload))
    return manifest


def read_manifest(dirpath: PathLike) -> Optional[Manifest]:
    """The manifest in ``dirpath``, or None when there is none or it is unreadable."""
    path = os.path.join(os.fspath(dirpath), MANIFEST_NAME)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode())
        return Manifest(
            checkpoint=str(data["checkpoint"]),
            step=int(data["step"]),
            epoch=int(data["epoch"]),
            time=str(data["time"]),
            unix_time=float(data["unix_time"]),
            format=int(data.get("format", MANIFEST_FORMAT)),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        # Cannot happen through write_manifest (atomic); a hand-edited file might.
        log.warning("Ignoring unreadable checkpoint manifest %s: %s", path, err)
        return None


def latest_checkpoint(dirpath: Optional[PathLike]) -> Optional[str]:
    """Path of the latest complete checkpoint in ``dirpath``, or None.

    The manifest decides; if it is missing or names a file that no longer
    exists, fall back to the newest ``*.ckpt`` by modification time (every
    ``*.ckpt`` written by ``atomic_save`` is complete).
    """
    if dirpath is None or not os.path.isdir(os.fspath(dirpath)):
        return None
    manifest = read_manifest(dirpath)
    if manifest is not None:
        path = manifest.path(dirpath)
        if os.path.isfile(path):
            return path
        log.warning("Checkpoint manifest in %s names %r, which is gone", dirpath, manifest.checkpoint)
    candidates = glob.glob(os.path.join(glob.escape(os.fspath(dirpath)), "*" + CHECKPOINT_SUFFIX))
    candidates = [c for c in candidates if os.path.isfile(c)]
    if not candidates:
        return None
    return max(candidates, key=os.path.getmtime)


def resolve_ckpt_path(
    ckpt_path: Optional[PathLike], dirpath: Optional[PathLike], best_path: Optional[str] = None
) -> Optional[str]:
    """Turn ``fit(ckpt_path=...)`` into a file to load, or None to start fresh.

    - None: start fresh.
    - "last": the latest complete checkpoint in ``dirpath`` (see ``latest_checkpoint``);
      None when nothing was saved yet, so a first start and a restart can share one setting.
    - "best": ``best_path`` (ModelCheckpoint.best_model_path); an error when there is none.
    - anything else: a path that must exist.
    """
    if ckpt_path is None:
        return None
    if not isinstance(ckpt_path, (str, os.PathLike)):
        raise TypeError(f"`ckpt_path` must be None, 'last', 'best' or a path, got {type(ckpt_path).__name__}")
    ckpt_path = os.fspath(ckpt_path)
    if ckpt_path == "last":
        found = latest_checkpoint(dirpath)
        if found is None:
            log.info("ckpt_path='last': no checkpoint in %s yet, starting from scratch", dirpath)
        return found
    if ckpt_path == "best":
        if not best_path:
            raise ValueError(
                "ckpt_path='best' but no best checkpoint is known: configure a ModelCheckpoint "
                "(with `monitor` to rank checkpoints) and train first, or pass a path"
            )
        if not os.path.isfile(best_path):
            raise FileNotFoundError(f"ckpt_path='best': the best checkpoint {best_path!r} does not exist")
        return best_path
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"`ckpt_path` {ckpt_path!r} does not exist (expected 'last', 'best' or a file)")
    return ckpt_path


def remove_stale_temp_files(dirpath: PathLike) -> int:
    """Delete temp files left by writers killed mid-save; returns how many were removed.

    Only call this when no other process is writing into ``dirpath``.
    """
    dirpath = os.fspath(dirpath)
    if not os.path.isdir(dirpath):
        return 0
    removed = 0
    for entry in os.scandir(dirpath):
        if entry.is_file() and entry.name.startswith(_TEMP_PREFIX) and entry.name.endswith(_TEMP_SUFFIX):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
