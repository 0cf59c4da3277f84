"""Which samples each DDP rank sees, per stage and epoch: Lightning's sampler rule, on a real 2-process run.

``lightning_ddp_sampler_script.py`` runs under volt (``Trainer(devices=2, strategy="ddp")``, gloo, the
second process started by volt itself) and every rank's indices must be what the rule written out here
gives (docs/distributed.md, "Samplers"). ``test_lightning_differential.py`` runs the same script under
Lightning and compares the two engines where its venv exists.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
import torch

from ddp_support import child_env, kill_all
from volt.strategies.ddp import _ShardedSampler

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("lightning_ddp_sampler_script.py")
SAMPLES, WORLD, BATCH, EPOCHS = 13, 2, 2, 2  # as in the script
RANKS = range(WORLD)
Seen = Dict[str, Dict[str, List[int]]]  # scenario -> "stage/epoch" -> indices, for one rank


def permutation(seed: int, epoch: int) -> List[int]:
    """DistributedSampler's epoch order: the same on every rank and at every world size."""
    generator = torch.Generator()
    generator.manual_seed(seed + epoch)
    return torch.randperm(SAMPLES, generator=generator).tolist()


def dealt(order: Sequence[int], rank: int, pad: bool = True) -> List[int]:
    """Rank ``rank``'s share: positions rank, rank+N, ... of ``order`` padded with its first items to a
    multiple of N (without ``pad``: every item exactly once, ranks may differ by one)."""
    order = list(order)
    if pad:
        order += order[: -len(order) % WORLD]
    return order[rank::WORLD]


def rotating(epoch: int) -> List[int]:
    """The script's custom sampler after ``set_epoch(epoch)``."""
    order = list(reversed(range(SAMPLES)))
    return order[epoch:] + order[:epoch]


def in_order() -> List[int]:
    return list(range(SAMPLES))


def expected(rank: int) -> Seen:
    """Training always shuffles (seed + epoch), a custom sampler's order included; evaluation shuffles only a
    RandomSampler; samplers get the training epoch (a test after fit() runs at epoch 2); prediction deals
    each sample once and in order; a user's DistributedSampler and use_distributed_sampler=False are left
    alone; overfit_batches turns shuffling off; seed_everything seeds the permutation."""
    epochs = range(EPOCHS)
    shuffled = {e: dealt(permutation(0, e), rank) for e in range(EPOCHS + 1)}
    plain = dealt(in_order(), rank)
    last = f"/{EPOCHS}"
    return {
        "fit_shuffle": {**{f"train/{e}": shuffled[e] for e in epochs}, **{f"val/{e}": shuffled[e] for e in epochs},
                        "test" + last: shuffled[EPOCHS]},
        "fit_sequential": {**{f"train/{e}": shuffled[e] for e in epochs}, **{f"val/{e}": plain for e in epochs},
                           "test" + last: plain},
        "fit_custom": {
            **{f"train/{e}": dealt([rotating(e)[i] for i in permutation(0, e)], rank) for e in epochs},
            **{f"val/{e}": dealt(rotating(e), rank) for e in epochs}, "test" + last: dealt(rotating(EPOCHS), rank),
        },
        # a batch sampler of the user's is re-created around the DistributedSampler; its RandomSampler
        # shuffles validation too; batches of 3 with drop_last: 6 of each rank's 7 samples
        "fit_batch_sampler": {**{f"{stage}/{e}": shuffled[e][:6] for stage in ("train", "val") for e in epochs},
                              "test" + last: shuffled[EPOCHS][:6]},
        # torch's BatchSampler passed as batch_sampler= keeps its batch size: 7 samples a rank in 3 + 3 + 1
        "fit_plain_batch_sampler_sizes": {f"train/{e}": [3, 3, 1] for e in epochs},
        "fit_user_distributed": {**{f"{stage}/{e}": plain for stage in ("train", "val") for e in epochs},
                                 "test" + last: plain},
        # drop_last stays the DataLoader's: 7 samples per rank, the last incomplete batch dropped
        "fit_shuffle_drop_last": {f"train/{e}": shuffled[e][:6] for e in epochs},
        "fit_sequential_drop_last": {f"train/{e}": shuffled[e][:6] for e in epochs},
        "evaluate_shuffle": {"test/0": shuffled[0], "predict/0": dealt(in_order(), rank, pad=False)},
        "evaluate_sequential": {"test/0": plain, "predict/0": dealt(in_order(), rank, pad=False)},
        "evaluate_custom": {"test/0": dealt(rotating(0), rank), "predict/0": dealt(rotating(0), rank, pad=False)},
        "not_distributed": {**{f"{stage}/{e}": in_order() for stage in ("train", "val") for e in epochs},
                            "test" + last: in_order(), "predict" + last: in_order()},
        "overfit_batches": {f"train/{e}": plain[:2 * BATCH] for e in epochs},
        "seeded_shuffle": {f"{stage}/{e}": dealt(permutation(123, e), rank) for stage in ("train", "val")
                           for e in epochs},
        "seeded_sequential": {f"train/{e}": dealt(permutation(123, e), rank) for e in epochs},
    }


def run_script(python: str, engine: str, out: Path, timeout: float) -> List[Seen]:
    """The script under ``engine`` with ``python``: what each rank saw."""
    with open(out / f"{engine}.log", "wb") as log:
        proc = subprocess.Popen([python, str(SCRIPT), engine, str(out)], env=child_env(PYTHONHASHSEED="0"),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout)  # about 30 s alone, 50 s beside another run on a loaded 2-core VM
    finally:
        kill_all([proc])
    assert code == 0, f"the {engine} DDP run failed:\n{(out / f'{engine}.log').read_text()[-4000:]}"
    return [json.loads((out / f"{engine}-{rank}.json").read_text()) for rank in RANKS]


@pytest.fixture(scope="module")
def volt_seen(tmp_path_factory: pytest.TempPathFactory) -> List[Seen]:
    return run_script(sys.executable, "volt", tmp_path_factory.mktemp("ddp_samplers"), timeout=300)


@pytest.mark.timeout(360)
@pytest.mark.parametrize("scenario", sorted(expected(0)))
def test_each_rank_sees_what_lightnings_rule_deals(volt_seen: List[Seen], scenario: str) -> None:
    for rank in RANKS:
        assert volt_seen[rank][scenario] == expected(rank)[scenario], f"rank {rank}"


@pytest.mark.timeout(360)
def test_every_sample_is_seen_once_per_epoch_apart_from_padding(volt_seen: List[Seen]) -> None:
    """The rule's point: the ranks split each epoch (one padding copy at 13 samples); prediction, unpadded,
    predicts each sample exactly once; different epochs deal different orders."""
    def union(scenario: str, key: str) -> List[int]:
        return sorted(i for rank in RANKS for i in volt_seen[rank][scenario][key])

    for scenario in ("fit_shuffle", "fit_sequential", "fit_custom"):
        for key in ("train/0", "train/1"):
            everything = union(scenario, key)
            assert len(everything) == SAMPLES + 1 and sorted(set(everything)) == in_order(), (scenario, key)
        assert volt_seen[0][scenario]["train/0"] != volt_seen[0][scenario]["train/1"], scenario
    for scenario in ("evaluate_shuffle", "evaluate_sequential", "evaluate_custom"):
        assert union(scenario, "predict/0") == in_order(), scenario


@pytest.mark.timeout(30)
def test_a_custom_sampler_smaller_than_the_world_is_padded_like_distributed_sampler() -> None:
    """One index, four ranks: DistributedSampler repeats it for every rank; so does the custom-sampler dealer."""
    shards = [list(_ShardedSampler([7], num_replicas=4, rank=r)) for r in range(4)]
    assert shards == [[7]] * 4
    assert [len(_ShardedSampler(range(5), 4, r, pad=False)) for r in range(4)] == [2, 1, 1, 1]
    assert [list(_ShardedSampler(range(5), 4, r, pad=False)) for r in range(4)] == [[0, 4], [1], [2], [3]]
