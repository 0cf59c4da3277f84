"""Trainer(plugins=...): CheckpointIO, ClusterEnvironment, Precision, 1.x strategy names, and what raises."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch

import volt
from volt.callbacks import ModelCheckpoint
from volt.plugins import CheckpointIO, ClusterEnvironment, Precision, TorchCheckpointIO
from volt.strategies.ddp import DDPStrategy
from volt.strategies.single import SingleDeviceStrategy

from tiny_models import TinyModel, loader, quiet_trainer
from ddp_support import child_env, free_port

pytestmark = pytest.mark.timeout(120)


class RecordingIO(TorchCheckpointIO):
    """Writes like the default, and remembers every call (what a storage plugin would see)."""

    def __init__(self) -> None:
        self.calls: List[tuple] = []

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        self.calls.append(("save", os.path.basename(path), checkpoint["global_step"], storage_options))
        super().save_checkpoint(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Optional[Any] = None) -> Dict[str, Any]:
        self.calls.append(("load", os.path.basename(path)))
        return super().load_checkpoint(path, map_location)

    def remove_checkpoint(self, path: Any) -> None:
        self.calls.append(("remove", os.path.basename(path)))
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        self.calls.append(("teardown",))


def test_checkpoint_io_receives_saves_loads_and_removals(tmp_path: Path, tiny: TinyModel) -> None:
    io = RecordingIO()
    # val_loss falls every epoch here: each epoch is a new best, and the previous file is removed
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=1, monitor="val_loss")
    trainer = quiet_trainer(tmp_path, max_epochs=3, limit_train_batches=2, limit_val_batches=1,
                            enable_checkpointing=True, callbacks=[ckpt], plugins=[io])
    assert trainer.checkpoint_io is io and trainer.strategy.checkpoint_io is io  # where Lightning keeps it
    trainer.fit(tiny, loader(), loader())
    saves = [c for c in io.calls if c[0] == "save"]
    assert [c[1:3] for c in saves] == [("epoch=0.ckpt", 2), ("epoch=1.ckpt", 4), ("epoch=2.ckpt", 6)]
    assert ("remove", "epoch=0.ckpt") in io.calls and ("remove", "epoch=1.ckpt") in io.calls
    assert io.calls[-1] == ("teardown",)
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == ["epoch=2.ckpt"]

    trainer.save_checkpoint(tmp_path / "manual.ckpt", storage_options={"bucket": "b"})
    assert io.calls[-1] == ("save", "manual.ckpt", 6, {"bucket": "b"})  # storage_options reach the plugin

    resumed = quiet_trainer(tmp_path, max_epochs=4, limit_train_batches=2, limit_val_batches=1, plugins=io)
    resumed.fit(TinyModel(), loader(), loader(), ckpt_path=str(tmp_path / "manual.ckpt"))
    assert ("load", "manual.ckpt") in io.calls and resumed.global_step == 8


def test_default_checkpoint_io_is_atomic_torch_save(tmp_path: Path, tiny: TinyModel) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2)
    assert type(trainer.checkpoint_io) is TorchCheckpointIO
    trainer.fit(tiny, loader())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    assert torch.load(tmp_path / "a.ckpt", weights_only=False)["global_step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    with pytest.raises(TypeError, match="storage_options"):
        trainer.save_checkpoint(tmp_path / "b.ckpt", storage_options={"x": 1})
    trainer.checkpoint_io.remove_checkpoint(tmp_path / "missing.ckpt")  # a missing file is not an error


def test_precision_plugin_replaces_precision_argument(tmp_path: Path, tiny: TinyModel) -> None:
    class Traced(Precision):
        entered = 0

        def forward_context(self) -> Any:
            Traced.entered += 1
            return super().forward_context()

    plugin = Traced("bf16-mixed", "cpu")
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, plugins=plugin)
    assert trainer.precision_plugin is plugin and trainer.precision == "bf16-mixed"
    trainer.fit(tiny, loader())
    assert Traced.entered == 2  # the plugin, not a fresh Precision, ran each training step
    with pytest.raises(ValueError, match="precision"):
        quiet_trainer(tmp_path, precision="16-mixed", plugins=[Precision("bf16-mixed", "cpu")])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device type 'cuda'"):
            quiet_trainer(tmp_path, plugins=[Precision("bf16-mixed", "cuda")])


def test_single_process_cluster_environment(tmp_path: Path) -> None:
    env = ClusterEnvironment(global_rank=0, local_rank=0, node_rank=0, world_size=1, local_world_size=1,
                             num_nodes=1, master_addr="127.0.0.1", master_port=29500, source="local", launched=False)
    trainer = quiet_trainer(tmp_path, plugins=[env], devices="auto")
    assert isinstance(trainer.strategy, SingleDeviceStrategy) and trainer.global_rank == 0
    unlaunched = ClusterEnvironment(global_rank=0, local_rank=0, node_rank=0, world_size=4, local_world_size=2,
                                    num_nodes=2, master_addr="10.0.0.1", master_port=29500, source="volt",
                                    launched=False)
    with pytest.raises(ValueError, match="launched=True"):
        quiet_trainer(tmp_path, plugins=[unlaunched])


_RANK_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    import volt
    from volt.plugins import ClusterEnvironment
    from torch.utils.data import DataLoader, TensorDataset

    rank, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    env = ClusterEnvironment(global_rank=rank, local_rank=rank, node_rank=0, world_size=2, local_world_size=2,
                             num_nodes=1, master_addr="127.0.0.1", master_port=port, source="volt", launched=True)

    class Model(volt.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)
        def training_step(self, batch, batch_idx):
            return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(rank)  # different initial weights: only DDP's broadcast makes them equal
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 2, generator=g), torch.randn(16, 1, generator=g))
    trainer = volt.Trainer(accelerator="cpu", devices="auto", plugins=[env], max_epochs=1, logger=False,
                           enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    model = Model()
    trainer.fit(model, DataLoader(data, batch_size=4))
    json.dump({"rank": trainer.global_rank, "world_size": trainer.world_size, "devices": trainer.num_devices,
               "strategy": type(trainer.strategy).__name__, "steps": trainer.global_step,
               "weight": model.layer.weight.flatten().tolist()}, open(out, "w"))
""")


def test_cluster_environment_plugin_sets_ranks_for_ddp(tmp_path: Path) -> None:
    """Two real processes, no launcher variables: each learns its rank from the plugin and they train as one."""
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(script), str(r), port, str(tmp_path / f"r{r}.json")],
                              env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=100)
        assert p.returncode == 0, out[-3000:]
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["devices"], r["strategy"]) for r in results] == [
        (0, 2, 2, "DDPStrategy"), (1, 2, 2, "DDPStrategy")]
    assert results[0]["steps"] == results[1]["steps"] == 2  # 16 samples / 2 ranks / batch 4
    assert results[0]["weight"] == results[1]["weight"]


def test_legacy_strategy_name_in_plugins(tmp_path: Path) -> None:
    trainer = quiet_trainer(tmp_path, plugins="ddp_find_unused_parameters_true", devices=2)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._ddp_kwargs == {"find_unused_parameters": True}
    with pytest.raises(ValueError, match="pass only strategy="):
        quiet_trainer(tmp_path, plugins="ddp", strategy="single_device")


@pytest.mark.parametrize("plugins, error, match", [
    (object(), TypeError, r"plugins=\.\.\.\) got object"),
    ([TorchCheckpointIO(), 3], TypeError, r"plugins=\.\.\.\) got int 3.*Accepted: a volt.plugins.Precision"),
    ("deepspeed", ValueError, r"plugins='deepspeed'\): not a plugin volt knows"),
    ("16-mixed", ValueError, r"precision="),
    ([TorchCheckpointIO(), TorchCheckpointIO()], ValueError, "two checkpoint_io plugins"),
])
def test_bad_plugins_raise_naming_the_argument(tmp_path: Path, plugins: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        quiet_trainer(tmp_path, plugins=plugins)


def test_checkpoint_io_is_abstract() -> None:
    with pytest.raises(TypeError):
        CheckpointIO()  # type: ignore[abstract]
    assert volt.plugins.Precision is volt.precision.Precision
