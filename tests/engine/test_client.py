"""volt.client's pure parts: the manifest from flags, the command line, rank lines, typed status."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from volt.client.cli import PhasePrinter, build_parser, describe_text, main, outcome_line, settings_from_args
from volt.client.logs import lines_of_rank, node_of_rank, rank_of_line
from volt.client.results import JobDescription, job_status, pod_info
from volt.client.spec import DEFAULT_IMAGE, JobSettings, SpecError, build_manifest, split_manifests
from volt_operator.api import TrainingJob

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "trainingjob.yaml"


def manifest_of(*argv: str) -> dict:
    return build_manifest(settings_from_args(build_parser().parse_args(["submit", *argv])))


def test_flags_make_a_trainingjob_the_operator_accepts() -> None:
    manifest = manifest_of(
        "--name", "mnist", "--image", "registry.example.com/m:1", "--nodes", "2", "--devices", "4",
        "--precision", "bf16-mixed", "--max-epochs", "3", "--env", "LR=0.1", "--cpu", "4",
        "--memory", "8Gi", "--gpus", "4", "--checkpoint-claim", "ckpts", "--checkpoint-path",
        "/checkpoints", "--checkpoint-every-n-steps", "50", "--max-restarts", "2",
        "--label", "team=vision", "--", "python", "train.py", "--lr", "0.1")
    assert manifest["metadata"] == {"name": "mnist", "labels": {"team": "vision"}}
    spec = manifest["spec"]
    assert spec["command"] == ["python"] and spec["args"] == ["train.py", "--lr", "0.1"]
    assert spec["trainer"] == {"numNodes": 2, "devices": 4, "accelerator": "gpu",
                               "precision": "bf16-mixed", "maxEpochs": 3}
    assert spec["resources"] == {"requests": {"cpu": "4", "memory": "8Gi"},
                                 "limits": {"nvidia.com/gpu": 4}}
    assert spec["checkpoint"] == {"claimName": "ckpts", "path": "/checkpoints", "everyNSteps": 50}
    assert spec["env"] == [{"name": "LR", "value": "0.1"}]
    job = TrainingJob.model_validate(manifest)  # the operator's own model takes it
    assert job.spec.processes_per_node() == 4 and job.spec.gpus_per_node() == 4
    assert job.spec.failure_policy.max_restarts == 2


def test_defaults_leave_the_crd_defaults_and_generate_a_name() -> None:
    manifest = manifest_of("--", "python", "-m", "volt.examples.synthetic")
    assert manifest["metadata"] == {"generateName": "volt-"}
    assert manifest["spec"] == {"image": DEFAULT_IMAGE, "command": ["python"],
                                "args": ["-m", "volt.examples.synthetic"],
                                "trainer": {"numNodes": 1}}
    assert manifest_of("--precision", "16", "--", "x")["spec"]["trainer"]["precision"] == 16
    assert manifest_of("--devices", "0,1", "--", "x")["spec"]["trainer"]["devices"] == "0,1"
    TrainingJob.model_validate({**manifest, "metadata": {"name": "x"}})


@pytest.mark.parametrize("settings, flag", [
    (JobSettings(command=[]), "COMMAND"),
    (JobSettings(command=["x"], nodes=0), "--nodes"),
    (JobSettings(command=["x"], devices="two"), "--devices"),
    (JobSettings(command=["x"], devices="0"), "--devices"),
    (JobSettings(command=["x"], name="Bad_Name"), "--name"),
    (JobSettings(command=["x"], name="a" * 51), "--name"),
    (JobSettings(command=["x"], env=("NOVALUE",)), "--env"),
    (JobSettings(command=["x"], env=("1=a b",)), "--env"),
    (JobSettings(command=["x"], checkpoint_claim="c"), "--checkpoint-path"),
    (JobSettings(command=["x"], checkpoint_claim="c", checkpoint_path="rel"), "--checkpoint-path"),
    (JobSettings(command=["x"], checkpoint_every_n_steps=5), "--checkpoint-every-n-steps"),
    (JobSettings(command=["x"], max_restarts=-1), "--max-restarts"),
    (JobSettings(command=["x"], image=""), "--image"),
])
def test_bad_settings_name_the_flag(settings: JobSettings, flag: str) -> None:
    with pytest.raises(SpecError, match=flag):
        build_manifest(settings)


@pytest.mark.parametrize("argv, says", [
    (["submit", "--nodes", "two", "--", "x"], "argument --nodes: invalid int value: 'two'"),
    (["submit", "--accelerator", "tpu", "--", "x"], "argument --accelerator: invalid choice"),
    (["submit", "--nodes", "0", "--", "x"], "--nodes must be >= 1, got 0"),
    (["submit", "--env", "X", "--", "x"], "--env 'X': expected KEY=VALUE"),
    (["submit", "-f", "job.yaml", "--nodes", "2"], "-f job.yaml holds the whole job: drop --nodes"),
    (["submit", "-f", "job.yaml", "--", "python"], "-f job.yaml holds the command"),
    (["logs", "job", "--rank", "-1"], "argument --rank: must be >= 0, got -1"),
    (["logs", "job", "--rank", "1", "--node", "0"], "argument --node: not allowed with argument --rank"),
    (["wait"], "the following arguments are required: job"),
])
def test_bad_command_lines_exit_2_naming_the_flag(argv: list, says: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    assert says in capsys.readouterr().err


def test_a_file_holds_one_trainingjob_and_what_it_needs() -> None:
    job, others = split_manifests(list(yaml.safe_load_all(EXAMPLE.read_text())), "example")
    assert job["metadata"]["name"] == "synthetic" and [o["kind"] for o in others] == ["PersistentVolumeClaim"]
    with pytest.raises(SpecError, match="-f two.yaml: expected exactly one TrainingJob, found 2"):
        split_manifests([job, job], "two.yaml")
    with pytest.raises(SpecError, match="apiVersion volt.dev/v1alpha1"):
        split_manifests([{**job, "apiVersion": "volt.dev/v2"}], "old.yaml")


def test_rank_lines_and_the_node_that_runs_a_rank() -> None:
    assert [node_of_rank(r, 2, 3) for r in range(6)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match=r"--rank 6: the job has ranks 0..5 \(3 nodes x 2 processes\)"):
        node_of_rank(6, 2, 3)
    assert rank_of_line("[rank 3] loss 0.1") == 3 and rank_of_line("[rank3]: x") == 3
    assert rank_of_line("[trainer12]:step") == 12 and rank_of_line("volt.launch INFO: node 1/2") is None
    log = ["volt.launch INFO: node 1/2", "[rank 2] hello", "[rank 3] hello", "[rank 2] done"]
    assert list(lines_of_rank(log, 2)) == ["volt.launch INFO: node 1/2", "[rank 2] hello", "[rank 2] done"]


def test_status_and_outcome_of_a_failed_job() -> None:
    obj = {"metadata": {"name": "crash", "namespace": "ns"}, "spec": {"suspend": False},
           "status": {"phase": "Failed", "readyNodes": "0/2", "restarts": 1,
                      "training": {"epoch": 0, "step": 12, "loss": 0.5, "progress": 0.25,
                                   "remainingSeconds": 90, "eta": "1m30s",
                                   "stepsPerSecond": 2.5},
                      "lastFailure": {"pod": "crash-node-1", "rank": 1, "exitCode": 1,
                                      "reason": "UserError", "message": "KeyError: 'label'",
                                      "attempt": 1},
                      "conditions": [{"type": "Failed", "status": "True", "reason": "UserError",
                                      "message": "rank 1 failed", "lastTransitionTime": "t"}]}}
    status = job_status(obj)
    assert status.finished and not status.succeeded
    assert (status.step, status.loss, status.progress, status.eta_seconds) == (12, 0.5, 0.25, 90.0)
    assert status.throughput == "2.5 steps/s"
    assert job_status({"status": {"training": {"eta": "1h05m"}}}).eta_seconds == 3900
    assert status.last_failure.node_rank == 1 and status.conditions[0].reason == "UserError"
    assert outcome_line(status) == (
        "trainingjob crash Failed (epoch 0, step 12, loss 0.5, 1 restarts): KeyError: 'label' "
        "[pod crash-node-1, exit code 1, UserError]")
    assert job_status({"metadata": {"name": "new"}}).phase == ""


def test_pod_state_says_why_it_waits() -> None:
    pod = {"metadata": {"name": "j-node-1", "labels": {"volt.dev/node-rank": "1", "volt.dev/attempt": "0"}},
           "spec": {"nodeName": "n"},
           "status": {"phase": "Pending", "containerStatuses": [
               {"restartCount": 0, "state": {"waiting": {"reason": "ImagePullBackOff",
                                                        "message": "no such image"}}}]}}
    info = pod_info(pod)
    assert (info.node_rank, info.state) == (1, "Waiting: ImagePullBackOff (no such image)")
    unscheduled = {"metadata": {"name": "j-node-0"}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
         "message": "0/2 nodes: Insufficient nvidia.com/gpu"}]}}
    assert pod_info(unscheduled).state == "Unschedulable: 0/2 nodes: Insufficient nvidia.com/gpu"


def _conditions(*conds: tuple) -> list:
    return [{"type": t, "status": s, "reason": r, "message": m, "lastTransitionTime": "t"}
            for t, s, r, m in conds]


def test_a_job_the_operator_cannot_move_on_says_why_in_every_view() -> None:
    refused = ("the operator may not delete pods/hold-node-0 in namespace ns: pods \"hold-node-0\" "
               "is forbidden")
    obj = {"metadata": {"name": "hold", "namespace": "ns"}, "spec": {"trainer": {"numNodes": 2}},
           "status": {"phase": "Running", "readyNodes": "2/2", "conditions": _conditions(
               ("Created", "True", "PodsCreated", "2 pods"),
               ("Reconciled", "False", "Forbidden", refused))}}
    status = job_status(obj)
    assert status.blocked_by is not None and status.blocked_by.reason == "Forbidden"
    blocked = f"blocked by Reconciled=False Forbidden: {refused}"
    assert outcome_line(status) == f"trainingjob hold Running: {blocked}"
    text = describe_text(JobDescription(status=status, spec=obj["spec"], events=[], pods=[]))
    assert f"Blocked by:  Reconciled=False Forbidden: {refused}" in text.splitlines()

    out = io.StringIO()
    printer = PhasePrinter(out)
    printer(status)
    printer(status)  # nothing new: nothing printed
    recovered = job_status({**obj, "status": {**obj["status"], "conditions": _conditions(
        ("Reconciled", "True", "Recovered", "the operator's requests for the job succeed again"))}})
    assert recovered.blocked_by is None
    printer(recovered)
    assert out.getvalue().splitlines() == [f"volt: hold Running (nodes 2/2): {blocked}",
                                           "volt: hold Running (nodes 2/2)"]

    create_failed = job_status({"metadata": {"name": "q"}, "status": {"phase": "Pending", "conditions": _conditions(
        ("Created", "False", "CreateFailed", "creating pod q-node-0: exceeded quota"))}})
    assert create_failed.blocked_by is not None and create_failed.blocked_by.type == "Created"
    finished = job_status({"metadata": {"name": "f"}, "status": {"phase": "Failed", "conditions": _conditions(
        ("Created", "False", "CreateFailed", "refused"))}})
    assert finished.blocked_by is None  # a finished job is not waiting on anything
