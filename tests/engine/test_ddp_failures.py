"""Failure handling of volt-run: a missing peer and a crashing rank end everything promptly."""
import time

import pytest

from ddp_support import example, logs, script, start_nodes, wait_all

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_missing_peer_is_named_and_exits_rendezvous_timeout(tmp_path):
    # Nodes 0 and 2 of 3 start; node 1 never does. Well within the default 300 s rendezvous
    # timeout, on a machine however busy: the 4 s one was applied (the message names it).
    procs = start_nodes(3, 1, ["--rdzv-timeout", "4", *example()], tmp_path)
    missing = procs.pop(1)
    missing.kill()
    missing.wait()
    assert wait_all(procs, 200) == [77, 77], logs(tmp_path)
    for node in (0, 2):
        text = (tmp_path / f"node{node}.log").read_text()
        assert "node rank(s) [1] of NUM_NODES=3 did not join within 4 s" in text, logs(tmp_path)


@pytest.mark.timeout(300)
def test_one_rank_raising_ends_every_node_quickly(tmp_path):
    # "Quickly": long before the 30 min collective timeout that would end node 0 without
    # volt's failure propagation, on a machine however busy.
    procs = start_nodes(2, 1, script("raise_on_rank.py", "--max-steps", "100000", "--samples", "256"), tmp_path,
                        FAIL_RANK="1", FAIL_STEP="5")
    codes = wait_all(procs, 240)
    assert codes == [76, 1], logs(tmp_path)  # node 0: peer lost (retryable); node 1: the user error
    assert "injected failure on rank 1" in (tmp_path / "node1.log").read_text()


@pytest.mark.timeout(300)
def test_the_failing_node_reports_its_own_code_when_the_peer_lost_report_comes_first(tmp_path):
    # Rank 1 closes its connections, so rank 0 exits 76 and node 0 reports "peer lost"
    # to the store; rank 1 raises only once its own node has read that report (an
    # event, not a delay). Node 1 must still exit 1 (it saw the user error first-hand),
    # not 76 (what it read in the store), and must not kill its own rank early because
    # of a mere PEER_LOST report.
    procs = start_nodes(2, 1, script("raise_on_rank.py", "--max-steps", "100000", "--samples", "256"), tmp_path,
                        FAIL_RANK="1", FAIL_STEP="5", FAIL_CLOSE_FIRST="1",
                        FAIL_AFTER_LOG=str(tmp_path / "node1.log"), FAIL_AFTER_TEXT="reported exit code 76")
    codes = wait_all(procs, 240)
    assert codes == [76, 1], logs(tmp_path)
    node0, node1 = (tmp_path / "node0.log").read_text(), (tmp_path / "node1.log").read_text()
    assert "exiting with 76" in node0, logs(tmp_path)
    # The peer-lost report really came first: node 1 read it before its rank failed.
    assert node1.index("reported exit code 76") < node1.index("injected failure on rank 1"), logs(tmp_path)
    assert "injected failure on rank 1" in node1
    assert "stopping this node's workers" not in node1, logs(tmp_path)


def test_a_node_whose_rank_filled_the_volume_exits_79_even_when_a_peer_lost_it_first(tmp_path):
    # Rank 0 hits a full checkpoint volume (exit 79) and is slow to exit; rank 1 sees its
    # connections close and exits 76 first, and torch's agent stops rank 0 with SIGTERM.
    # The node saw the full volume first-hand: volt-run exits 79, and says why.
    procs = start_nodes(1, 2, script("raise_on_rank.py", "--max-steps", "100000", "--samples", "256"), tmp_path,
                        FAIL_RANK="0", FAIL_STEP="3", FAIL_VOLUME_FULL="1",
                        VOLT_TERMINATION_MESSAGE_PATH=str(tmp_path / "termination-log"))
    codes = wait_all(procs, 240)
    assert codes == [79], logs(tmp_path)
    text = (tmp_path / "node0.log").read_text()
    # The race really happened: rank 1 exited 76 while rank 0 was still exiting.
    assert "slow exit: waiting for the agent's SIGTERM" in text and "exiting with 76" in text, logs(tmp_path)
    assert (tmp_path / "termination-log").read_text().startswith("CheckpointVolumeFull: "), logs(tmp_path)


@pytest.mark.timeout(120)
def test_world_size_mismatch_fails_fast_naming_it(tmp_path):
    procs = start_nodes(1, 2, example(), tmp_path, VOLT_TRAINER='{"devices": 3}')
    assert wait_all(procs, 60) == [78], logs(tmp_path)
    assert "VOLT_TRAINER devices=3 asks for 3 process(es) per node but PET_NPROC_PER_NODE gives 2" in (
        tmp_path / "node0.log"
    ).read_text()


@pytest.mark.timeout(120)
def test_trainer_layout_disagreeing_with_the_launch_exits_config_error(tmp_path):
    # The launcher starts 2 processes; the script's Trainer says 3 devices: every rank exits 78.
    procs = start_nodes(1, 2, script("raise_on_rank.py", "--max-steps", "1"), tmp_path, FAIL_RANK="-1",
                        FAIL_STEP="0", VOLT_TRAINER_SCRIPT_DEVICES="3")
    assert wait_all(procs, 90) == [78], logs(tmp_path)
    assert ("WORLD_SIZE=2 from the volt environment, but Trainer(num_nodes=1, devices=3) = 1 node(s) x 3 process(es) "
            "per node = 3 processes") in (tmp_path / "node0.log").read_text()


@pytest.mark.timeout(120)
def test_sigterm_stragglers_are_killed_after_the_grace_period(tmp_path):
    import os
    import signal

    from ddp_support import wait_for

    ready = tmp_path / "ready"
    ready.mkdir()
    procs = start_nodes(1, 2, ["--grace-period", "2", *script("ignore_sigterm.py")], tmp_path, READY_DIR=str(ready))
    log = tmp_path / "node0.log"
    wait_for(lambda: len(list(ready.glob("rank-[0-9]"))) == 2, 60, "both workers")
    signalled = time.monotonic()
    os.kill(procs[0].pid, signal.SIGTERM)
    assert wait_all(procs, 60) == [143], logs(tmp_path)  # no checkpoint: "terminated", not 75
    assert 2 <= time.monotonic() - signalled < 30
    assert "workers still running 2 s after SIGTERM: killing them" in log.read_text()
