"""The on-disk format of sharded checkpoints: raw tensor bytes (``volt.checkpoint_raw``), the
checkpoints written before it, reused async staging buffers, and the off-path deletion of the
checkpoint a save replaces."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Dict

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard

from volt import checkpoint as ckpt
from volt.checkpoint_raw import RAW_DESCRIPTOR
from volt.checkpoint_sharded import ShardedCheckpointIO, load_sharded

pytestmark = [pytest.mark.timeout(120),
              # DCP warns that it saves without a process group: intended here
              pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")]


def _state(step: int = 3) -> Dict[str, Any]:
    generator = torch.Generator().manual_seed(step)
    return {
        "global_step": step,
        "state_dict": {
            "w": torch.randn(6, 5, generator=generator),
            "half": torch.randn(7, generator=generator).to(torch.bfloat16),
            "ids": torch.arange(5, dtype=torch.int64),
            "mask": torch.tensor([True, False, True]),
            "scalar": torch.tensor(2.5),
            "empty": torch.empty(0, 3),
            "transposed": torch.randn(4, 6, generator=generator).t(),  # not contiguous
        },
        "loops": {"fit_loop": {"epoch": 1, "names": ["a", "b"]}},
    }


def _assert_same(loaded: Dict[str, Any], state: Dict[str, Any]) -> None:
    assert loaded["global_step"] == state["global_step"] and loaded["loops"] == state["loops"]
    for name, tensor in state["state_dict"].items():
        got = loaded["state_dict"][name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor), name


def _metadata(path: Path) -> Any:
    with open(path / ".metadata", "rb") as f:
        return pickle.load(f)  # our own test file


def test_tensors_are_stored_raw_and_read_back_exactly(tmp_path: Path) -> None:
    state, path = _state(), tmp_path / "last.ckpt"
    ShardedCheckpointIO().save_checkpoint(state, path)
    _assert_same(load_sharded(path), state)
    storage = _metadata(path).storage_data
    tensors = {index.fqn: info for index, info in storage.items() if index.fqn.startswith("state_dict.")}
    assert len(tensors) == len(state["state_dict"])
    for fqn, info in tensors.items():
        tensor = state["state_dict"][fqn.split(".", 1)[1]]
        assert list(info.transform_descriptors) == [RAW_DESCRIPTOR], fqn
        assert info.length == tensor.numel() * tensor.element_size(), fqn  # the bytes, no zip around them
    # the file is exactly its entries: no per-tensor container, no padding
    assert os.path.getsize(path / "__0_0.distcp") == sum(info.length for info in storage.values())


def test_checkpoints_written_by_dcp_torch_save_still_load(tmp_path: Path) -> None:
    state, path = _state(), tmp_path / "old.ckpt"
    dcp.save(state, storage_writer=FileSystemWriter(str(path)), no_dist=True)  # what volt wrote before
    assert all(info.transform_descriptors is None for info in _metadata(path).storage_data.values())
    _assert_same(load_sharded(path), state)
    _assert_same(load_sharded(path, weights_only=False), state)


def test_a_stock_dcp_reader_refuses_the_raw_format_instead_of_misreading_it(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    ShardedCheckpointIO().save_checkpoint(_state(), path)
    target = {"state_dict": {"w": torch.zeros(6, 5)}}
    with pytest.raises(CheckpointException) as info:
        dcp.load(target, storage_reader=FileSystemReader(str(path)), no_dist=True)
    assert "volt-raw" in str([str(err) for err, _ in info.value.failures.values()])


def test_a_truncated_shard_fails_to_load_and_fails_verification(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    ShardedCheckpointIO().save_checkpoint(_state(), path)
    ckpt.write_manifest(tmp_path, path, step=3, epoch=0)
    shard = path / "__0_0.distcp"
    os.truncate(shard, os.path.getsize(shard) - 8)
    with pytest.raises(Exception, match="truncated"):
        load_sharded(path)
    entry = ckpt.read_manifest(tmp_path).latest
    assert "truncated" in ckpt.verify_checkpoint(path, entry)


def test_async_saves_refill_the_same_staging_buffers(tmp_path: Path) -> None:
    state, path = _state(), tmp_path / "last.ckpt"
    io = ShardedCheckpointIO(async_save=True)
    staged = []
    original = io._staging.stage
    io._staging.stage = lambda s: staged.append(original(s)) or staged[-1]  # type: ignore[method-assign]
    try:
        io.save_checkpoint(state, path)
        state["state_dict"]["w"].add_(1.0)  # training moves on while the first save is written
        state["global_step"] = 4
        io.save_checkpoint(state, path)
        io.wait()
        _assert_same(load_sharded(path), state)
        first, second = (s["state_dict"]["w"] for s in staged)
        assert first.data_ptr() == second.data_ptr() and first is second  # refilled in place
        state["state_dict"]["w"] = torch.randn(3, 3)  # a new shape gets a new buffer
        state["global_step"] = 5
        io.save_checkpoint(state, path)
        io.wait()
        _assert_same(load_sharded(path), state)
        assert staged[-1]["state_dict"]["w"].shape == (3, 3)
    finally:
        io.teardown()


def test_the_replaced_checkpoint_is_deleted_off_the_save_path(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    io = ShardedCheckpointIO()
    io.save_checkpoint(_state(3), path)
    io.save_checkpoint(_state(4), path)
    deleting = io._deleting
    assert deleting is not None  # the old directory is removed by a thread, not by the save
    io.teardown()
    assert not deleting.is_alive() and sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    _assert_same(load_sharded(path), _state(4))
    # a process killed while deleting leaves a hidden .tmp directory that the next start removes
    leftover = tmp_path / ".last.ckpt.old-0123456789ab.tmp"
    leftover.mkdir()
    (leftover / "__0_0.distcp").write_bytes(b"x")
    assert ckpt.remove_stale_temp_files(tmp_path) == 1 and sorted(os.listdir(tmp_path)) == ["last.ckpt"]


def test_damaged_metadata_lengths_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    ShardedCheckpointIO().save_checkpoint(_state(), path)
    metadata = _metadata(path)
    for index, info in metadata.storage_data.items():
        if index.fqn == "state_dict.w":
            info.length -= 4
    with open(path / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    with pytest.raises(Exception, match="damaged"):
        load_sharded(path)


def test_async_saves_of_dtensors_refill_their_local_shards(tmp_path: Path) -> None:
    """FSDP's layout: a DTensor is staged as a DTensor whose local shard is the reused buffer."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    io = ShardedCheckpointIO(async_save=True)
    staged = []
    original = io._staging.stage
    io._staging.stage = lambda s: staged.append(original(s)) or staged[-1]  # type: ignore[method-assign]
    try:
        mesh = init_device_mesh("cpu", (1,))
        weight = DTensor.from_local(torch.randn(8, 4), mesh, [Shard(0)], run_check=False)
        path = tmp_path / "last.ckpt"
        for step in (1, 2):
            weight.to_local().add_(float(step))  # the optimizer moved it
            io.save_checkpoint({"global_step": step, "state_dict": {"w": weight}}, path)
        io.wait()
        loaded = load_sharded(path)
        assert loaded["global_step"] == 2 and torch.equal(loaded["state_dict"]["w"], weight.to_local())
        first, second = (s["state_dict"]["w"] for s in staged)
        assert isinstance(first, DTensor) and first is second
    finally:
        io.teardown()
        dist.destroy_process_group()
