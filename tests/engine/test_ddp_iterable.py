"""IterableDatasets under DDP: volt does not shard them (as Lightning), warns once, and
ranks whose streams have different lengths stop together instead of deadlocking."""
import json

import pytest

from ddp_support import logs, script, start_nodes, wait_all

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_uneven_iterable_streams_end_every_epoch_at_the_shortest_rank(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    procs = start_nodes(1, 2, script("uneven_iterable.py"), tmp_path, OUT_DIR=str(out),
                        VOLT_UNEVEN_CHECK_EVERY_N_BATCHES="4")
    # Without the agreement the longer rank waits forever in DDP's all-reduce.
    assert wait_all(procs, 200) == [0], logs(tmp_path)

    def result(case, rank):
        return json.loads((out / f"{case}-rank{rank}.json").read_text())

    expected = {"uneven": (26, [13, 13]), "one_more": (8, [8]), "even": (6, [6])}
    for case, (steps, per_epoch) in expected.items():
        ranks = [result(case, rank) for rank in (0, 1)]
        for rank, got in enumerate(ranks):
            assert (got["global_step"], got["batches_per_epoch"]) == (steps, per_epoch), (case, rank, got)
        assert ranks[0]["weight"] == ranks[1]["weight"], case  # the same steps, gradients averaged

    text = (tmp_path / "node0.log").read_text()
    assert text.count("wraps an IterableDataset: volt does not shard it") == 3, logs(tmp_path)  # once per Trainer
    assert "get_worker_info" in text and "trainer.global_rank / trainer.world_size" in text
    # the uneven cases are reported once per Trainer, with the batch count every rank ran
    assert "the shortest ended after 13 batches of this epoch" in text
    assert "the shortest ended after 8 batches of this epoch" in text
    assert text.count("training streams have different lengths") == 2
