"""The tensor encoding of volt's sharded checkpoints: each tensor's bytes as they lie in memory.

DCP's ``FileSystemWriter`` stores every tensor as a small ``torch.save`` zip inside the
rank's ``.distcp`` file: a pickle, a zip record and a CRC-32 pass over every byte, written
through a Python stream. On a CPU-bound writer that is about 40% of a save's time
(docs/benchmarks.md). ``RawFileSystemWriter`` writes the same directory layout (``.metadata``
and one ``__<rank>_0.distcp`` per rank) but each tensor as its raw bytes, straight from the
tensor's memory, and marks the entry with the transform descriptor ``volt-raw/1`` in
``.metadata``. ``RawFileSystemReader`` reads such an entry straight into the destination
tensor (``os.preadv``, no intermediate buffer), and any other entry (a checkpoint written
before this format, non-tensor entries) the way DCP's ``FileSystemReader`` does.

Shape and dtype come from ``.metadata`` (DCP records them for every chunk); a chunk whose
stored length does not match them is refused as damaged. No pickle is involved in reading a
raw tensor. A stock DCP reader refuses ``volt-raw/1`` entries with "Unknown extension" rather
than misreading them; ``python -m volt.checkpoint_convert`` turns a sharded checkpoint into one
file that ``torch.load`` reads.
"""
from __future__ import annotations

import dataclasses
import os
import queue
from typing import Any, Dict, List, Tuple

import torch
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.planner import (
    LoadItemType, LoadPlan, LoadPlanner, ReadItem, SavePlanner, WriteItem, WriteItemType,
)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

#: The transform descriptor that marks a tensor stored as raw bytes (``.metadata``'s ``_StorageInfo``).
RAW_DESCRIPTOR = "volt-raw/1"
#: Bytes per write/read system call: large enough to amortise the call, below Linux's 2 GiB limit.
_IO_CHUNK = 256 * 1024 * 1024


def byte_view(tensor: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy (any dtype, any shape, 0-dim included)."""
    return memoryview(tensor.detach().reshape(-1).view(torch.uint8).numpy())


def _write_file(path: str, storage_key: str, items: List[WriteItem], planner: SavePlanner,
                fsync: bool) -> List[WriteResult]:
    """One rank's file: the non-tensor entries (DCP's ``torch.save`` bytes), then every tensor raw."""
    results: List[WriteResult] = []
    offset = 0
    ordered = sorted(items, key=lambda item: item.type != WriteItemType.BYTE_IO)  # DCP's order
    with open(path, "wb", buffering=0) as f:
        for item in ordered:
            data = planner.resolve_data(item)
            descriptors = None
            if item.type == WriteItemType.BYTE_IO:
                view = data.getbuffer()
            else:
                tensor = data.detach()
                if not tensor.is_cpu:  # a sync save from GPU memory: one host copy per tensor
                    tensor = tensor.cpu()
                view = byte_view(tensor.contiguous())
                descriptors = [RAW_DESCRIPTOR]
            _write_all(f.fileno(), view)
            length = view.nbytes
            results.append(WriteResult(index=item.index, size_in_bytes=length,
                                       storage_data=_StorageInfo(storage_key, offset, length, descriptors)))
            offset += length
        if fsync:
            os.fsync(f.fileno())
    return results


def _write_all(fd: int, view: memoryview) -> None:
    view = view.cast("B")
    done = 0
    while done < view.nbytes:
        done += os.write(fd, view[done:done + _IO_CHUNK])


def _read_into(fd: int, offset: int, view: memoryview, where: str) -> None:
    view = view.cast("B")
    done = 0
    while done < view.nbytes:
        n = os.preadv(fd, [view[done:done + _IO_CHUNK]], offset + done)
        if n == 0:
            raise EOFError(f"{where} ends {view.nbytes - done} bytes early (truncated)")
        done += n


class RawFileSystemWriter(FileSystemWriter):
    """DCP's ``FileSystemWriter`` (one file per rank, fsynced) writing tensors as raw bytes."""

    def __init__(self, path: str, sync_files: bool = True) -> None:
        super().__init__(path, single_file_per_rank=True, sync_files=sync_files, thread_count=1)

    def _write_data(self, planner: SavePlanner, file_queue: "queue.Queue[Any]") -> "Future[List[WriteResult]]":
        results: List[WriteResult] = []
        while True:
            try:
                path, storage_key, items = file_queue.get_nowait()
            except queue.Empty:
                break
            results += _write_file(os.fspath(path), storage_key, items, planner, self.sync_files)
        future: "Future[List[WriteResult]]" = Future()
        future.set_result(results)
        return future


class RawFileSystemReader(FileSystemReader):
    """DCP's ``FileSystemReader`` that reads ``volt-raw/1`` tensors straight into their destination."""

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)
        self._chunks: Dict[Tuple[str, Tuple[int, ...]], Tuple[torch.Size, torch.dtype]] = {}
        for fqn, md in metadata.state_dict_metadata.items():
            if isinstance(md, TensorStorageMetadata):
                for chunk in md.chunks:
                    self._chunks[(fqn, tuple(chunk.offsets))] = (torch.Size(chunk.sizes), md.properties.dtype)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> "Future[None]":
        raw: Dict[str, List[ReadItem]] = {}
        other: List[ReadItem] = []
        for item in plan.items:
            info: _StorageInfo = self.storage_data[item.storage_index]
            if item.type == LoadItemType.TENSOR and tuple(info.transform_descriptors or ()) == (RAW_DESCRIPTOR,):
                raw.setdefault(info.relative_path, []).append(item)
            else:
                other.append(item)
        if other:  # non-tensor entries, and tensors of checkpoints written before the raw format
            super().read_data(dataclasses.replace(plan, items=other), planner).wait()
        for relative_path, items in raw.items():
            path = os.path.join(os.fspath(self.path), relative_path)
            fd = os.open(path, os.O_RDONLY)
            try:
                for item in sorted(items, key=lambda i: self.storage_data[i.storage_index].offset):
                    self._read_tensor(fd, path, item, planner)
            finally:
                os.close(fd)
        future: "Future[None]" = Future()
        future.set_result(None)
        return future

    def _read_tensor(self, fd: int, path: str, item: ReadItem, planner: LoadPlanner) -> None:
        info: _StorageInfo = self.storage_data[item.storage_index]
        fqn = item.storage_index.fqn
        try:
            sizes, dtype = self._chunks[(fqn, tuple(item.storage_index.offset))]
        except KeyError:
            raise ValueError(f"{path}: .metadata names no chunk of {fqn!r} at {tuple(item.storage_index.offset)}") from None
        expected = sizes.numel() * dtype.itemsize
        if info.length != expected:
            raise ValueError(f"{path}: entry {fqn!r} holds {info.length} bytes where its shape {tuple(sizes)} and "
                             f"{dtype} need {expected} (damaged .metadata)")
        target = planner.resolve_tensor(item).detach()
        whole = not any(item.storage_offsets) and tuple(item.lengths) == tuple(sizes)
        if whole and target.is_cpu and target.dtype == dtype and target.is_contiguous():
            _read_into(fd, info.offset, byte_view(target), f"{path} (entry {fqn!r})")
        else:  # part of a chunk, or a destination that is not plain CPU memory: read, then copy the part
            chunk = torch.empty(sizes, dtype=dtype)
            _read_into(fd, info.offset, byte_view(chunk), f"{path} (entry {fqn!r})")
            for dim, (start, length) in enumerate(zip(item.storage_offsets, item.lengths)):
                chunk = chunk.narrow(dim, start, length)
            target.copy_(chunk)
        planner.commit_tensor(item, target)
