"""DDPStrategy's collectives, sampler injection and uneven-data handling in 2 real processes."""
import pytest
import torch

from ddp_support import logs, script, start_nodes, wait_all

pytestmark = pytest.mark.slow


@pytest.mark.timeout(150)
def test_collectives_and_sharding(tmp_path):
    procs = start_nodes(1, 2, script("collectives.py"), tmp_path)
    assert wait_all(procs, 120) == [0], logs(tmp_path)
    text = (tmp_path / "node0.log").read_text()
    assert "rank 0: collectives ok" in text and "rank 1: collectives ok" in text
    assert "every rank runs 2 so that DDP does not deadlock" in text


# --- in-process pieces (no process group) ---------------------------------------------------------

from volt.strategies.ddp import DDPStrategy, _ShardedSampler, normalize_strategy_name  # noqa: E402


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name, note", [("ddp", None), ("DDP_SPAWN", "runs as 'ddp'"), ("dp", "DataParallel"),
                                        ("ddp2", "runs as 'ddp'"), ("ddp_cpu", "accelerator='cpu'")])
def test_strategy_names_map_to_ddp(name, note):
    canonical, message = normalize_strategy_name(name)
    assert canonical == "ddp"
    assert (message is None) if note is None else (note in message)


@pytest.mark.timeout(30)
def test_unknown_names_and_bad_layouts_are_refused():
    with pytest.raises(ValueError, match="'horovod' is not a DDP strategy"):
        normalize_strategy_name("horovod")
    with pytest.raises(ValueError, match="accelerator must be 'cpu' or 'cuda'"):
        DDPStrategy(accelerator="tpu")
    with pytest.raises(ValueError, match="devices must be an int >= 1"):
        DDPStrategy(accelerator="cpu", devices=0)
    with pytest.raises(ValueError, match="process_group_backend must be"):
        DDPStrategy(accelerator="cpu", process_group_backend="smoke")


@pytest.mark.timeout(30)
def test_sharded_user_sampler_pads_and_partitions():
    shards = [list(_ShardedSampler(range(10), num_replicas=4, rank=r)) for r in range(4)]
    assert all(len(s) == 3 for s in shards) and len(_ShardedSampler(range(10), 4, 0)) == 3
    assert sorted(i for s in shards for i in s) == sorted(list(range(10)) + [0, 1])


@pytest.mark.timeout(30)
def test_world_of_one_leaves_loaders_alone(monkeypatch):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "NUM_NODES", "PET_NNODES", "PET_NODE_RANK"):
        monkeypatch.delenv(var, raising=False)
    strategy = DDPStrategy(accelerator="cpu", devices=1, num_nodes=1)
    strategy.setup_environment()  # one process, no launcher: nothing to start
    loader = [1, 2, 3]
    assert strategy.process_dataloader(loader, "train") is loader
    assert strategy.world_size == 1 and strategy.reduce(torch.ones(1), "sum").item() == 1.0


# A rank that dies of a peer's failure must exit PEER_LOST, not USER_ERROR: volt-run
# reports each node's first-hand code, so a misread consequence would fail the job
# (and name the wrong rank) when the real cause is retryable.
PEER_ERRORS = [
    RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                 "[127.0.0.1]:35235. This is typically caused by a remote worker crashing."),  # seen in these tests
    RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:598] Connection reset by peer [10.0.0.7]:40000"),
    RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network error, "
                 "NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network error or a remote "
                 "process exiting prematurely."),
]
OWN_ERRORS = [
    RuntimeError("injected failure on rank 1"),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ValueError("Connection closed by peer"),  # not a RuntimeError from torch: the user's own
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("error, peer", [(e, True) for e in PEER_ERRORS] + [(e, False) for e in OWN_ERRORS])
def test_errors_caused_by_a_dead_peer_are_told_apart(error, peer):
    import torch.distributed as dist

    from volt.strategies.ddp import _is_peer_failure

    assert _is_peer_failure(error) is peer
    if hasattr(dist, "DistNetworkError"):
        assert _is_peer_failure(dist.DistNetworkError("store gone"))
