"""CombinedLoader: Lightning's four modes, lengths, limits and the collection's shape (values by hand)."""
from __future__ import annotations

import json
from typing import Any, List

import pytest
import torch
from ddp_support import logs, script, start_nodes, wait_all
from torch.utils.data import DataLoader

import volt
from volt.utilities import CombinedLoader


def numbers(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.tolist()
    if isinstance(batch, dict):
        return {k: numbers(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(numbers(v) for v in batch)
    return batch


def loaders() -> dict:
    return {"a": DataLoader(range(6), batch_size=4), "b": DataLoader(range(15), batch_size=5)}


def run(combined: CombinedLoader) -> List[Any]:
    return [(numbers(batch), idx, loader_idx) for batch, idx, loader_idx in combined]


def test_max_size_cycle_restarts_the_shorter() -> None:
    combined = CombinedLoader(loaders(), "max_size_cycle")
    assert len(combined) == 3
    assert run(combined) == [
        ({"a": [0, 1, 2, 3], "b": [0, 1, 2, 3, 4]}, 0, 0),
        ({"a": [4, 5], "b": [5, 6, 7, 8, 9]}, 1, 0),
        ({"a": [0, 1, 2, 3], "b": [10, 11, 12, 13, 14]}, 2, 0),
    ]


def test_max_size_gives_none_for_finished_loaders() -> None:
    assert run(CombinedLoader(loaders(), "max_size"))[2] == ({"a": None, "b": [10, 11, 12, 13, 14]}, 2, 0)


def test_min_size_stops_with_the_shortest() -> None:
    combined = CombinedLoader(loaders(), "min_size")  # the default mode
    assert len(combined) == 2 and len(run(combined)) == 2 and CombinedLoader(loaders()).mode == "min_size"


def test_sequential_runs_each_loader_with_its_index() -> None:
    combined = CombinedLoader(loaders(), "sequential")
    assert len(combined) == 5
    assert [(idx, loader_idx) for _, idx, loader_idx in run(combined)] == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)]
    assert run(combined)[2][0] == [0, 1, 2, 3, 4]


def test_limits_cap_each_loader() -> None:
    combined = CombinedLoader(loaders(), "sequential")
    combined.limits = 1
    assert len(combined) == 2 and [b for b, _, _ in run(combined)] == [[0, 1, 2, 3], [0, 1, 2, 3, 4]]
    cycle = CombinedLoader(loaders(), "max_size_cycle")
    cycle.limits = [5, 2]
    assert len(cycle) == 2 and len(run(cycle)) == 2
    with pytest.raises(ValueError, match="2 iterables"):
        cycle.limits = [1, 2, 3]


def test_shapes_samplers_and_bad_input() -> None:
    nested = CombinedLoader([DataLoader(range(2)), (DataLoader(range(3)),)], "max_size_cycle")
    first, _, _ = next(iter(nested))
    assert isinstance(first, list) and isinstance(first[1], tuple)
    assert isinstance(nested.sampler[1], tuple) and len(nested.flattened) == 2
    with pytest.raises(ValueError, match="mode='bogus'"):
        CombinedLoader(loaders(), "bogus")
    with pytest.raises(TypeError, match="not iterable"):
        CombinedLoader({"a": 3})
    endless = CombinedLoader({"a": iter(range(3))}, "min_size")
    with pytest.raises(TypeError, match="no length"):
        len(endless)


@pytest.mark.timeout(120)
def test_trainer_combines_training_loaders_and_runs_validation_loaders_in_turn(tmp_path: Any) -> None:
    seen: List[Any] = []

    class Model(volt.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            seen.append(("train", batch_idx, sorted(batch)))
            return sum(self.layer(b.float().unsqueeze(1)).sum() for b in batch.values())

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
            seen.append(("val", batch_idx, dataloader_idx))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    trainer = volt.Trainer(default_root_dir=str(tmp_path), max_epochs=1, logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    val = CombinedLoader([DataLoader(range(2)), DataLoader(range(3))], "sequential")
    trainer.fit(Model(), loaders(), val)
    assert trainer.num_training_batches == 3 and trainer.global_step == 3
    assert seen == [("train", i, ["a", "b"]) for i in range(3)] + \
        [("val", 0, 0), ("val", 1, 0), ("val", 0, 1), ("val", 1, 1), ("val", 2, 1)]
    with pytest.raises(ValueError, match="sequential"):
        trainer.fit(Model(), CombinedLoader(loaders(), "sequential"))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_under_ddp_every_inner_loader_is_sharded(tmp_path: Any) -> None:
    out = tmp_path / "out"
    out.mkdir()
    procs = start_nodes(1, 2, script("combined_loader.py"), tmp_path, OUT_DIR=str(out))
    assert wait_all(procs, 200) == [0], logs(tmp_path)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    for got in ranks:
        # "a" has 8 samples per rank (4 batches of 2), "b" 4 (2 batches, cycled): 4 steps per epoch
        assert (got["global_step"], got["num_training_batches"]) == (8, 4.0), got
        assert len(got["a"]) == 8 and len(got["b"]) == 8 and len(set(got["b"])) == 4
    for key, size in (("a", 16), ("b", 8), ("val0", 6), ("val1", 4)):
        shards = [set(got[key]) for got in ranks]
        assert not shards[0] & shards[1], key  # each sample on one rank
        assert shards[0] | shards[1] == set(range(size)), key
