"""Rendezvous across attempts: a node reaching a previous attempt's node 0 waits for its own.

After a gang restart, node 0 comes back under the same DNS name. Until every
resolver forgets the old pod, another node can reach the previous attempt's
node 0, still shutting down, whose store holds a finished roll call.
"""
import contextlib
import subprocess
import sys
import time
from typing import Iterator

import pytest

from ddp_support import child_env, example, free_port, logs, volt_run, wait_all, wait_for

pytestmark = pytest.mark.slow

STALE_STORE = """
import sys, time
from datetime import timedelta
from torch.distributed import TCPStore
store = TCPStore("127.0.0.1", int(sys.argv[1]), None, True, timedelta(seconds=30), wait_for_workers=False,
                 multi_tenant=True)
# What a previous attempt's node 0 holds: its signature and a completed roll call.
store.set("volt/owner", "job-0")
for key in ("volt/rollcall/0", "volt/rollcall/1", "volt/rollcall/go"):
    store.set(key, "1")
print("stale store up", flush=True)
time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def stale_store(port: int, seconds: float) -> Iterator[subprocess.Popen]:
    """A previous attempt's node 0 store on ``port`` for ``seconds``."""
    stale = subprocess.Popen([sys.executable, "-c", STALE_STORE, str(port), str(seconds)], env=child_env(),
                             stdout=subprocess.PIPE, text=True)
    try:
        assert stale.stdout.readline().strip() == "stale store up"
        yield stale
    finally:
        stale.kill()
        stale.wait()


def node_env(port: int, node: int, attempt: int) -> dict:
    return child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_RANK=str(node), NUM_NODES="2",
                     WORLD_SIZE="2", PET_NPROC_PER_NODE="1", VOLT_JOB_NAME="job", VOLT_ATTEMPT=str(attempt))


@pytest.mark.timeout(300)
def test_a_node_that_reaches_the_previous_attempts_store_waits_for_its_own(tmp_path):
    port = free_port()
    with stale_store(port, 120) as stale:
        # Attempt 1's node 1 starts while the old node 0 still answers on MASTER_ADDR; the old
        # store goes away once node 1 has found it (however long node 1 takes to start).
        command = ["--rdzv-timeout", "150", *example("--samples", "256", "--max-epochs", "1")]
        node1 = volt_run(command, node_env(port, 1, attempt=1), tmp_path / "node1.log")
        wait_for(lambda: "not of this run" in (tmp_path / "node1.log").read_text(), 100,
                 "node 1 to find the previous attempt's store")
        stale.kill()
        stale.wait()
        node0 = volt_run(command, node_env(port, 0, attempt=1), tmp_path / "node0.log")
        assert wait_all([node0, node1], 150) == [0, 0], logs(tmp_path)
    text = (tmp_path / "node1.log").read_text()
    assert "is node 0 of run 'job-0', not of this run 'job-1'" in text, logs(tmp_path)
    assert text.count("not of this run") == 1  # said once, not once per retry


@pytest.mark.timeout(120)
def test_a_node_that_only_ever_finds_another_runs_store_names_it_and_exits_77(tmp_path):
    port = free_port()
    with stale_store(port, 60):
        started = time.monotonic()
        node1 = volt_run(["--rdzv-timeout", "4", *example()], node_env(port, 1, attempt=1), tmp_path / "node1.log")
        assert wait_all([node1], 60) == [77], logs(tmp_path)
        assert time.monotonic() - started < 40
    text = (tmp_path / "node1.log").read_text()
    assert "of run 'job-1' did not come up within 4 s" in text, logs(tmp_path)
    assert "only found 127.0.0.1 (run job-0)" in text, logs(tmp_path)


@pytest.mark.timeout(240)
def test_nodes_finishing_a_minute_apart_all_succeed(tmp_path):
    # Node 0 finishes first and waits for the others at torch's exit barrier, keeping the
    # store up. A barrier shorter than the gap (torch's 60 s default) lets node 0 leave, and
    # the later node finds the store gone: it took that for node 0's death and killed its
    # own healthy processes (exit 76), so the operator restarted a job that had succeeded.
    from ddp_support import script, start_nodes

    procs = start_nodes(2, 1, ["--rdzv-timeout", "120", *script("linger_after_fit.py", "--max-epochs", "1")],
                        tmp_path, LINGER_NODE="1", LINGER_S="65")
    assert wait_all(procs, 220) == [0, 0], logs(tmp_path)
