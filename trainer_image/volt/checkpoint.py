"""Checkpoint IO: atomic, checksummed writes, the ``latest.json`` manifest, and finding a valid checkpoint.

A checkpoint file is either absent or complete: ``atomic_save`` writes to a
temporary file in the same directory, fsyncs it, renames it over the target
(``os.replace`` is atomic on POSIX) and fsyncs the directory so the rename
itself survives a power loss. A process killed at any point leaves the old
file (or nothing) behind, plus at most one stale ``.*.tmp`` file that
``remove_stale_temp_files`` deletes. The SHA-256 of the bytes is computed while
they are written (no second read).

The manifest ``<dir>/latest.json`` names the latest complete, resumable
checkpoint in its directory with its size and SHA-256, lists the earlier ones
it still knows of (``history``), and records the TrainingJob uid that wrote it.
It is written (atomically, the same way) only after the checkpoint it names is
on disk. A checkpoint can still go bad later (a truncated copy, a bit flip, a
disk error): ``load_latest`` and ``resolve_ckpt_path("last")`` verify each
candidate and fall back to the newest valid one. See docs/checkpoints.md.

A full or failing volume while saving raises ``CheckpointVolumeError`` (an
``OSError``) whose ``exit_code`` the Trainer exits with (retryable, see
``volt.exit_codes``); the previous checkpoint and manifest stay untouched.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import errno
import glob
import hashlib
import json
import logging
import os
import pickle
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Set, Tuple, Union

import numpy
import torch

from volt import exit_codes
from volt import contract
from volt.contract import ENV_RESUME_ANY_JOB, JobContract, job_contract

log = logging.getLogger(__name__)

MANIFEST_NAME = "latest.json"
MANIFEST_FORMAT = 2  # 2: size, sha256, job_uid, history; 1 (volt before checksums) is still read
MANIFEST_FORMAT_SHARDED = 3  # a manifest whose latest checkpoint is a sharded directory (adds `files`)
CHECKPOINT_SUFFIX = ".ckpt"
#: At most this many earlier checkpoints (that still exist) are listed: fallback candidates and
#: retention's view. A TrainingJob's checkpoint.keepLast is at most 1000 too.
MAX_HISTORY = 1000
_TEMP_PREFIX = "."
_TEMP_SUFFIX = ".tmp"
_READ_CHUNK = 4 * 1024 * 1024


PathLike = Union[str, "os.PathLike[str]"]
MapLocation = Union[None, str, torch.device, dict, Callable[..., Any]]

# errno values that mean "the volume", not the script: a restart (maybe elsewhere) can succeed.
_VOLUME_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_VOLUME_FAILING_ERRNOS = frozenset({errno.EIO, errno.EROFS, errno.ESTALE})


# --- errors that end the process with a specific exit code ------------------------------------
class CheckpointVolumeError(OSError):
    """Saving a checkpoint failed because its volume is full (ENOSPC, EDQUOT) or failing (EIO, EROFS, ESTALE).

    ``exit_code`` is ``CHECKPOINT_VOLUME_FULL`` or ``CHECKPOINT_VOLUME_ERROR`` (both retryable) and
    ``reason`` the word the operator shows; the Trainer exits with them (``volt.termination``).
    """

    def __init__(self, code: int, path: str, detail: str) -> None:
        super().__init__(code, os.strerror(code), path)
        self.full = code in _VOLUME_FULL_ERRNOS
        self.exit_code = exit_codes.CHECKPOINT_VOLUME_FULL if self.full else exit_codes.CHECKPOINT_VOLUME_ERROR
        self.reason = "CheckpointVolumeFull" if self.full else "CheckpointVolumeError"
        state = "is full" if self.full else "is failing"
        self.message = (
            f"the checkpoint volume {state}: writing {path} failed with {errno.errorcode.get(code, code)} "
            f"({os.strerror(code)}){': ' + detail if detail else ''}. The previous checkpoint and latest.json are "
            "unchanged; " + ("free space or enlarge the volume (spec.checkpoint), or keep fewer checkpoints "
                             "(VOLT_CHECKPOINT_KEEP_LAST)" if self.full else "check the volume and the node's disk")
        )

    def __str__(self) -> str:
        return self.message


class CheckpointCorruptError(RuntimeError):
    """Checkpoints exist for ``ckpt_path="last"`` but none of them is valid: resuming would lose the run."""

    exit_code = exit_codes.CONFIG_ERROR
    reason = "NoValidCheckpoint"


class CheckpointOwnerError(RuntimeError):
    """The checkpoint directory belongs to another TrainingJob (another uid)."""

    exit_code = exit_codes.CONFIG_ERROR
    reason = "CheckpointOfAnotherJob"


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


class _HashingWriter:
    """The temp file as torch.save sees it: every chunk is written and hashed in the same call."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.error: Optional[OSError] = None  # torch turns a writer's OSError into a RuntimeError

    def write(self, data: Any) -> int:
        try:
            written = self._raw.write(data)
        except OSError as err:
            self.error = err
            raise
        self._sha256.update(data)
        self.size += memoryview(data).nbytes
        return written

    def flush(self) -> None:
        try:
            self._raw.flush()
        except OSError as err:
            self.error = err
            raise

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()


@dataclass(frozen=True)
class Digest:
    """What verifies a checkpoint file: its size and SHA-256."""

    size: int
    sha256: str


def _volume_errno(err: BaseException, writer: Optional[_HashingWriter]) -> Optional[int]:
    """The errno that says the volume is full or failing, from ``err``, its causes or the writer."""
    seen: List[BaseException] = []
    current: Optional[BaseException] = err
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    if writer is not None and writer.error is not None:
        seen.append(writer.error)
    for candidate in seen:
        code = getattr(candidate, "errno", None) if isinstance(candidate, OSError) else None
        if code in _VOLUME_FULL_ERRNOS or code in _VOLUME_FAILING_ERRNOS:
            return code
    return None


def _atomic_write(path: PathLike, write: Callable[[Any], None]) -> Digest:
    """Run ``write(file)`` on a temp file next to ``path``, then atomically move it into place.

    ``file`` hashes what passes through it. A full or failing volume raises
    ``CheckpointVolumeError``; nothing at ``path`` changes on any error.
    """
    path = os.fspath(path)
    dirpath = os.path.dirname(os.path.abspath(path))
    writer: Optional[_HashingWriter] = None
    tmp_path = None
    try:
        os.makedirs(dirpath, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(
            prefix=_TEMP_PREFIX + os.path.basename(path) + ".", suffix=_TEMP_SUFFIX, dir=dirpath
        )
        with os.fdopen(fd, "wb") as raw:
            # mkstemp creates 0600; give the file the mode open() would (0666 minus the
            # umask) so other readers of a shared checkpoint volume (eval jobs, another UID) can read it.
            os.fchmod(raw.fileno(), 0o666 & ~_current_umask())
            writer = _HashingWriter(raw)
            write(writer)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp_path, path)
        tmp_path = None
    except BaseException as err:
        # Includes KeyboardInterrupt/SystemExit: never leave our temp file behind.
        if tmp_path is not None:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass
        code = _volume_errno(err, writer) if isinstance(err, Exception) else None
        if code is not None:
            raise CheckpointVolumeError(code, path, "" if isinstance(err, OSError) else str(err)) from err
        raise
    _fsync_dir(dirpath)
    assert writer is not None
    return Digest(writer.size, writer.hexdigest())


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> Digest:
    """Write ``path`` atomically through ``write(file)`` (a binary file object), for CheckpointIO plugins
    with their own format: the same temp file, fsync, rename, SHA-256 and volume errors as ``atomic_save``."""
    digest = _atomic_write(path, write)
    _recent_digests.put(os.path.realpath(os.fspath(path)), digest)
    return digest


def _write_bytes(payload: bytes) -> Callable[[Any], None]:
    return lambda f: f.write(payload)


class _RecentDigests:
    """Digests of the files this process wrote last, so the manifest records them without re-reading."""

    def __init__(self, capacity: int = 64) -> None:
        self._capacity = capacity
        self._items: "OrderedDict[str, Digest]" = OrderedDict()
        self._lock = threading.Lock()

    def put(self, path: str, digest: Digest) -> None:
        with self._lock:
            self._items[path] = digest
            self._items.move_to_end(path)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def get(self, path: str) -> Optional[Digest]:
        with self._lock:
            return self._items.get(path)


_recent_digests = _RecentDigests()


def atomic_save(obj: Any, path: PathLike) -> int:
    """``torch.save(obj)`` to ``path`` so that ``path`` is never seen half-written.

    Returns the number of bytes written. The file's SHA-256 is computed while
    writing and recorded by the next ``write_manifest`` that names ``path``.
    """
    if not os.fspath(path):
        raise ValueError("atomic_save: `path` must be a non-empty file path")
    digest = _atomic_write(path, lambda f: torch.save(obj, f))
    _recent_digests.put(os.path.realpath(os.fspath(path)), digest)
    return digest.size


def file_digest(path: PathLike) -> Digest:
    """Size and SHA-256 of a file on disk (one full read)."""
    sha256 = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_READ_CHUNK)
            if not chunk:
                break
            sha256.update(chunk)
            size += len(chunk)
    return Digest(size, sha256.hexdigest())


# --- loading: the trust model (docs/checkpoints.md, "What a checkpoint may contain") ------------
#: Set to 1 (e.g. in a TrainingJob's spec.env) to load checkpoints with full unpickling.
ENV_ALLOW_UNSAFE = "VOLT_ALLOW_UNSAFE_CHECKPOINTS"

#: Besides tensors and plain containers, what volt's own checkpoints hold: numpy's RNG
#: state and arrays (the exact-resume RNG snapshots), and hparams containers.
SAFE_GLOBALS: List[Any] = [
    numpy.ndarray,
    numpy.dtype,
    numpy._core.multiarray._reconstruct,  # numpy >= 2 (the torch image's)
    *[type(numpy.dtype(name)) for name in ("bool", "uint8", "int32", "uint32", "int64", "float32", "float64")],
    argparse.Namespace,
    OrderedDict,
]


class CheckpointUnsafeError(RuntimeError):
    """A checkpoint holds objects that only full unpickling (which runs code the file names) can load."""

    exit_code = exit_codes.CONFIG_ERROR
    reason = "UnsafeCheckpoint"


def allow_unsafe_load(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether ``VOLT_ALLOW_UNSAFE_CHECKPOINTS`` asks for full unpickling (a malformed value is an error)."""
    return contract._flag(os.environ if environ is None else environ, ENV_ALLOW_UNSAFE)


def unsafe_globals(f: Union[str, BinaryIO]) -> List[str]:
    """The classes and functions in a ``torch.save`` file (a path or a seekable stream) that a
    weights-only load refuses (none: the file is damaged)."""
    allowed = {f"{g.__module__}.{g.__name__}" for g in SAFE_GLOBALS}
    try:
        return sorted(n for n in torch.serialization.get_unsafe_globals_in_checkpoint(f) if n not in allowed)
    except Exception:  # noqa: BLE001 - not a readable zip checkpoint: damage, not a foreign object
        return []


def unsafe_checkpoint_error(where: str, foreign: List[str]) -> CheckpointUnsafeError:
    """The refusal of a checkpoint (``where``: its path, and the part of it) that holds ``foreign``
    objects: the same words for single-file and sharded checkpoints."""
    return CheckpointUnsafeError(
        f"Checkpoint {where} holds Python objects that volt does not load without trusting the file "
        f"({', '.join(foreign[:8])}). Full unpickling runs whatever code the file names, so volt loads tensors, plain "
        f"containers and its own objects only. If you trust it: allow its classes with "
        f"torch.serialization.add_safe_globals([...]) in your script, or set {ENV_ALLOW_UNSAFE}=1 "
        "(a TrainingJob's spec.env) to load every checkpoint with full unpickling"
    )


def load(path: PathLike, map_location: MapLocation = None, weights_only: Optional[bool] = None) -> Any:
    """Load a checkpoint written by ``atomic_save`` (or ``torch.save``).

    ``weights_only`` (default: True unless ``VOLT_ALLOW_UNSAFE_CHECKPOINTS=1``) loads
    tensors, plain containers, numbers, strings and ``SAFE_GLOBALS`` only, so a file
    on a shared volume cannot run code in this process. A checkpoint that needs more
    raises ``CheckpointUnsafeError`` naming the object and the two ways on: allow its
    class with ``torch.serialization.add_safe_globals``, or trust every checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint not found: {path!r}")
    if weights_only is None:
        weights_only = not allow_unsafe_load()
    if not weights_only:
        return torch.load(path, map_location=map_location, weights_only=False)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        foreign = unsafe_globals(path)
        if not foreign:
            raise
        raise unsafe_checkpoint_error(path, foreign) from err


# --- sharded (DCP) checkpoint directories (written by volt.checkpoint_sharded) -----------------
SHARDED_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards

#: Sharded checkpoints whose async save is in flight: path -> "run this once it is committed".
_in_flight: Dict[str, Callable[[Callable[[], None]], None]] = {}


def register_in_flight(path: PathLike, after_commit: Optional[Callable[[Callable[[], None]], None]]) -> None:
    """Mark ``path`` as being saved in the background (``write_manifest`` defers to ``after_commit``), or
    clear the mark (``after_commit=None``)."""
    key = os.path.abspath(os.fspath(path))
    if after_commit is None:
        _in_flight.pop(key, None)
    else:
        _in_flight[key] = after_commit


def sharded_digest(dirpath: PathLike) -> Tuple[Digest, Dict[str, int]]:
    """What verifies a sharded checkpoint without reading its shards: the SHA-256 of its index
    (``.metadata``), the total size and every file's size."""
    dirpath = os.fspath(dirpath)
    files = {entry.name: entry.stat().st_size for entry in os.scandir(dirpath) if entry.is_file()}
    if SHARDED_METADATA not in files:
        raise FileNotFoundError(f"{dirpath!r} is not a sharded checkpoint: no {SHARDED_METADATA}")
    return Digest(sum(files.values()), file_digest(os.path.join(dirpath, SHARDED_METADATA)).sha256), files


def verify_sharded(path: str, entry: Optional[Entry]) -> Optional[str]:
    """Why the sharded checkpoint directory ``path`` is not usable, or None."""
    try:
        if not os.path.isfile(os.path.join(path, SHARDED_METADATA)):
            return f"a directory without {SHARDED_METADATA} (not a complete sharded checkpoint)"
        if entry is None or entry.files is None:
            return None
        for name, size in entry.files.items():
            try:
                actual = os.path.getsize(os.path.join(path, name))
            except FileNotFoundError:
                return f"shard {name} is missing"
            if actual != size:
                return f"shard {name} has {actual} bytes where the manifest recorded {size} (truncated or overwritten)"
        if entry.sha256:
            actual_sha = file_digest(os.path.join(path, SHARDED_METADATA)).sha256
            if actual_sha != entry.sha256:
                return f"{SHARDED_METADATA} SHA-256 {actual_sha[:12]}... does not match the manifest's (corrupt)"
    except OSError as err:
        return f"unreadable: {err}"
    return None


# --- the manifest -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One resumable checkpoint as the manifest records it."""

    checkpoint: str  # path relative to the manifest's directory (usually a bare file name)
    step: int
    epoch: int
    unix_time: float
    size: Optional[int] = None  # None: written by a volt without checksums
    sha256: Optional[str] = None  # of the file; of its SHARDED_METADATA file for a sharded directory
    files: Optional[Dict[str, int]] = None  # a sharded directory: every file's size; None: a single file

    def path(self, dirpath: PathLike) -> str:
        return os.path.join(os.fspath(dirpath), self.checkpoint)


@dataclass(frozen=True)
class Manifest:
    """What ``latest.json`` says: the newest complete checkpoint in its directory, and the earlier ones."""

    checkpoint: str  # path relative to the manifest's directory (usually a bare file name)
    step: int
    epoch: int
    time: str  # ISO 8601, UTC
    unix_time: float
    format: int = MANIFEST_FORMAT
    size: Optional[int] = None
    sha256: Optional[str] = None
    job_uid: Optional[str] = None  # the TrainingJob's uid ($VOLT_JOB_UID) that wrote it
    history: Tuple[Entry, ...] = field(default=())  # earlier checkpoints, newest first
    files: Optional[Dict[str, int]] = None  # a sharded checkpoint directory: every file's size

    def path(self, dirpath: PathLike) -> str:
        return os.path.join(os.fspath(dirpath), self.checkpoint)

    @property
    def latest(self) -> Entry:
        return Entry(self.checkpoint, self.step, self.epoch, self.unix_time, self.size, self.sha256, self.files)

    def entries(self) -> Tuple[Entry, ...]:
        """The latest checkpoint, then the earlier ones, newest first."""
        return (self.latest,) + self.history


@dataclass(frozen=True)
class JobOwnership:
    """Which TrainingJob this process belongs to, and whether it may resume another job's checkpoints."""

    uid: Optional[str]
    resume_any_job: bool = False


def job_ownership(env: Optional[Mapping[str, str]] = None) -> JobOwnership:
    """Read ``VOLT_JOB_UID`` and ``VOLT_RESUME_ANY_JOB`` (set by the operator in every pod)."""
    job = job_contract() if env is None else JobContract.from_env(env)
    return JobOwnership(job.job_uid, job.resume_any_job)


def _entry_history(previous: Optional[Manifest], dirpath: str, new_name: str, job_uid: Optional[str]) -> Tuple[Entry, ...]:
    """The new manifest's history: the previous manifest's entries that still exist, newest first."""
    if previous is None or (previous.job_uid and job_uid and previous.job_uid != job_uid):
        return ()  # another job's checkpoints are not ours to fall back to
    kept: List[Entry] = []
    names = {new_name}
    for entry in previous.entries():
        if entry.checkpoint in names:
            continue  # overwritten by the new checkpoint (last.ckpt) or listed twice
        if os.path.exists(entry.path(dirpath)):
            kept.append(entry)
            names.add(entry.checkpoint)
    return tuple(kept[:MAX_HISTORY])


def write_manifest(
    dirpath: PathLike, ckpt_path: PathLike, *, step: int, epoch: int, job_uid: Optional[str] = None
) -> Optional[Manifest]:
    """Record ``ckpt_path`` (a complete checkpoint under ``dirpath``) as the latest one.

    Call it only after the checkpoint file is fully written (``atomic_save`` returned). For a
    sharded checkpoint whose async save is still in flight (``register_in_flight``) the write is
    deferred until the save commits, and None is returned.
    The manifest stores the path relative to ``dirpath`` so the volume can be
    mounted elsewhere after a restart, the file's size and SHA-256 (from
    ``atomic_save``; a file this process did not write through it is read once),
    the job uid (``job_uid``, default ``$VOLT_JOB_UID``) and the earlier entries.
    """
    dirpath = os.path.abspath(os.fspath(dirpath))
    ckpt_path = os.path.abspath(os.fspath(ckpt_path))
    relative = os.path.relpath(ckpt_path, dirpath)
    if relative.startswith(os.pardir + os.sep) or relative == os.pardir:
        raise ValueError(f"write_manifest: `ckpt_path` {ckpt_path!r} must be inside `dirpath` {dirpath!r}")
    in_flight = _in_flight.get(ckpt_path)
    if in_flight is not None:  # an async save: the manifest waits until every shard is durable
        in_flight(lambda: write_manifest(dirpath, ckpt_path, step=step, epoch=epoch, job_uid=job_uid))
        return None
    files: Optional[Dict[str, int]] = None
    if os.path.isdir(ckpt_path):
        digest, files = sharded_digest(ckpt_path)
    elif not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"write_manifest: `ckpt_path` {ckpt_path!r} does not exist")
    else:
        digest = _recent_digests.get(os.path.realpath(ckpt_path))
        if digest is None or digest.size != os.path.getsize(ckpt_path):
            digest = file_digest(ckpt_path)  # written by a custom CheckpointIO, or rewritten since
    if job_uid is None:
        job_uid = contract.job_uid(os.environ)  # this variable alone: a save must not fail on another
    now = time.time()
    manifest = Manifest(
        checkpoint=relative,
        step=int(step),
        epoch=int(epoch),
        time=_dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="seconds"),
        unix_time=now,
        size=digest.size,
        sha256=digest.sha256,
        job_uid=job_uid,
        history=_entry_history(read_manifest(dirpath, quiet=True), dirpath, relative, job_uid),
        files=files,
        format=MANIFEST_FORMAT if files is None else MANIFEST_FORMAT_SHARDED,
    )
    payload = (json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n").encode()
    _atomic_write(os.path.join(dirpath, MANIFEST_NAME), _write_bytes(payload))
    return manifest


def _parse_entry(data: Mapping[str, Any]) -> Entry:
    size = data.get("size")
    sha256 = data.get("sha256")
    files = data.get("files")
    return Entry(
        checkpoint=str(data["checkpoint"]),
        step=int(data["step"]),
        epoch=int(data["epoch"]),
        unix_time=float(data["unix_time"]),
        size=None if size is None else int(size),
        sha256=None if sha256 is None else str(sha256),
        files=None if files is None else {str(k): int(v) for k, v in dict(files).items()},
    )


def read_manifest(dirpath: PathLike, quiet: bool = False) -> Optional[Manifest]:
    """The manifest in ``dirpath``, or None when there is none or it is unreadable (logged unless ``quiet``)."""
    path = os.path.join(os.fspath(dirpath), MANIFEST_NAME)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode())
        latest = _parse_entry(data)
        job_uid = data.get("job_uid")
        return Manifest(
            checkpoint=latest.checkpoint,
            step=latest.step,
            epoch=latest.epoch,
            time=str(data["time"]),
            unix_time=latest.unix_time,
            format=int(data.get("format", 1)),
            size=latest.size,
            sha256=latest.sha256,
            job_uid=None if job_uid is None else str(job_uid),
            history=tuple(_parse_entry(item) for item in data.get("history") or ()),
            files=latest.files,
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        # Not through write_manifest (atomic); a hand edit or a damaged volume might.
        if not quiet:
            log.warning("Ignoring unreadable checkpoint manifest %s: %s", path, err)
        return None


def check_owner(manifest: Optional[Manifest], dirpath: PathLike, ownership: Optional[JobOwnership] = None) -> None:
    """Refuse to resume a directory another TrainingJob (another uid) wrote, unless allowed.

    A manifest without a uid (written by an older volt, or outside a TrainingJob) is accepted with a warning.
    """
    if manifest is None:
        return
    ownership = job_ownership() if ownership is None else ownership
    if ownership.uid is None:
        return  # not run by the operator: nothing to compare
    if manifest.job_uid is None:
        log.warning(
            "Checkpoint manifest in %s records no job uid (written by an older volt or outside a TrainingJob): "
            "resuming it as job %s", dirpath, ownership.uid,
        )
        return
    if manifest.job_uid == ownership.uid:
        return
    if ownership.resume_any_job:
        log.warning(
            "Resuming checkpoints in %s written by job uid %s as job uid %s (%s=1)",
            dirpath, manifest.job_uid, ownership.uid, ENV_RESUME_ANY_JOB,
        )
        return
    raise CheckpointOwnerError(
        f"The checkpoint directory {os.fspath(dirpath)} was written by job uid {manifest.job_uid}, but this is job "
        f"uid {ownership.uid}: a new TrainingJob (for example one recreated with a deleted job's name) does not "
        f"resume another job's run. To resume it on purpose set spec.checkpoint.allowForeignCheckpoints: true "
        f"({ENV_RESUME_ANY_JOB}=1); to start fresh, use another checkpoint path or resume: Never"
    )


# --- verifying and choosing a checkpoint to resume -------------------------------------------------
_ZIP_MAGIC = b"PK\x03\x04"


def verify_checkpoint(path: PathLike, entry: Optional[Entry] = None) -> Optional[str]:
    """Why the checkpoint at ``path`` is not usable, or None when it is.

    With a manifest ``entry`` that records them, the size and the SHA-256 must
    match (one full read). Without one, a torch zip file must still have its
    central directory (a truncated one has not).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return verify_sharded(path, entry)
    try:
        size = os.path.getsize(path)
        if not os.path.isfile(path):
            return "not a file"
        if entry is not None and entry.size is not None and size != entry.size:
            return f"{size} bytes where the manifest recorded {entry.size} (truncated or overwritten)"
        if entry is not None and entry.sha256:
            actual = file_digest(path).sha256
            if actual != entry.sha256:
                return f"SHA-256 {actual[:12]}... does not match the manifest's {entry.sha256[:12]}... (corrupt)"
            return None
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            zipped = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        if zipped and not zipfile.is_zipfile(path):
            return "a torch zip file without its central directory (truncated)"
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable: {err}"
    return None


def inside(path: PathLike, dirpath: PathLike) -> bool:
    """Whether ``path``, symbolic links resolved, lies inside ``dirpath``: a manifest (or a link) on a
    shared volume cannot point a job at a file elsewhere, such as another job's directory."""
    root = os.path.realpath(dirpath)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def _candidates(dirpath: str, ownership: Optional[JobOwnership] = None) -> List[Tuple[str, Optional[Entry]]]:
    """Checkpoints to resume from, best first: the manifest's entries, then other ``*.ckpt`` by age."""
    manifest = read_manifest(dirpath)
    check_owner(manifest, dirpath, ownership)
    out: List[Tuple[str, Optional[Entry]]] = []
    seen: Set[str] = set()
    for entry in manifest.entries() if manifest is not None else ():
        path = entry.path(dirpath)
        if not inside(path, dirpath):
            log.warning("Checkpoint manifest in %s names %s, outside that directory: ignored (a checkpoint is "
                        "loaded only from its job's directory or the path the job names)", dirpath, entry.checkpoint)
            continue
        if os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            out.append((path, entry))
    scanned = [p for p in glob.glob(os.path.join(glob.escape(dirpath), "*" + CHECKPOINT_SUFFIX))
               if (os.path.isfile(p) or os.path.isfile(os.path.join(p, SHARDED_METADATA)))
               and os.path.realpath(p) not in seen and inside(p, dirpath)]
    scanned.sort(key=_mtime, reverse=True)
    out.extend((path, None) for path in scanned)
    return out


def _mtime(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return -1.0


def _report_fallback(dirpath: str, skipped: List[Tuple[str, str]], chosen: Optional[str]) -> None:
    if not skipped:
        return
    if chosen is None:
        details = "; ".join(f"{os.path.basename(p)}: {why}" for p, why in skipped)
        raise CheckpointCorruptError(
            f"No valid checkpoint to resume from in {dirpath}: {details}. Restore a good checkpoint there, "
            "or start fresh (resume: Never, or another checkpoint path)"
        )
    for path, why in skipped:
        if why == "missing":
            log.warning("Checkpoint manifest in %s names %s, which is gone; resuming from %s", dirpath, path, chosen)
        else:
            log.warning("Checkpoint %s is unusable (%s); resuming from %s, the newest valid checkpoint in %s",
                        path, why, chosen, dirpath)


def latest_checkpoint(dirpath: Optional[PathLike]) -> Optional[str]:
    """Path of the newest valid checkpoint in ``dirpath``, or None when there is none.

    Candidates, in order: the manifest's latest checkpoint, its earlier ones,
    then any other ``*.ckpt`` by modification time. Each is checked with
    ``verify_checkpoint``; skipped ones are logged with the one chosen instead.
    Raises ``CheckpointCorruptError`` when checkpoints exist but none is valid,
    ``CheckpointOwnerError`` when the manifest names another job (``check_owner``).
    """
    if dirpath is None or not os.path.isdir(os.fspath(dirpath)):
        return None
    dirpath = os.fspath(dirpath)
    skipped: List[Tuple[str, str]] = []
    for path, entry in _candidates(dirpath):
        why = verify_checkpoint(path, entry)
        if why is None:
            _report_fallback(dirpath, skipped, path)
            return path
        skipped.append((path, why))
    _report_fallback(dirpath, skipped, None)
    return None


def load_latest(
    dirpath: Optional[PathLike],
    load_fn: Callable[[str], Any],
    *,
    is_global_zero: bool = True,
    broadcast: Optional[Callable[[Any], Any]] = None,
    ownership: Optional[JobOwnership] = None,
) -> Tuple[Optional[str], Optional[Any]]:
    """Load the newest valid checkpoint in ``dirpath``: ``(path, checkpoint)``, or ``(None, None)`` if none exists.

    Like ``latest_checkpoint``, and a candidate that ``load_fn`` cannot load
    (unpicklable, a torch error) is skipped too. Under DDP pass the strategy's
    ``broadcast``: global rank 0 chooses, every rank loads the same file, and
    an error is raised on every rank. ``ownership``: this job's uid (default: from the environment).
    """
    chosen: Optional[str] = None
    checkpoint: Any = None
    failure: Optional[Tuple[str, str]] = None
    error: Optional[Exception] = None
    if is_global_zero:
        try:
            chosen, checkpoint = _load_first_valid(dirpath, load_fn, ownership)
        except Exception as err:  # noqa: BLE001 - told to every rank, so none waits in the broadcast
            error, failure = err, (type(err).__name__, str(err))
    if broadcast is not None:
        chosen, failure = broadcast((chosen, failure))
    if error is not None:
        raise error
    if failure is not None:
        kinds = {cls.__name__: cls for cls in (CheckpointOwnerError, CheckpointCorruptError, CheckpointUnsafeError)}
        raise kinds.get(failure[0], RuntimeError)(
            failure[1] if failure[0] in kinds else f"global rank 0 could not choose a checkpoint: {failure[1]}")
    if chosen is not None and checkpoint is None:
        checkpoint = load_fn(chosen)  # the other ranks load what rank 0 verified
    return chosen, checkpoint


def _load_first_valid(
    dirpath: Optional[PathLike], load_fn: Callable[[str], Any], ownership: Optional[JobOwnership]
) -> Tuple[Optional[str], Any]:
    if dirpath is None or not os.path.isdir(os.fspath(dirpath)):
        return None, None
    dirpath = os.fspath(dirpath)
    skipped: List[Tuple[str, str]] = []
    for path, entry in _candidates(dirpath, ownership):
        why = verify_checkpoint(path, entry)
        if why is None:
            try:
                checkpoint = load_fn(path)
            except CheckpointUnsafeError:
                raise  # not damage: an older checkpoint of the same run would be refused alike
            except Exception as err:  # noqa: BLE001 - any other load failure makes it unusable
                why = f"cannot be loaded: {type(err).__name__}: {str(err)[:300]}"
            else:
                _report_fallback(dirpath, skipped, path)
                return path, checkpoint
        skipped.append((path, why))
    _report_fallback(dirpath, skipped, None)
    return None, None


def recent_checkpoints(dirpath: PathLike, keep_last: int) -> Set[str]:
    """Real paths of the checkpoints of the ``keep_last`` newest steps the manifest lists (retention keeps them)."""
    manifest = read_manifest(dirpath, quiet=True)
    if manifest is None:
        return set()
    steps: List[int] = []
    kept: Set[str] = set()
    for entry in manifest.entries():
        if entry.step not in steps:
            if len(steps) >= keep_last:
                break
            steps.append(entry.step)
        kept.add(os.path.realpath(entry.path(dirpath)))
    return kept


def resolve_ckpt_path(
    ckpt_path: Optional[PathLike], dirpath: Optional[PathLike], best_path: Optional[str] = None
) -> Optional[str]:
    """Turn ``fit(ckpt_path=...)`` into a file to load, or None to start fresh.

    - None: start fresh.
    - "last": the newest valid checkpoint in ``dirpath`` (see ``latest_checkpoint``);
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
        if not os.path.exists(best_path):
            raise FileNotFoundError(f"ckpt_path='best': the best checkpoint {best_path!r} does not exist")
        return best_path
    if not os.path.exists(ckpt_path):
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
        if entry.name.startswith(_TEMP_PREFIX) and entry.name.endswith(_TEMP_SUFFIX):
            try:
                if entry.is_dir(follow_symlinks=False):  # a sharded checkpoint's uncommitted directory
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
