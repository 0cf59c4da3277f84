"""The checkpoint trust model for sharded (DCP) checkpoints: a foreign object in
``.metadata`` or in a non-tensor entry is refused as in a single file, with the same
escape hatch."""
from __future__ import annotations

import argparse
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from foreign_objects import Foreign
from volt import checkpoint as ckpt
from volt.checkpoint_sharded import ShardedCheckpointIO, load_sharded

pytestmark = pytest.mark.timeout(120)


def _state(**extra: Any) -> dict:
    return {"state_dict": {"w": torch.arange(6.0).reshape(2, 3), "h": torch.ones(3, dtype=torch.float16)},
            "global_step": 4, "epoch": 1, **extra}


def _save(path: Path, state: dict) -> Path:
    with warnings.catch_warnings():  # DCP warns that it saves without a process group: intended here
        warnings.simplefilter("ignore", UserWarning)
        ShardedCheckpointIO().save_checkpoint(state, path)
    return path


def _refused(path: Path, part: str) -> str:
    with pytest.raises(ckpt.CheckpointUnsafeError) as info:
        load_sharded(path)
    message = str(info.value)
    assert str(path) in message and part in message
    assert "_mark" in message and ckpt.ENV_ALLOW_UNSAFE in message and "add_safe_globals" in message
    return message


def test_volt_state_loads_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: what volt writes (RNG states, numpy arrays, argparse hparams) loads."""
    monkeypatch.delenv(ckpt.ENV_ALLOW_UNSAFE, raising=False)
    path = _save(tmp_path / "last.ckpt", _state(
        numpy_rng=np.random.get_state(), torch_rng=torch.get_rng_state(),
        hyper_parameters={"args": argparse.Namespace(lr=0.1)}, note="text"))
    loaded = load_sharded(path)
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(6.0).reshape(2, 3))
    assert loaded["state_dict"]["h"].dtype == torch.float16
    assert loaded["global_step"] == 4 and loaded["note"] == "text"
    assert loaded["numpy_rng"][0] == "MT19937" and loaded["hyper_parameters"]["args"].lr == 0.1


def test_a_foreign_object_in_an_entry_is_refused_without_running_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ckpt.ENV_ALLOW_UNSAFE, raising=False)
    marker = tmp_path / "ran"
    path = _save(tmp_path / "last.ckpt", _state(extra=Foreign(str(marker))))
    _refused(path, "'extra'")
    assert not marker.exists()
    # Resuming stops and says why; it does not skip the checkpoint as damaged.
    ckpt.write_manifest(str(tmp_path), str(path), step=4, epoch=1)
    with pytest.raises(ckpt.CheckpointUnsafeError):
        ckpt.load_latest(str(tmp_path), load_sharded)
    assert not marker.exists()

    monkeypatch.setenv(ckpt.ENV_ALLOW_UNSAFE, "1")  # the escape hatch: the job trusts its checkpoints
    assert load_sharded(path)["extra"] == "payload" and marker.exists()


def test_a_foreign_object_in_the_metadata_is_refused_without_running_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ckpt.ENV_ALLOW_UNSAFE, raising=False)
    marker = tmp_path / "ran"
    path = _save(tmp_path / "last.ckpt", _state())
    metadata_file = path / ".metadata"
    metadata = pickle.loads(metadata_file.read_bytes())
    metadata.planner_data["injected"] = Foreign(str(marker))  # what a writer of the volume could add
    metadata_file.write_bytes(pickle.dumps(metadata))
    _refused(path, ".metadata")
    assert not marker.exists()

    monkeypatch.setenv(ckpt.ENV_ALLOW_UNSAFE, "1")
    assert torch.equal(load_sharded(path)["state_dict"]["w"], torch.arange(6.0).reshape(2, 3))
    assert marker.exists()


class Point:
    """A plain class of the script's own: trusted only once the script allows it."""

    def __init__(self, x: int) -> None:
        self.x = x


def test_add_safe_globals_admits_a_class_in_both_parts(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The other way on that the message names: the script allows the class."""
    monkeypatch.delenv(ckpt.ENV_ALLOW_UNSAFE, raising=False)
    path = _save(tmp_path / "last.ckpt", _state(point=Point(1)))
    with pytest.raises(ckpt.CheckpointUnsafeError, match=r"Point"):
        load_sharded(path)
    metadata_file = path / ".metadata"
    metadata = pickle.loads(metadata_file.read_bytes())
    metadata.point = Point(2)
    metadata_file.write_bytes(pickle.dumps(metadata))
    with torch.serialization.safe_globals([Point]):
        assert load_sharded(path)["point"].x == 1
    with pytest.raises(ckpt.CheckpointUnsafeError, match=r"\.metadata .*Point"):
        load_sharded(path)
