"""Checkpoint save/load: volt's full-trainer checkpoint vs raw torch.save/torch.load of the same state.

The state is a model of about ``--megabytes`` MB of float32 weights plus its SGD
momentum buffers (so the file is about twice that), held in a Trainer after one
training step. Four things are timed on the same directory, each the median of
``--repeats`` runs:

* ``disk``: writing the same number of bytes with one ``write`` + ``fsync`` (the disk's own speed);
* ``raw_save``: ``torch.save({"state_dict":..., "optimizer":...}, path)`` (no fsync: torch does none);
* ``raw_save_fsync``: the same followed by ``fsync`` (what durability costs);
* ``volt_save``: ``trainer.save_checkpoint(path)``: Lightning-keyed dict, RNG states, atomic write
  (temp + fsync + rename + directory fsync) with the SHA-256 computed while writing, and nothing else;
* ``atomic_save`` / ``atomic_save_no_checksum``: the same checkpoint dict through
  ``volt.checkpoint.atomic_save`` and through the same atomic write without the checksum
  (``torch.save`` to the temp path): their ratio is what verifiable checkpoints cost;
* ``raw_load`` / ``volt_load``: ``torch.load`` vs ``volt.checkpoint.load`` (both ``map_location="cpu"``).

    python bench/checkpoint.py [--megabytes 250] [--dir /path/on/the/volume]

Writes bench/results/checkpoint.json with the ratios volt/raw.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "trainer_image"))

import volt  # noqa: E402
from volt import checkpoint as volt_checkpoint  # noqa: E402
from volt.trainer import checkpoint_connector  # noqa: E402


def _median_seconds(fn: Callable[[], Any], repeats: int, before: Callable[[], Any] = lambda: None) -> float:
    times: List[float] = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _drop(path: str) -> None:
    if os.path.exists(path):
        os.remove(path)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save_no_checksum(obj: Any, path: str) -> None:
    """volt's atomic write without the SHA-256: torch.save to a temp path, fsync, rename, fsync the directory."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    _fsync_file(tmp)
    os.replace(tmp, path)
    fd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_trainer(megabytes: int) -> "volt.Trainer":
    width = 4096
    layers = max(1, round(megabytes * 1024 * 1024 / 4 / (width * width)))

    class Big(volt.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(layers))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x = batch[0]
            for layer in self.layers:
                x = layer(x)
            return x.pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=1e-6, momentum=0.9)

    data = torch.utils.data.TensorDataset(torch.randn(2, width))
    trainer = volt.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Big(), torch.utils.data.DataLoader(data, batch_size=2))  # one step: momentum buffers exist
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=250, help="weights in MB (the file holds ~2x: momentum)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="directory to write to (default: a temp dir)")
    args = parser.parse_args()

    trainer = build_trainer(args.megabytes)
    module = trainer.lightning_module
    raw_state = {"state_dict": module.state_dict(), "optimizer": trainer.optimizers[0].state_dict()}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        raw_path, volt_path, disk_path = (os.path.join(tmp, n) for n in ("raw.pt", "volt.ckpt", "disk.bin"))
        trainer.save_checkpoint(volt_path)
        size = os.path.getsize(volt_path)
        payload = os.urandom(1024 * 1024) * max(1, size // (1024 * 1024))

        def write_disk() -> None:
            with open(disk_path, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())

        def raw_save_fsync() -> None:
            torch.save(raw_state, raw_path)
            _fsync_file(raw_path)

        results: Dict[str, float] = {
            "disk": _median_seconds(write_disk, args.repeats, lambda: _drop(disk_path)),
            "raw_save": _median_seconds(lambda: torch.save(raw_state, raw_path), args.repeats,
                                        lambda: _drop(raw_path)),
            "raw_save_fsync": _median_seconds(raw_save_fsync, args.repeats, lambda: _drop(raw_path)),
            "volt_save": _median_seconds(lambda: trainer.save_checkpoint(volt_path), args.repeats,
                                         lambda: _drop(volt_path)),
        }
        full = checkpoint_connector.dump_checkpoint(trainer)
        results["atomic_save"] = _median_seconds(lambda: volt_checkpoint.atomic_save(full, volt_path), args.repeats,
                                                 lambda: _drop(volt_path))
        results["atomic_save_no_checksum"] = _median_seconds(lambda: atomic_save_no_checksum(full, volt_path),
                                                             args.repeats, lambda: _drop(volt_path))
        trainer.save_checkpoint(volt_path)
        torch.save(raw_state, raw_path)
        results["raw_load"] = _median_seconds(lambda: torch.load(raw_path, map_location="cpu"), args.repeats)
        results["volt_load"] = _median_seconds(lambda: volt_checkpoint.load(volt_path, map_location="cpu"),
                                               args.repeats)
        raw_size = os.path.getsize(raw_path)

    mb = size / 1e6
    report = {
        "benchmark": "checkpoint",
        "file_mb": round(mb, 1),
        "raw_file_mb": round(raw_size / 1e6, 1),
        "seconds": {k: round(v, 4) for k, v in results.items()},
        "mb_per_s": {k: round((mb if k != "disk" else len(payload) / 1e6) / v, 1) for k, v in results.items()},
        "ratios": {
            "volt_save / raw_save": round(results["volt_save"] / results["raw_save"], 3),
            "volt_save / raw_save_fsync": round(results["volt_save"] / results["raw_save_fsync"], 3),
            "volt_save / disk": round(results["volt_save"] / results["disk"], 3),
            "volt_load / raw_load": round(results["volt_load"] / results["raw_load"], 3),
            "atomic_save / atomic_save_no_checksum": round(
                results["atomic_save"] / results["atomic_save_no_checksum"], 3),
        },
        "repeats": args.repeats,
        "host": platform.node(),
        "torch": torch.__version__,
    }
    for key, value in report["ratios"].items():
        print(f"{key}: {value}")
    print(f"file {mb:.0f} MB; seconds: {report['seconds']}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "checkpoint.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
