"""The batches a gang's pods are created in (reconciler.slow_start)."""
from __future__ import annotations

import pytest

from volt_operator.reconciler import slow_start

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("count, sizes", [
    (0, []), (1, [1]), (2, [1, 1]), (3, [1, 2]), (8, [1, 2, 4, 1]), (15, [1, 2, 4, 8]),
    (64, [1, 2, 4, 8, 16, 32, 1]),
])
def test_batches_double_and_cover_every_pod_once_in_order(count: int, sizes: list) -> None:
    batches = list(slow_start([f"node-{i}" for i in range(count)]))
    assert [len(b) for b in batches] == sizes
    assert [p for b in batches for p in b] == [f"node-{i}" for i in range(count)]
