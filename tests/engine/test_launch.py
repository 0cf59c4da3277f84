"""volt-run helpers that need no processes: overrides, resume policy, exit codes."""
import logging
import sys

import pytest

from volt import exit_codes
from volt.contract import JobContract, JobContractError
from volt.overrides import apply_trainer_settings

pytestmark = pytest.mark.timeout(30)


def test_volt_trainer_overrides_and_logs_each(caplog):
    caplog.set_level(logging.INFO, logger="volt.overrides")
    settings = JobContract.from_env({"VOLT_TRAINER": '{"max_epochs": 3, "devices": 2, "accelerator": "cpu"}'})
    out = apply_trainer_settings({"max_epochs": 10, "accelerator": "cpu", "logger": False}, settings.trainer_settings)
    assert out == {"max_epochs": 3, "devices": 2, "accelerator": "cpu", "logger": False}
    text = caplog.text
    assert "overrides Trainer(max_epochs=10) with 3" in text
    assert "sets Trainer(devices=2)" in text
    assert "accelerator" not in text  # same value: nothing to report


@pytest.mark.parametrize("script, replaced", [
    ({"gpus": 2}, "gpus=2"),
    ({"num_processes": 2, "accelerator": "ddp_cpu"}, "accelerator='ddp_cpu', num_processes=2"),
    ({"distributed_backend": "ddp", "num_processes": 4, "max_epochs": 1}, "num_processes=4, distributed_backend='ddp'"),
    ({"tpu_cores": 8, "plugins": ["ddp_sharded"]}, "tpu_cores=8, plugins=['ddp_sharded']"),
])
def test_the_jobs_placement_replaces_the_scripts_whole(caplog, script, replaced):
    caplog.set_level(logging.INFO, logger="volt.overrides")
    job = {"accelerator": "cpu", "devices": 2, "num_nodes": 1, "strategy": "ddp"}
    out = apply_trainer_settings(script, job)
    assert {k: out[k] for k in job} == job
    assert not {"gpus", "num_processes", "tpu_cores", "distributed_backend"} & set(out)
    assert out.get("plugins", []) == [] and out.get("max_epochs") == script.get("max_epochs")
    lines = [r.getMessage() for r in caplog.records if "replaces" in r.getMessage()]
    assert lines == [f"VOLT_TRAINER replaces the script's Trainer({replaced}) with the TrainingJob's "
                     "Trainer(accelerator='cpu', strategy='ddp', devices=2)"]
    assert "sets Trainer(devices" not in caplog.text  # named once, in the line above


def test_settings_without_placement_leave_the_scripts_placement():
    out = apply_trainer_settings({"gpus": 2, "max_epochs": 5}, {"max_epochs": 3})
    assert out == {"gpus": 2, "max_epochs": 3}


@pytest.mark.parametrize(
    "raw, message",
    [("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ('{"maxEpochs": 3}', "snake_case")],
)
def test_bad_volt_trainer_is_a_clear_error(raw, message):
    with pytest.raises(JobContractError, match=message):
        JobContract.from_env({"VOLT_TRAINER": raw})


def test_resume_policy():
    assert JobContract.from_env({}).resume_ckpt_path(None) is None
    assert JobContract.from_env({}).resume_ckpt_path("x.ckpt") == "x.ckpt"
    assert JobContract.from_env({"VOLT_RESUME": "Auto"}).resume_ckpt_path(None) == "last"
    assert JobContract.from_env({"VOLT_RESUME": "never"}).resume_ckpt_path("last") is None
    assert JobContract.from_env({"VOLT_RESUME": "/ckpt/a.ckpt"}).resume_ckpt_path(None) == "/ckpt/a.ckpt"


def test_exit_codes_are_distinct_and_described():
    codes = [exit_codes.SUCCESS, exit_codes.USER_ERROR, exit_codes.CHECKPOINTED, exit_codes.PEER_LOST,
             exit_codes.RENDEZVOUS_TIMEOUT, exit_codes.CONFIG_ERROR]
    assert len(set(codes)) == len(codes) and all(0 <= c < 128 for c in codes)
    assert exit_codes.is_retryable(exit_codes.CHECKPOINTED) and not exit_codes.is_retryable(exit_codes.CONFIG_ERROR)
    assert exit_codes.describe(137) == "killed by SIGKILL"
    assert exit_codes.describe(-15) == "killed by SIGTERM"
    assert "restart me" in exit_codes.describe(75)


# --- what one node's volt-run exits with (exit_codes.node_exit_code) -------------------------
# worker codes are in the order the agent saw them; kills as 128 + signal.
NODE_CASES = [
    # (id, worker_codes, kwargs, expected)
    ("all workers finished", [], dict(failed=False), 0),
    ("own rank raised", [1], dict(failed=True), 1),
    ("own rank raised; our sibling then lost it", [1, 76], dict(failed=True), 1),
    ("sibling lost the peer before our raising rank ended", [76, 1], dict(failed=True), 1),
    ("own rank raised; the agent stopped the sibling", [1, 143], dict(failed=True), 1),
    ("a script's own code", [3], dict(failed=True), 3),
    ("config error", [78], dict(failed=True), 78),
    ("OOM kill seen first is first-hand", [137, 76], dict(failed=True), 137),
    ("only lost peers", [76, 76], dict(failed=True), 76),
    ("lost a peer; the agent then killed the sibling", [76, 137], dict(failed=True), 76),
    ("we killed our ranks for a peer", [137, 137], dict(failed=True, stopped_for_peer=True), 76),
    ("we killed for a peer, but a rank had raised too", [137, 1], dict(failed=True, stopped_for_peer=True), 1),
    ("checkpointed on SIGTERM", [75, 75], dict(failed=True, sigterm=True), 75),
    ("checkpointed; a slower rank then stopped", [75, 137], dict(failed=True, sigterm=True), 75),
    ("checkpointed because a peer node got SIGTERM", [75], dict(failed=True), 75),
    ("SIGTERM, no checkpoint", [143], dict(failed=True, sigterm=True), 143),
    ("SIGTERM wins over a consequence", [76], dict(failed=True, sigterm=True), 143),
    ("rendezvous timed out", [], dict(failed=True, rendezvous_failed=True), 77),
    ("failed without a worker code", [], dict(failed=True), 1),
]


@pytest.mark.parametrize("codes, kwargs, expected", [c[1:] for c in NODE_CASES], ids=[c[0] for c in NODE_CASES])
def test_node_exit_code_reports_what_the_node_saw_first_hand(codes, kwargs, expected):
    assert exit_codes.node_exit_code(codes, **kwargs) == expected


def _pod(rank: int, code: int):
    from volt_operator.observed import PodView

    return PodView(name=f"job-node-{rank}", rank=rank, attempt=0, phase="Failed", ready=False, deleting=False,
                   gone=False, exit_code=code, reason="Error", message="", disrupted=False,
                   finished_at="2026-01-01T00:00:00Z", ip=None)


@pytest.mark.parametrize(
    "node_workers, verdict",
    [
        # node 1's rank raised; node 0's rank lost it (whichever reported first): fail, naming node 1
        ({0: ([76], False), 1: ([1], False)}, ("FailJob", "UserError", 1)),
        # node 1's rank was OOM-killed: restart, naming node 1, not node 0's consequence
        ({0: ([76], False), 1: ([137], False)}, ("RestartGang", "Crashed", 1)),
        # the same bug on every rank at once: fail, naming the lowest rank
        ({0: ([1], False), 1: ([1, 76], False)}, ("FailJob", "UserError", 0)),
        # node 0 killed its ranks (SIGKILL) because node 1 reported a failure
        ({0: ([137], True), 1: ([1], False)}, ("FailJob", "UserError", 1)),
    ],
)
def test_node_exit_codes_give_the_operator_the_root_cause(node_workers, verdict):
    """The operator's own policy (volt_operator.failures) on what each node reports."""
    from volt_operator import failures
    from volt_operator.api import FailurePolicy

    pods = []
    for node, (codes, stopped) in node_workers.items():
        pods.append(_pod(node, exit_codes.node_exit_code(codes, failed=True, stopped_for_peer=stopped)))
    got = failures.worst(pods, FailurePolicy())
    assert (got.action, got.reason, got.pod.rank) == verdict
    assert (failures.PEER_LOST, failures.CHECKPOINTED) == (exit_codes.PEER_LOST, exit_codes.CHECKPOINTED)


PEER_LOST_REPORT = {"node": 0, "rank": 0, "exitcode": 76}


@pytest.mark.parametrize(
    "report, root, store_lost, age, expected",
    [
        (None, None, False, 0.0, False),  # nothing happened
        (PEER_LOST_REPORT, None, False, 0.5, False),  # a consequence: the failing node may still be exiting
        (PEER_LOST_REPORT, None, True, 0.5, False),  # node 0 exited after reporting: the report decides
        (PEER_LOST_REPORT, None, False, "grace", True),  # nobody reported a cause in time
        (PEER_LOST_REPORT, {"node": 1, "rank": 1, "exitcode": 1}, False, 0.0, True),  # a root cause: stop now
        ({"node": 1, "rank": 1, "exitcode": 137}, {"node": 1, "rank": 1, "exitcode": 137}, False, 0.0, True),
        ({"node": 1, "rank": 2, "exitcode": 75}, None, False, 60.0, False),  # our ranks save and exit 75 too
        (None, None, True, 0.0, True),  # node 0 vanished without a word
    ],
)
def test_when_a_healthy_node_stops_its_workers_for_a_peer(report, root, store_lost, age, expected):
    from volt.launch import PEER_LOST_GRACE_S, should_stop_for_peer

    age = PEER_LOST_GRACE_S if age == "grace" else age
    assert should_stop_for_peer(report, root, store_lost, age) is expected


def test_volt_run_waits_stay_under_the_operators_wait_for_a_root_cause():
    """After a pod exits 76 the operator waits PEER_LOST_GRACE_SECONDS for the pod with the
    cause; volt-run's own waits (stopping for a mere 76, node 0 keeping its store up) must
    end before, or the operator restarts a gang whose root cause is still exiting."""
    from volt import launch
    from volt_operator import status

    assert launch.PEER_LOST_GRACE_S < launch._STORE_LINGER_S < status.PEER_LOST_GRACE_SECONDS


def test_in_place_restarts_are_refused_for_more_than_one_node():
    from volt.cluster import ClusterConfigError
    from volt.launch import build_parser, plan_launch

    env = {"NUM_NODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    command = [sys.executable, "-c", "pass"]
    with pytest.raises(ClusterConfigError, match="--max-restarts=2 restarts one node's processes in place"):
        plan_launch(build_parser().parse_args(["--max-restarts", "2", *command]), env)
    with pytest.raises(ClusterConfigError, match="--max-restarts must be >= 0"):
        plan_launch(build_parser().parse_args(["--max-restarts", "-1", *command]), {})
    assert plan_launch(build_parser().parse_args(["--max-restarts", "2", *command]), {}).max_restarts == 2
    assert plan_launch(build_parser().parse_args(command), env).max_restarts == 0
