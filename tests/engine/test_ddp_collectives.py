"""DDPStrategy's collectives, sampler injection and uneven-data handling in 2 real processes."""
import pytest

from ddp_support import logs, script, start_nodes, wait_all

pytestmark = pytest.mark.slow


@pytest.mark.timeout(150)
def test_collectives_and_sharding(tmp_path):
    procs = start_nodes(1, 2, script("collectives.py"), tmp_path)
    assert wait_all(procs, 120) == [0], logs(tmp_path)
    text = (tmp_path / "node0.log").read_text()
    assert "rank 0: collectives ok" in text and "rank 1: collectives ok" in text
    assert "every rank runs 2 so that DDP does not deadlock" in text
