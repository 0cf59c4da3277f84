"""cluster.py: rank layout from the environment, and the errors for inconsistent ones."""
import pytest

from volt.cluster import ClusterConfigError, cluster_environment, node_environment

pytestmark = pytest.mark.timeout(30)


def test_nothing_set_is_one_local_process():
    env = cluster_environment({})
    assert (env.global_rank, env.world_size, env.num_nodes, env.source, env.launched) == (0, 1, 1, "local", False)
    assert env.master_addr == "127.0.0.1" and env.master_port == 29500
    env.validate(devices=4, num_nodes=1)  # local: the Trainer decides the layout


def test_torchrun_worker():
    env = cluster_environment(
        {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "2",
         "MASTER_ADDR": "h0", "MASTER_PORT": "1234"}
    )
    assert (env.global_rank, env.local_rank, env.node_rank, env.world_size, env.num_nodes) == (5, 1, 2, 8, 4)
    assert (env.source, env.launched, env.master_addr, env.master_port) == ("torchrun", True, "h0", 1234)
    env.validate(devices=2, num_nodes=4)


def test_volt_run_worker_reports_volt_source():
    env = cluster_environment(
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
         "VOLT_LAUNCHER": "volt-run"}
    )
    assert env.source == "volt"


def test_pod_contract_without_launcher_is_first_process_of_its_node():
    env = cluster_environment(
        {"MASTER_ADDR": "job-node-0.job", "MASTER_PORT": "29500", "NODE_RANK": "1", "NUM_NODES": "2",
         "WORLD_SIZE": "4", "PET_NPROC_PER_NODE": "2"}
    )
    assert (env.global_rank, env.local_rank, env.node_rank, env.world_size, env.local_world_size) == (2, 0, 1, 4, 2)
    assert env.source == "volt" and not env.launched
    env.validate(devices=2, num_nodes=2)


def test_world_size_mismatch_names_both_sides():
    env = cluster_environment({"NODE_RANK": "0", "NUM_NODES": "2", "WORLD_SIZE": "4"})
    with pytest.raises(ClusterConfigError, match=r"WORLD_SIZE=4.*num_nodes=2, devices=1.*= 2 processes"):
        env.validate(devices=1, num_nodes=2)


def test_local_world_size_mismatch_under_launcher():
    env = cluster_environment({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"})
    with pytest.raises(ClusterConfigError, match="num_nodes=2"):
        env.validate(devices=2, num_nodes=2)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "1"}, "pod-level RANK"),
        ({"LOCAL_RANK": "1"}, "LOCAL_RANK is set without"),
        ({"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, "RANK must be an integer"),
        ({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, r"RANK=2 is out of range"),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "2"}, "not a multiple"),
        ({"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0"},
         "does not match"),
        ({"NODE_RANK": "2", "NUM_NODES": "2"}, r"NODE_RANK=2 is out of range"),
        ({"NODE_RANK": "0", "NUM_NODES": "2", "WORLD_SIZE": "3"}, "not a multiple of NUM_NODES=2"),
        ({"NODE_RANK": "0", "NUM_NODES": "2", "PET_NNODES": "3"}, "NUM_NODES=2 and PET_NNODES=3 disagree"),
        ({"NUM_NODES": "2", "WORLD_SIZE": "4", "PET_NPROC_PER_NODE": "1"}, "PET_NPROC_PER_NODE=1"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT must be in"),
    ],
)
def test_bad_environments_fail_naming_the_variable(env, message):
    with pytest.raises(ClusterConfigError, match=message):
        cluster_environment(env)


def test_node_environment_reads_pet_twins():
    node = node_environment(
        {"PET_NNODES": "3", "PET_NODE_RANK": "2", "PET_NPROC_PER_NODE": "4", "PET_MASTER_ADDR": "m",
         "PET_MASTER_PORT": "2222"}
    )
    assert (node.num_nodes, node.node_rank, node.nproc_per_node, node.master_addr, node.master_port) == (3, 2, 4, "m", 2222)
    assert node.world_size is None
