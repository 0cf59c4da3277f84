"""The checkpoint trust model: a checkpoint is loaded only from inside its directory, and
without full unpickling unless the job says it trusts its checkpoints."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from foreign_objects import Foreign
from volt import checkpoint as ckpt

pytestmark = pytest.mark.timeout(60)



def _save(path: Path, obj: Any) -> Path:
    ckpt.atomic_save(obj, path)
    return path


def _valid(step: int = 1) -> dict:
    return {"state_dict": {"w": torch.ones(2)}, "global_step": step, "epoch": 0}


def test_a_manifest_naming_a_file_outside_the_directory_is_not_followed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mine, other = tmp_path / "job-a", tmp_path / "job-b"
    mine.mkdir(), other.mkdir()
    theirs = _save(other / "epoch=0-step=9.ckpt", _valid(9))
    ckpt.write_manifest(str(other), str(theirs), step=9, epoch=0)
    for named in ("../job-b/epoch=0-step=9.ckpt", str(theirs)):
        manifest = json.loads((other / "latest.json").read_text())
        manifest["checkpoint"] = named
        (mine / "latest.json").write_text(json.dumps(manifest))
        with caplog.at_level(logging.WARNING, logger="volt.checkpoint"):
            assert ckpt.latest_checkpoint(str(mine)) is None
            assert ckpt.load_latest(str(mine), ckpt.load) == (None, None)
        assert "outside that directory" in caplog.text and named in caplog.text
        caplog.clear()
    # The control: the same manifest in its own directory is followed.
    assert ckpt.latest_checkpoint(str(other)) == str(theirs)


def test_a_link_out_of_the_directory_is_not_a_candidate(tmp_path: Path) -> None:
    mine, other = tmp_path / "job-a", tmp_path / "job-b"
    mine.mkdir(), other.mkdir()
    theirs = _save(other / "epoch=0-step=9.ckpt", _valid(9))
    (mine / "epoch=0-step=9.ckpt").symlink_to(theirs)
    assert ckpt.latest_checkpoint(str(mine)) is None
    own = _save(mine / "epoch=0-step=3.ckpt", _valid(3))
    assert ckpt.latest_checkpoint(str(mine)) == str(own)


def test_a_checkpoint_with_a_foreign_object_is_refused_without_running_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ckpt.ENV_ALLOW_UNSAFE, raising=False)
    marker = tmp_path / "ran"
    path = _save(tmp_path / "evil.ckpt", {**_valid(), "extra": Foreign(str(marker))})
    with pytest.raises(ckpt.CheckpointUnsafeError) as info:
        ckpt.load(path)
    message = str(info.value)
    assert "_mark" in message and ckpt.ENV_ALLOW_UNSAFE in message and "add_safe_globals" in message
    assert not marker.exists()
    # Resuming does not fall back past it as if it were damaged: the job stops and says why.
    ckpt.write_manifest(str(tmp_path), str(path), step=1, epoch=0)
    with pytest.raises(ckpt.CheckpointUnsafeError):
        ckpt.load_latest(str(tmp_path), ckpt.load)
    assert not marker.exists()

    # The escape hatch: the job trusts its checkpoints.
    monkeypatch.setenv(ckpt.ENV_ALLOW_UNSAFE, "1")
    assert ckpt.load(path)["extra"] == "payload" and marker.exists()


def test_volt_objects_load_without_full_unpickling(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy RNG state and arrays, argparse hparams and OrderedDicts are allowlisted."""
    import argparse

    import numpy as np

    monkeypatch.delenv(ckpt.ENV_ALLOW_UNSAFE, raising=False)
    state = {**_valid(), "numpy_rng": np.random.get_state(),
             "hyper_parameters": {"args": argparse.Namespace(lr=0.1)},
             "array": np.arange(4, dtype=np.float32)}
    loaded = ckpt.load(_save(tmp_path / "ok.ckpt", state))
    assert loaded["numpy_rng"][0] == "MT19937" and loaded["hyper_parameters"]["args"].lr == 0.1
    assert loaded["array"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_malformed_escape_hatch_is_an_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ckpt.ENV_ALLOW_UNSAFE, "maybe")
    with pytest.raises(ValueError, match=ckpt.ENV_ALLOW_UNSAFE):
        ckpt.load(_save(tmp_path / "ok.ckpt", _valid()))
