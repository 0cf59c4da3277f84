"""DDPStrategy's collectives and data sharding, checked inside 2+ real processes (gloo)."""
import os

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler, TensorDataset

from volt.strategies.ddp import DDPStrategy


class EveryThird(Sampler):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(0, self.n, 3))

    def __len__(self):
        return len(range(0, self.n, 3))


class Holder:
    use_distributed_sampler = True


def main():
    strategy = DDPStrategy(accelerator="cpu")
    strategy.setup_environment()
    strategy._trainer = Holder()
    rank, world = strategy.global_rank, strategy.world_size
    assert world == int(os.environ["WORLD_SIZE"]) and world > 1, world

    x = torch.tensor([float(rank + 1)])
    assert strategy.reduce(x, "sum").item() == sum(range(1, world + 1))
    assert strategy.reduce(x, "mean").item() == sum(range(1, world + 1)) / world
    assert strategy.reduce(x, "max").item() == world and x.item() == rank + 1, "reduce must not modify its input"
    assert strategy.all_gather(torch.tensor([rank, 10 * rank])).tolist() == [[r, 10 * r] for r in range(world)]
    assert strategy.broadcast({"from": rank}, src=world - 1) == {"from": world - 1}
    assert strategy.reduce_boolean_decision(rank == 0, all=False) is True
    assert strategy.reduce_boolean_decision(rank == 0, all=True) is False
    strategy.barrier("check")

    # Default samplers become DistributedSamplers: every sample exactly once across ranks.
    data = TensorDataset(torch.arange(40))
    loader = strategy.process_dataloader(DataLoader(data, batch_size=4, shuffle=True), "train")
    assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.shuffle
    mine = torch.cat([b[0] for b in loader])
    seen = strategy.all_gather(mine).flatten().sort().values
    assert seen.tolist() == list(range(40)), seen

    # A user sampler keeps its indices; they are sharded, not replaced.
    loader = strategy.process_dataloader(DataLoader(data, batch_size=2, sampler=EveryThird(40)), "val")
    mine = torch.cat([b[0] for b in loader])
    seen = set(strategy.all_gather(mine).flatten().tolist())
    assert seen == set(range(0, 40, 3)), seen

    # Uneven per-rank data (a user-sharded loader): every rank runs the same number of batches.
    uneven = TensorDataset(torch.arange(8 + 4 * rank))
    loader = strategy.process_dataloader(
        DataLoader(uneven, batch_size=4, sampler=DistributedSampler(uneven, num_replicas=1, rank=0)), "train"
    )
    assert len(loader) == 2 and sum(1 for _ in loader) == 2, len(loader)

    # use_distributed_sampler=False leaves the loader alone.
    Holder.use_distributed_sampler = False
    plain = DataLoader(data, batch_size=4)
    assert strategy.process_dataloader(plain, "val") is plain
    print(f"rank {rank}: collectives ok", flush=True)


if __name__ == "__main__":
    main()
