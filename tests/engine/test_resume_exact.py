"""Exact resume building blocks: RNG snapshots and skipping done batches without loading them."""
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from volt.resume import capture_rng_state, restore_rng_state, resume_epoch_iterator, skip_batches

pytestmark = pytest.mark.timeout(60)


class CountingDataset(Dataset):
    def __init__(self, n):
        self.n = n
        self.loaded = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.loaded.append(i)
        return torch.tensor(i)


def _epoch(loader, steps_rng):
    """Batches of one epoch, each followed by a 'training step' that draws random numbers."""
    out = []
    for batch in loader:
        out.append((batch.tolist(), torch.rand(1).item(), random.random(), float(np.random.rand())))
        steps_rng.append(capture_rng_state())
    return out


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_mid_epoch_replays_order_and_rng_exactly(num_workers):
    torch.manual_seed(123)
    random.seed(1)
    np.random.seed(2)
    ds = CountingDataset(40)
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=num_workers)
    _epoch(loader, [])  # epoch 0 moves the generators along
    epoch_start = capture_rng_state()
    states = []
    full = _epoch(loader, states)

    k = 3  # the checkpoint was taken after batch k-1
    torch.manual_seed(999)  # a fresh process: the generators are somewhere else entirely
    ds.loaded.clear()
    it = resume_epoch_iterator(loader, k, epoch_start, states[k - 1])
    rest = []
    for batch in it:
        rest.append((batch.tolist(), torch.rand(1).item(), random.random(), float(np.random.rand())))
    assert rest == full[k:]
    skipped = {i for b, *_ in full[:k] for i in b}
    if num_workers == 0:  # workers load in their own process
        assert not skipped & set(ds.loaded), "skipped batches must not be loaded"
    resumed_loader = skip_batches(loader, k)
    assert len(resumed_loader) == len(loader)
    assert sum(1 for _ in resumed_loader) == len(loader) - k
    assert sum(1 for _ in resumed_loader) == len(loader), "the next epoch is whole again"


def test_skip_batches_rejects_bad_input():
    with pytest.raises(ValueError, match="n must be >= 0"):
        skip_batches(DataLoader(CountingDataset(4)), -1)
    with pytest.raises(TypeError, match="map-style torch DataLoader"):
        skip_batches([1, 2, 3], 1)
    with pytest.raises(ValueError, match="capture_rng_state"):
        restore_rng_state({})
