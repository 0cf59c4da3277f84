"""Fault injection: the 2x2 CPU example survives each fault and ends with an uninterrupted run's weights.

Each test starts the example job (2 node pods x 2 gloo processes, 64 steps,
a checkpoint every 10), waits for its status to show a seeded random step,
injects one fault, and waits for the end. It must end Succeeded with a final
state_dict equal bit for bit to that of an uninterrupted run of the same job
(computed once per module), or in the state docs/reliability.md documents,
with a reason that names the fault. Faults are injected on what the status
shows (status.training.step, the phase, the attempt), never after a sleep.

The seed is $VOLT_CHAOS_SEED (default 2026); it and the step are in each
test's id. Each test writes its outcome to chaos.json in its tmp dir; the
module prints the table (survived, weights equal, seconds from the fault to
the gang Running again) at the end. `make test-chaos` runs this directory.
"""
from __future__ import annotations

import contextlib
import json
import signal
import time
import urllib.error
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import torch

from chaos_faults import (
    Outcome, Stopwatch, chaos_seed, fault_rank, fault_step, fill, restart_api_server, signal_rank,
    small_volume, table, truncate_latest, worker_pids,
)
from job_helpers import apply, diagnosis, events, example, fresh_namespace, volume_dir
from operator_process import OperatorProcess, wait_until
from volt_operator.testing.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SEED = chaos_seed()
JOB = "chaos"
WORLD_SIZE = 4
# 2048 samples / 4 ranks / batch 32 = 16 steps an epoch, 4 epochs: 64 steps of >= 0.15 s,
# so the operator's 2 s progress polls see the job at several steps before it ends.
TOTAL_STEPS = 64
EVERY_N_STEPS = 10
ARGS = ["--samples", "2048", "--batch-size", "32", "--step-delay", "0.15",
        "--save-weights", "/checkpoints/final-weights.pt"]
TERMINAL = ("Succeeded", "Failed")


def chaos_job(**failure_policy: Any) -> List[Dict[str, Any]]:
    """The example's PVC and TrainingJob, sized for the suite."""
    pvc, job = example(args=ARGS, cleanPodPolicy="None", terminationGracePeriodSeconds=10,
                       failurePolicy={"maxRestarts": 3, "backoffSeconds": 1, **failure_policy})
    job["metadata"]["name"] = JOB
    job["spec"]["trainer"]["maxEpochs"] = TOTAL_STEPS // 16
    job["spec"]["checkpoint"]["everyNSteps"] = EVERY_N_STEPS
    return [pvc, job]


def job_object(kube: LocalCluster, namespace: str) -> Dict[str, Any]:
    """The TrainingJob through one REST call (cheaper than kubectl on a loaded machine)."""
    return kube.request("GET", f"/apis/volt.dev/v1alpha1/namespaces/{namespace}/trainingjobs/{JOB}")


def status_of(kube: LocalCluster, namespace: str) -> Dict[str, Any]:
    try:
        return job_object(kube, namespace).get("status") or {}
    except (urllib.error.URLError, OSError):  # the API server is restarting
        return {}


def final_weights(volume: Path) -> Dict[str, torch.Tensor]:
    return torch.load(volume / "final-weights.pt", map_location="cpu", weights_only=True)


def bit_equal(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def wait_terminal(kube: LocalCluster, namespace: str, timeout: float) -> Dict[str, Any]:
    def done() -> Optional[Dict[str, Any]]:
        st = status_of(kube, namespace)
        return st if st.get("phase") in TERMINAL else None
    try:
        return wait_until(f"{JOB} to end", done, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(kube, namespace, JOB)}") from None


# --- fixtures ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[List[Outcome]]:
    """Every test's outcome; the table is printed and written (chaos-summary.json) when the module ends."""
    recorded: List[Outcome] = []
    yield recorded
    path = tmp_path_factory.mktemp("chaos-summary") / "chaos-summary.json"
    path.write_text(json.dumps([o.to_json() for o in recorded], indent=2) + "\n")
    text = f"\nchaos suite, seed {SEED} ({path}):\n{table(recorded)}\n"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print(text, flush=True)  # on the terminal even when pytest captures output


@pytest.fixture(scope="module")
def uninterrupted(crd: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, torch.Tensor]:
    """The final weights of the suite's job run once without a fault."""
    log_dir = tmp_path_factory.mktemp("chaos-baseline")
    with fresh_namespace(crd, "chaos-baseline") as namespace:
        operator = OperatorProcess(crd, [namespace], log_dir).start()
        try:
            started = time.monotonic()
            apply(crd, namespace, *chaos_job())
            status = wait_terminal(crd, namespace, 400)
            assert status["phase"] == "Succeeded" and status.get("restarts") == 0, \
                f"the uninterrupted run did not succeed uninterrupted:\n{diagnosis(crd, namespace, JOB)}"
            print(f"uninterrupted run: {time.monotonic() - started:.1f}s")
            return final_weights(volume_dir(crd, namespace, "volt-checkpoints"))
        finally:
            operator.stop()


class ChaosRun:
    """One fault against one job: start, inject at a step, measure the recovery, check the end."""

    def __init__(self, operator: OperatorProcess, namespace: str, outcome: Outcome,
                 reference: Dict[str, torch.Tensor]) -> None:
        self.kube: LocalCluster = operator.kube
        self.operator = operator
        self.namespace = namespace
        self.outcome = outcome
        self.reference = reference
        self.started = time.monotonic()
        self.clock: Optional[Stopwatch] = None

    def status(self) -> Dict[str, Any]:
        return status_of(self.kube, self.namespace)

    def start(self, **failure_policy: Any) -> str:
        """Apply the job; its uid."""
        apply(self.kube, self.namespace, *chaos_job(**failure_policy))
        return job_object(self.kube, self.namespace)["metadata"]["uid"]

    def at_step(self, timeout: float = 300) -> Dict[str, Any]:
        """Wait until the status shows the target step while Running; that status."""
        target = self.outcome.target_step

        def reached() -> Optional[Dict[str, Any]]:
            st = self.status()
            if st.get("phase") in TERMINAL:
                raise AssertionError(f"{JOB} ended ({st['phase']}) before step {target}: nothing was injected")
            step = (st.get("training") or {}).get("step")
            return st if st.get("phase") == "Running" and isinstance(step, int) and step >= target else None

        st = wait_until(f"{JOB} Running at step >= {target}", reached, timeout, every=0.2)
        self.outcome.injected_at_step = st["training"]["step"]
        return st

    def fault(self, target: str) -> None:
        self.outcome.target = target
        self.clock = Stopwatch()

    def recovered(self, what: str, check: Callable[[Dict[str, Any]], bool], timeout: float = 240) -> None:
        """Wait until ``check(status)``; the seconds since the fault are the recovery time."""
        assert self.clock is not None
        wait_until(what, lambda: check(self.status()), timeout, every=0.2)
        self.outcome.recover_s = self.clock.elapsed()

    def gang_back(self, attempt: int, timeout: float = 240) -> None:
        """The next attempt's gang Running with both pods Ready (or already finished)."""
        def back(st: Dict[str, Any]) -> bool:
            if st.get("attempt", 0) <= attempt:
                return False
            if st.get("phase") in TERMINAL:
                self.outcome.notes.append(f"attempt {st.get('attempt')} ended before a Running poll")
                return True
            return st.get("phase") == "Running" and st.get("readyNodes") == "2/2"
        self.recovered(f"attempt {attempt + 1}'s gang Running", back, timeout)

    def finish(self, timeout: float = 300) -> Dict[str, Any]:
        """Wait for the end; record phase, restarts, reason and whether the weights equal the reference."""
        status = wait_terminal(self.kube, self.namespace, timeout)
        self.outcome.final_phase = status["phase"]
        self.outcome.restarts = status.get("restarts", 0)
        self.outcome.restarts_counted = status.get("restartsCounted", 0)
        self.outcome.reason = self.outcome.reason or (status.get("lastFailure") or {}).get("reason", "")
        self.outcome.survived = status["phase"] == "Succeeded"
        failure = status.get("lastFailure") or {}
        if failure:
            self.outcome.notes.append(
                f"lastFailure: pod {failure.get('pod')} rank {failure.get('rank')} exit {failure.get('exitCode')} "
                f"{failure.get('reason')}: {str(failure.get('message', ''))[:300]}; "
                f"restartsCounted {status.get('restartsCounted')}")
        if self.outcome.survived:
            weights = final_weights(volume_dir(self.kube, self.namespace, "volt-checkpoints"))
            self.outcome.weights_equal = bit_equal(weights, self.reference)
        return status

    def assert_survived_exactly(self) -> None:
        o = self.outcome
        assert o.survived, f"{o.fault}: ended {o.final_phase}\n{diagnosis(self.kube, self.namespace, JOB)}"
        assert o.weights_equal, (f"{o.fault} at step {o.injected_at_step}: final weights differ from the "
                                 f"uninterrupted run's")

    def rank0_logs(self) -> str:
        out = self.kube.kubectl("logs", "-n", self.namespace, f"{JOB}-node-0", check=False)
        return out.stdout + out.stderr


@pytest.fixture
def run(request: pytest.FixtureRequest, operator: OperatorProcess, namespace: str, tmp_path: Path,
        uninterrupted: Dict[str, torch.Tensor], outcomes: List[Outcome]) -> Iterator[ChaosRun]:
    fault = request.node.originalname.removeprefix("test_")
    step = request.node.callspec.params["step"]
    chaos = ChaosRun(operator, namespace, Outcome(fault=fault, seed=SEED, target_step=step), uninterrupted)
    try:
        yield chaos
    finally:
        chaos.outcome.wall_s = round(time.monotonic() - chaos.started, 1)
        outcomes.append(chaos.outcome)
        (tmp_path / "chaos.json").write_text(json.dumps(chaos.outcome.to_json(), indent=2) + "\n")
        print(f"{fault}: {json.dumps(chaos.outcome.to_json())}")


def at(fault: str, low: int = 12, high: int = 36) -> Any:
    """Parametrize ``step`` with the seeded step for ``fault``; seed and step are in the test id."""
    step = fault_step(SEED, fault, low, high)
    return pytest.mark.parametrize("step", [step], ids=[f"seed{SEED}-step{step}"])


# --- the faults -----------------------------------------------------------------------

@pytest.mark.timeout(480)
@at("sigkill_rank")
def test_sigkill_rank(run: ChaosRun, step: int) -> None:
    uid = run.start()
    st = run.at_step()
    rank = fault_rank(SEED, "sigkill_rank", WORLD_SIZE)
    pid = signal_rank(uid, rank, signal.SIGKILL)
    run.fault(f"rank {rank} (pid {pid})")
    run.gang_back(st.get("attempt", 0))
    status = run.finish()
    run.assert_survived_exactly()
    assert status["restarts"] >= 1 and status["lastFailure"]["rank"] in (rank, None), status["lastFailure"]


@pytest.mark.timeout(480)
@at("delete_pod")
def test_delete_pod(run: ChaosRun, step: int) -> None:
    """A graceful delete, as a preemption or a drain does: SIGTERM, the engine checkpoints and exits 75
    (Checkpointed), or is stopped by the deletion before it could (143/137: PodDeleted). Either way the
    deletion is the cause: a free restart, never Crashed."""
    run.start()
    st = run.at_step()
    pod = f"{JOB}-node-{fault_rank(SEED, 'delete_pod', 2)}"
    run.kube.kubectl("delete", "-n", run.namespace, "pod", pod, "--wait=false")
    run.fault(pod)
    run.gang_back(st.get("attempt", 0))
    status = run.finish()
    run.assert_survived_exactly()
    assert status["lastFailure"]["pod"] == pod, status["lastFailure"]
    assert status["lastFailure"]["reason"] in ("Checkpointed", "PodDeleted"), status["lastFailure"]
    assert status.get("restartsCounted", 0) == 0, status


@pytest.mark.timeout(480)
@at("force_delete_pod")
def test_force_delete_pod(run: ChaosRun, step: int) -> None:
    """`--grace-period=0 --force`: the pod leaves the API at once, its processes are killed without a checkpoint."""
    run.start()
    st = run.at_step()
    pod = f"{JOB}-node-{fault_rank(SEED, 'force_delete_pod', 2)}"
    run.kube.kubectl("delete", "-n", run.namespace, "pod", pod, "--grace-period=0", "--force", "--wait=false")
    run.fault(pod)
    run.gang_back(st.get("attempt", 0))
    status = run.finish()
    run.assert_survived_exactly()
    assert status["lastFailure"]["pod"] == pod, status["lastFailure"]
    assert status["lastFailure"]["reason"] == "PodDeleted" and status.get("restartsCounted", 0) == 0, status


@pytest.mark.timeout(480)
@at("kill_operator")
def test_kill_operator(run: ChaosRun, step: int, tmp_path: Path) -> None:
    """SIGKILL the operator mid-job and start another: the gang keeps training, nothing is duplicated."""
    run.start()
    st = run.at_step()
    assert run.operator.proc is not None
    run.operator.proc.kill()
    run.operator.proc.wait(10)
    run.fault(f"operator pid {run.operator.proc.pid}")
    successor = OperatorProcess(run.kube, [run.namespace], tmp_path / "successor").start()
    try:
        killed_at = st["training"]["step"]
        run.recovered("the successor to report a later step", lambda s: s.get("phase") in TERMINAL or (
            (s.get("training") or {}).get("step", 0) > killed_at))
        status = run.finish()
    finally:
        successor.stop()
        print(successor.logs()[-4000:])
    run.assert_survived_exactly()
    assert status["restarts"] == 0 and status.get("attempt", 0) == 0, status
    created = [e for e in events(run.kube, run.namespace, JOB) if e["reason"] == "Created"]
    assert sum(e.get("count", 1) for e in created) == 1, created


@pytest.mark.timeout(480)
@at("restart_api_server")
def test_restart_api_server(run: ChaosRun, step: int) -> None:
    """Stop and start kube-apiserver mid-job: the operator and the nodes reconnect, the job is unaffected."""
    run.start()
    st = run.at_step()
    run.fault("kube-apiserver")
    restart_api_server(run.kube)
    at_restart = st["training"]["step"]
    run.recovered("a later step after the API server's restart", lambda s: s.get("phase") in TERMINAL or (
        (s.get("training") or {}).get("step", 0) > at_restart))
    run.finish()
    run.assert_survived_exactly()
    assert run.operator.proc is not None and run.operator.proc.poll() is None, "the operator died"


@pytest.mark.timeout(480)
@at("fill_checkpoint_volume", 12, 44)
def test_fill_checkpoint_volume(run: ChaosRun, step: int) -> None:
    """The volume fills up: the next save exits 79 (CheckpointVolumeFull), the gang restarts; once space is
    freed, it resumes from the last good checkpoint and ends with the uninterrupted weights."""
    run.kube.kubectl("apply", "-n", run.namespace, "-f", "-", input=json.dumps(chaos_job()[0]))
    wait_until("the claim Bound", lambda: run.kube.kubectl(
        "get", "-n", run.namespace, "pvc", "volt-checkpoints", "-o", "jsonpath={.status.phase}").stdout == "Bound", 60)
    with small_volume(volume_dir(run.kube, run.namespace, "volt-checkpoints")) as volume:
        run.start()
        st = run.at_step()
        filler = fill(volume)
        run.fault("the checkpoint volume (a 16 MiB tmpfs)")

        def first_failure(s: Dict[str, Any]) -> Optional[Dict[str, Any]]:
            if s.get("phase") in TERMINAL:
                raise AssertionError(f"{JOB} ended {s['phase']} without a failure: {s.get('lastFailure')}")
            return s.get("lastFailure") or None

        # The first failure the status shows names the full volume, whichever node exited first
        # (the nodes whose ranks only lost their peer exit 76).
        failure = wait_until("a lastFailure", lambda: first_failure(run.status()), 240, every=0.2)
        run.outcome.reason = failure.get("reason", "")
        assert failure.get("reason") == "CheckpointVolumeFull", failure
        assert failure.get("exitCode") in (79, 76), failure
        assert "full" in failure.get("message", ""), failure
        filler.unlink()  # an operator frees space
        run.gang_back(st.get("attempt", 0))
        run.finish()
    run.assert_survived_exactly()


@pytest.mark.timeout(480)
@at("truncate_latest_checkpoint", 22, 40)
def test_truncate_latest_checkpoint(run: ChaosRun, step: int) -> None:
    """The newest checkpoint is cut short while the gang restarts: the next attempt falls back to the previous
    one with a warning that names the file, and still ends with the uninterrupted weights."""
    uid = run.start()
    st = run.at_step()
    rank = fault_rank(SEED, "truncate_latest_checkpoint", WORLD_SIZE)
    signal_rank(uid, rank, signal.SIGKILL)
    # Cut it only when no process of this attempt can write a newer checkpoint any more.
    wait_until("the attempt's processes gone", lambda: not worker_pids(uid), 120, every=0.1)
    manifests = list(volume_dir(run.kube, run.namespace, "volt-checkpoints").rglob("latest.json"))
    assert len(manifests) == 1, manifests
    cut = truncate_latest(manifests[0].parent)
    run.fault(f"{cut.name} (and rank {rank})")
    run.gang_back(st.get("attempt", 0))
    run.finish()
    logs = run.rank0_logs()
    assert f"{cut.name} is unusable" in logs, f"no fallback warning naming {cut.name}:\n{logs[-4000:]}"
    run.outcome.reason = "fallback: " + run.outcome.reason
    run.assert_survived_exactly()


@pytest.mark.timeout(480)
@at("hang_rank")
def test_hang_rank(run: ChaosRun, step: int) -> None:
    """A rank stops (SIGSTOP: a deadlock as the others see it): Stalled after stallTimeoutSeconds, a gang
    restart, success.

    The restarted gang's start (pods Ready to its first step: rendezvous, resume) is not a stall: its clock
    starts at its first step. With 30 s a loaded machine used to stall every restarted attempt too.
    """
    uid = run.start(stallTimeoutSeconds=30)
    st = run.at_step()
    rank = fault_rank(SEED, "hang_rank", WORLD_SIZE)
    pid = signal_rank(uid, rank, signal.SIGSTOP)
    run.fault(f"rank {rank} (pid {pid}) stopped")

    def stalled(s: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        if s.get("phase") in TERMINAL:
            raise AssertionError(f"{JOB} ended {s['phase']} without a Stalled restart: {s.get('lastFailure')}")
        return s["lastFailure"] if (s.get("lastFailure") or {}).get("reason") == "Stalled" else None

    failure = wait_until("lastFailure Stalled", lambda: stalled(run.status()), 240, every=0.2)
    assert failure.get("pod", "").startswith(f"{JOB}-node-"), failure
    # The progress data cannot say which rank hangs (all stop at the same collective): the message says so.
    assert "not necessarily the one that hangs" in failure.get("message", ""), failure
    run.gang_back(st.get("attempt", 0))
    run.finish()
    run.assert_survived_exactly()  # before, every restarted attempt stalled too, until maxRestarts was spent


@pytest.mark.timeout(60)
def test_stop_kubelet(outcomes: List[Outcome]) -> None:
    reason = ("injected on real nodes instead: the node agent's nodes have no kubelet to stop; "
              "tests/e2e/test_real_nodes_node_loss.py stops one with LocalCluster.stop_kubelet mid-training "
              "(NotReady, the pod force-deleted, a new gang on the other node, Succeeded)")
    outcomes.append(Outcome(fault="stop_kubelet", seed=SEED, target_step=0, reason=reason))
    pytest.skip(reason)
