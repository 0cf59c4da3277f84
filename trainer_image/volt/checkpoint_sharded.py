"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP): every rank writes its own part.

A sharded checkpoint is a directory (named like a file checkpoint, ``last.ckpt/``)
holding DCP's ``.metadata`` and one ``__<rank>_0.distcp`` file per writing rank, in
which every tensor is stored as its raw bytes (``volt.checkpoint_raw``; checkpoints
whose tensors DCP stored with ``torch.save`` still load).
Under FSDP each rank writes its own shards; under DDP the replicated tensors are
split between the ranks (DCP de-duplicates them), so N ranks write in parallel.

Commit protocol (what makes ``latest.json`` safe):

1. every rank writes its files into ``.<name>.step<N>.tmp/`` next to the target and
   fsyncs them (``RawFileSystemWriter(sync_files=True)``);
2. DCP gathers every rank's write results on rank 0, which then writes ``.metadata``:
   when rank 0's save returns, every shard is durable;
3. rank 0 swaps the directory into place (the old one is renamed aside first, to a
   hidden ``.tmp`` name), fsyncs the parent, and only then writes the manifest, which
   records each file's size and the SHA-256 of ``.metadata`` (``verify_checkpoint``).
   The old directory is deleted on a background thread (off the save's critical path;
   one killed mid-delete is removed by ``remove_stale_temp_files``).

A process killed before step 3 leaves a ``.tmp`` directory and the previous
manifest untouched. In async mode (``async_save=True``) ``save_checkpoint``
returns after the staging copy (every tensor copied into host buffers that are kept
and refilled in place at the next save); steps 1-3 run on a background thread with
their own gloo process group, and the next save first waits for the one in flight
(never two at once), so the buffers are free again when it refills them.

Loading reads a sharded checkpoint back into full (unsharded) tensors on CPU
with no process group (``load_sharded``): the same dict a single-file checkpoint
holds, so it resumes under any strategy and any world size. It follows the same
trust model as a single file (docs/checkpoints.md): DCP itself unpickles
``.metadata`` and every non-tensor entry with full unpickling, so volt reads
``.metadata`` with an unpickler that knows only DCP's own classes, and the
entries with ``torch.load(weights_only=True)``; anything else is refused with
``CheckpointUnsafeError`` unless ``VOLT_ALLOW_UNSAFE_CHECKPOINTS=1``.
"""
from __future__ import annotations

import atexit
import copy
import functools
import io
import logging
import os
import pickle
import shutil
import threading
import uuid
from concurrent.futures import Future
from typing import Any, BinaryIO, Callable, Dict, FrozenSet, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.staging import AsyncStager
from torch.distributed.checkpoint.metadata import STATE_DICT_TYPE, Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

from volt import checkpoint as _ckpt
from volt.checkpoint_raw import RawFileSystemReader, RawFileSystemWriter
from volt.plugins.io import CheckpointIO, PathLike

log = logging.getLogger(__name__)

METADATA_NAME = ".metadata"
_TEMP_DIR_SUFFIX = ".tmp"


def is_sharded(path: PathLike) -> bool:
    """Whether ``path`` is a sharded (DCP) checkpoint directory."""
    return os.path.isfile(os.path.join(os.fspath(path), METADATA_NAME))


def load_sharded(path: PathLike, weights_only: Optional[bool] = None) -> Dict[str, Any]:
    """A sharded checkpoint as one dict of full CPU tensors (no process group needed; any world size).

    ``weights_only`` (default: True unless ``VOLT_ALLOW_UNSAFE_CHECKPOINTS=1``), as in
    ``volt.checkpoint.load``: ``.metadata`` and the non-tensor entries may hold only
    DCP's own classes, tensors, plain containers and ``volt.checkpoint.SAFE_GLOBALS``
    (or what ``torch.serialization.add_safe_globals`` allows); anything else raises
    ``CheckpointUnsafeError`` before any of it is called.
    """
    path = os.fspath(path)
    if not is_sharded(path):
        raise FileNotFoundError(f"{path!r} is not a sharded checkpoint (no {METADATA_NAME} in it)")
    if weights_only is None:
        weights_only = not _ckpt.allow_unsafe_load()
    state: STATE_DICT_TYPE = {}
    if weights_only:
        # Read here, not inside DCP: it would swallow the refusal and try another file name.
        metadata_path = os.path.join(path, METADATA_NAME)
        with open(metadata_path, "rb") as f:
            metadata = read_metadata_weights_only(f, metadata_path)
        reader: RawFileSystemReader = _CheckedMetadataReader(path, metadata)
        planner: _EmptyStateDictLoadPlanner = _WeightsOnlyPlanner(path)
    else:
        reader, planner = RawFileSystemReader(path), _EmptyStateDictLoadPlanner()
    try:
        _load_state_dict(state, storage_reader=reader, planner=planner, no_dist=True)
    except CheckpointException as err:  # DCP wraps what its one (local) step raised: that is the news
        failures = [exc for exc, _ in err.failures.values()]
        refused = [exc for exc in failures if isinstance(exc, _ckpt.CheckpointUnsafeError)]
        if refused:
            raise refused[0] from None
        if failures:
            raise failures[0] from err
        raise
    return state


# --- weights-only loading: what DCP would otherwise unpickle in full --------------------------
#: The globals of DCP's ``.metadata`` pickle: its own dataclasses, sizes, layouts, memory
#: formats and the storage paths (torch dtypes are allowed by type, see ``_allowed``).
METADATA_GLOBALS: FrozenSet[Tuple[str, str]] = frozenset({
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "StorageMeta", "MetadataIndex", "TensorStorageMetadata", "BytesStorageMetadata",
        "ChunkStorageMetadata", "TensorProperties", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # a layout by its name, from a fixed table
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
})


def _allowed(module: str, name: str) -> bool:
    if (module, name) in METADATA_GLOBALS:
        return True
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return True
    trusted = [*_ckpt.SAFE_GLOBALS, *torch.serialization.get_safe_globals()]
    return any(getattr(g, "__module__", None) == module and getattr(g, "__name__", None) == name
               for g in trusted)


class _Refused:
    """What a refused global becomes while the rest is read: inert, never the named object."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles ``.metadata`` resolving only allowed globals; the others are recorded in
    ``foreign`` and replaced by ``_Refused``, so none of them is imported or called."""

    def __init__(self, f: BinaryIO) -> None:
        super().__init__(f)
        self.foreign: List[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if _allowed(module, name):
            return super().find_class(module, name)
        self.foreign.append(f"{module}.{name}")
        return _Refused


def read_metadata_weights_only(f: BinaryIO, where: str) -> Metadata:
    """DCP's ``.metadata`` from ``f``; ``CheckpointUnsafeError`` if it names anything else."""
    unpickler = _MetadataUnpickler(f)
    try:
        metadata = unpickler.load()
    except Exception as err:
        if unpickler.foreign:
            raise _ckpt.unsafe_checkpoint_error(where, sorted(set(unpickler.foreign))) from err
        raise
    if unpickler.foreign:
        raise _ckpt.unsafe_checkpoint_error(where, sorted(set(unpickler.foreign)))
    if not isinstance(metadata, Metadata):
        raise pickle.UnpicklingError(f"{where} is not DCP metadata (a {type(metadata).__name__})")
    return metadata


class _CheckedMetadataReader(RawFileSystemReader):
    """A RawFileSystemReader that hands DCP metadata already read by ``read_metadata_weights_only``
    (the file is not read a second time, so it cannot be swapped in between)."""

    def __init__(self, path: str, metadata: Metadata) -> None:
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = self._metadata
        if getattr(metadata, "storage_meta", None) is None:  # as DCP's FileSystemReader does
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _WeightsOnlyPlanner(_EmptyStateDictLoadPlanner):
    """Loads the non-tensor entries (``torch.save`` bytes) with ``weights_only=True``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            with torch.serialization.safe_globals(_ckpt.SAFE_GLOBALS):
                obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            value.seek(0)
            foreign = _ckpt.unsafe_globals(value)
            if not foreign:
                raise
            raise _ckpt.unsafe_checkpoint_error(f"{self._path} (entry {fqn!r})", foreign) from err
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes stores it
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def _temp_dir(path: str, step: int) -> str:
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.step{step}{_TEMP_DIR_SUFFIX}")


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


def _commit(tmp: str, path: str) -> Optional[threading.Thread]:
    """Move the complete checkpoint ``tmp`` to ``path`` (rank 0, after every shard is durable).

    Returns the thread deleting the checkpoint it replaced (None: there was none). Deleting a
    GB-sized directory takes a tenth of a save; nothing waits for it but the next save.
    """
    old = None
    if os.path.lexists(path):
        head, name = os.path.split(path)
        # hidden and ending in .tmp: remove_stale_temp_files deletes it if this process dies first
        old = os.path.join(head, f".{name}.old-{uuid.uuid4().hex[:12]}{_TEMP_DIR_SUFFIX}")
        os.rename(path, old)  # a directory cannot be replaced atomically: the manifest still names its history
    os.rename(tmp, path)
    _ckpt._fsync_dir(os.path.dirname(os.path.abspath(path)))
    if old is None:
        return None
    deleting = threading.Thread(target=_remove, args=(old,), name="volt-checkpoint-delete", daemon=True)
    deleting.start()
    return deleting


def _signature(tensor: torch.Tensor) -> Tuple[Any, ...]:
    """What a staging buffer must match to be refilled in place."""
    placements = getattr(tensor, "placements", None)
    mesh = getattr(tensor, "device_mesh", None)
    return type(tensor), tensor.shape, tensor.stride(), tensor.dtype, placements, id(mesh)


class _StagingBuffers:
    """Host copies of the state for async saves, kept between saves and refilled in place.

    The first save allocates one CPU buffer per tensor (pinned when the tensor is on a GPU, so
    the copy is a DMA); later saves copy into the same buffers. A fresh allocation costs a page
    fault per 4 KiB touched: a copy into fresh memory took 2-3x as long as one into buffers
    already touched (docs/benchmarks.md). A ``DTensor`` is staged as a ``DTensor`` whose local shard is the
    buffer. Only one async save is ever in flight, so the buffers are free whenever ``stage``
    runs. Cost: a host copy of the rank's state held for the life of the checkpoint IO.
    """

    def __init__(self) -> None:
        self._buffers: Dict[Tuple[Any, ...], Tuple[Tuple[Any, ...], torch.Tensor]] = {}
        self._from_gpu = False  # whether this staging made non-blocking copies from a GPU

    def stage(self, state: Any) -> Any:
        seen: set = set()
        self._from_gpu = False
        staged = self._copy(state, (), seen)
        for key in set(self._buffers) - seen:  # entries the state no longer has
            del self._buffers[key]
        if self._from_gpu:
            torch.cuda.synchronize()  # the non-blocking copies into pinned buffers have landed
        return staged

    def _copy(self, obj: Any, key: Tuple[Any, ...], seen: set) -> Any:
        if isinstance(obj, torch.Tensor):
            seen.add(key)
            return self._copy_tensor(obj.detach(), key)
        if isinstance(obj, dict):
            return {k: self._copy(value, key + (k,), seen) for k, value in obj.items()}
        if isinstance(obj, list):
            return [self._copy(value, key + (i,), seen) for i, value in enumerate(obj)]
        return copy.deepcopy(obj)

    def _copy_tensor(self, tensor: torch.Tensor, key: Tuple[Any, ...]) -> torch.Tensor:
        signature = _signature(tensor)
        cached = self._buffers.get(key)
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        self._from_gpu = self._from_gpu or local.is_cuda
        if cached is not None and cached[0] == signature:
            buffer = cached[1]
            target = buffer.to_local() if hasattr(buffer, "to_local") else buffer
            target.copy_(local, non_blocking=local.is_cuda)
            return buffer
        if local.is_cuda and type(tensor) is torch.Tensor:
            buffer = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, pin_memory=True)
            buffer.copy_(tensor, non_blocking=True)
        else:
            buffer = tensor.to("cpu", copy=True)  # a DTensor keeps its spec, with a CPU local shard
        self._buffers[key] = (signature, buffer)
        return buffer


class _ReusedBufferStager(AsyncStager):
    """Stages an async save with one copy of each tensor, into buffers reused across saves.
    DCP's own staging copies a CPU ``DTensor`` twice (``copy.deepcopy``, then into a new
    buffer), and a GPU one to the host twice: several times the copy's time, all of it
    blocking training (docs/benchmarks.md)."""

    _synchronize_after_execute = False

    def __init__(self, buffers: _StagingBuffers) -> None:
        self._staging = buffers

    def stage(self, state_dict: STATE_DICT_TYPE) -> STATE_DICT_TYPE:
        return self._staging.stage(state_dict)

    def synchronize_staging(self) -> None:
        pass

    def close(self) -> None:
        pass


class ShardedCheckpointIO(CheckpointIO):
    """Write checkpoints with ``torch.distributed.checkpoint``: one directory, one file per rank.

    ``save_checkpoint`` runs on every rank (``collective = True``). ``async_save=True``
    blocks training only for the copy of the state to CPU memory; the write, the commit and
    the manifest follow on a background thread. The default for ``strategy="fsdp"``;
    under DDP pass ``Trainer(plugins=[ShardedCheckpointIO()])``.
    """

    collective = True

    def __init__(self, async_save: bool = False) -> None:
        if not isinstance(async_save, bool):
            raise TypeError(f"ShardedCheckpointIO(async_save=...) must be a bool, got {async_save!r}")
        self.async_save = async_save
        self._pending: Optional[Future] = None
        self._group: Optional[Any] = None
        self._after_commit: Dict[str, Callable[[], None]] = {}
        self._lock = threading.Lock()
        self._committed: set = set()
        self._error: Optional[BaseException] = None
        self._staging = _StagingBuffers()
        self._deleting: Optional[threading.Thread] = None  # removing the checkpoint the last save replaced
        atexit.register(self.teardown)  # registered after the process group's shutdown hook: runs before it

    # --- saving ------------------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: Dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("ShardedCheckpointIO.save_checkpoint(storage_options=...) is not supported")
        self.wait()  # never two saves in flight
        self._join_deletion()
        path = os.path.abspath(os.fspath(path))
        distributed = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if distributed else 0
        tmp = _temp_dir(path, int(checkpoint.get("global_step", 0)))
        if rank == 0:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)  # left by a writer killed mid-save
            os.makedirs(tmp)
        if distributed:
            if self._group is None:  # the background write must not share a group with training's collectives
                self._group = dist.new_group(backend="gloo")
            dist.barrier(group=self._group)
        with self._lock:
            self._committed.discard(path)
        writer = RawFileSystemWriter(tmp, sync_files=True)
        kwargs: Dict[str, Any] = {"storage_writer": writer, "process_group": self._group, "no_dist": not distributed}
        if not self.async_save:
            dcp.save(checkpoint, **kwargs)
            if rank == 0:
                self._finish(tmp, path)
            if distributed:
                dist.barrier(group=self._group)
            return
        if rank == 0:  # ModelCheckpoint's write_manifest now waits for the commit
            _ckpt.register_in_flight(path, functools.partial(self.after_commit, path))
        # returns once the state is staged in CPU memory
        future = dcp.async_save(checkpoint, async_stager=_ReusedBufferStager(self._staging), **kwargs)
        if rank == 0:  # done only once committed (a done-callback may still run when result() returns)
            committed: Future = Future()
            future.add_done_callback(lambda f: self._finish_async(f, tmp, path, committed))
            future = committed
        self._pending = future

    def _finish_async(self, future: Future, tmp: str, path: str, committed: Future) -> None:
        try:
            future.result()
            self._finish(tmp, path)
        except BaseException as err:  # noqa: BLE001 - reported by the next wait()
            log.error("async checkpoint %s failed: %s; latest.json still names the previous one", path, err)
            self._error = err
        finally:
            committed.set_result(None)

    def _finish(self, tmp: str, path: str) -> None:
        self._deleting = _commit(tmp, path)
        with self._lock:
            _ckpt.register_in_flight(path, None)
            self._committed.add(path)
            then = self._after_commit.pop(path, None)
        if then is not None:
            then()

    def after_commit(self, path: PathLike, action: Callable[[], None]) -> None:
        """Run ``action`` (e.g. writing the manifest) once ``path`` is committed: now if it already is."""
        path = os.path.abspath(os.fspath(path))
        with self._lock:
            if path not in self._committed:
                self._after_commit[path] = action
                return
        action()

    def wait(self) -> None:
        """Block until the save in flight (if any) is durable and committed; raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _join_deletion(self) -> None:
        deleting, self._deleting = self._deleting, None
        if deleting is not None:
            deleting.join()

    def teardown(self) -> None:
        """Wait for the save in flight and for the deletion of the checkpoint it replaced; free the
        staging buffers (the next async save allocates them again)."""
        try:
            self.wait()
        finally:
            self._join_deletion()
            self._staging = _StagingBuffers()

    # --- loading and removing -------------------------------------------------------------------
    def load_checkpoint(self, path: PathLike, map_location: Optional[Any] = None) -> Dict[str, Any]:
        if not os.path.isdir(os.fspath(path)):
            return _ckpt.load(path, map_location=map_location)  # a single-file checkpoint
        return load_sharded(path)

    def remove_checkpoint(self, path: PathLike) -> None:
        path = os.fspath(path)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def load_any(io: CheckpointIO, path: PathLike) -> Dict[str, Any]:
    """Load ``path`` whichever format it has: a sharded directory, or a file through ``io``."""
    if os.path.isdir(os.fspath(path)):
        return load_sharded(path)
    return io.load_checkpoint(path, map_location="cpu")
