"""End to end: the `volt` command against real nodes, the real operator and engine.

`volt submit` creates a job, streams rank 0 and exits with the outcome;
`volt logs --rank N` reads the pod that runs rank N; `volt get`/`describe`
show the phase; a failing job exits 1; `volt delete` removes it. The jobs run as containers
of the trainer image on the session's real nodes (`real_kube`, tests/e2e/conftest.py).
"""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from operator_process import OperatorProcess
from real_nodes import IMAGE, namespace, operator  # noqa: F401 (fixtures)
from volt.client.cli import main
from volt.client.logs import rank_of_line

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# The checkpoints go to the namespace's own volume, as a user's would.
CLAIM = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "ckpts"},
         "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}}
# Every rank says who it is, then trains the synthetic example for real (DDP over gloo).
HELLO_AND_TRAIN = (
    "import os; print('hello from rank', os.environ['RANK'], flush=True); "
    "from volt.examples.synthetic import main; "
    "main(['--samples', '256', '--val-samples', '64', '--batch-size', '32'])"
)


def volt(kube: Any, namespace: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`volt ARGS -n NAMESPACE` as a user runs it (a new process), with the cluster's kubeconfig."""
    env = kube.env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "trainer_image"), env.get("PYTHONPATH", "")])
    verb, *rest = args  # -n before the rest: after `--` everything is the job's command
    result = subprocess.run([sys.executable, "-m", "volt.client", verb, "-n", namespace, *rest],
                            env=env, capture_output=True, text=True, timeout=timeout)
    print(f"$ volt {' '.join(args)}  -> {result.returncode}\n{result.stdout[-3000:]}"
          f"{result.stderr[-3000:]}")
    return result


def volt_here(kube: Any, namespace: str, *args: str) -> subprocess.CompletedProcess:
    """The same command line run in this process: the `volt` process's start (importing
    torch with volt) takes tens of seconds on a loaded 2-core machine."""
    out, err = io.StringIO(), io.StringIO()
    verb, *rest = args
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([verb, "-n", namespace, "--kubeconfig", str(kube.kubeconfig), *rest])
        except SystemExit as exit_:
            code = exit_.code
    result = subprocess.CompletedProcess(["volt", *args], code, out.getvalue(), err.getvalue())
    print(f"$ volt {' '.join(args)}  -> {code}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


@pytest.mark.timeout(600)
def test_submit_streams_rank0_and_logs_select_a_rank(operator: OperatorProcess,
                                                     namespace: str) -> None:
    kube = operator.kube
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(CLAIM))
    submitted = volt(kube, namespace, "submit", "--name", "hello", "--image", IMAGE, "--nodes", "2", "--devices", "2",
                     "--accelerator", "cpu", "--max-epochs", "1", "--timeout", "400",
                     "--checkpoint-claim", "ckpts", "--checkpoint-path", "/checkpoints",
                     "--", "python", "-c", HELLO_AND_TRAIN, timeout=480)
    assert submitted.returncode == 0, submitted.stderr
    assert "hello from rank 0" in submitted.stdout
    assert "done: epoch=" in submitted.stdout  # rank 0's last line, streamed before the exit
    assert "trainingjob hello Succeeded" in submitted.stderr

    # Rank 2 is the first process of node 1: its pod holds ranks 2 and 3 only.
    rank2 = volt_here(kube, namespace, "logs", "hello", "--rank", "2")
    assert rank2.returncode == 0, rank2.stderr
    assert "hello from rank 2" in rank2.stdout
    # volt-run marks each worker's lines with its rank: rank 3's lines on the same pod are left out.
    assert "hello from rank 3" not in rank2.stdout
    assert "hello from rank 0" not in rank2.stdout and "hello from rank 1" not in rank2.stdout
    assert {rank_of_line(line) for line in rank2.stdout.splitlines()} == {None, 2}
    node1 = volt_here(kube, namespace, "logs", "hello", "--node", "1")
    assert "hello from rank 3" in node1.stdout

    beyond = volt_here(kube, namespace, "logs", "hello", "--rank", "4")
    assert beyond.returncode == 2 and "--rank 4" in beyond.stderr and "0..3" in beyond.stderr

    table = volt_here(kube, namespace, "get")
    assert table.returncode == 0
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "PHASE", "NODES"] and row.split()[:2] == ["hello", "Succeeded"]

    described = volt_here(kube, namespace, "describe", "hello")
    assert described.returncode == 0
    assert "Phase:       Succeeded" in described.stdout
    assert "hello-node-1  node 1" in described.stdout
    assert "TrainingJob/hello: all 2 node(s) finished training" in described.stdout

    waited = volt_here(kube, namespace, "wait", "hello", "--timeout", "30")
    assert waited.returncode == 0 and "Succeeded" in waited.stderr


@pytest.mark.timeout(420)
def test_failing_job_exits_1_with_the_failure(operator: OperatorProcess, namespace: str) -> None:
    kube = operator.kube
    submitted = volt(kube, namespace, "submit", "--name", "crash", "--image", IMAGE, "--devices", "1",
                     "--accelerator", "cpu", "--max-restarts", "0", "--timeout", "300",
                     "--", "python", "-c", "print('about to fail', flush=True); raise KeyError('label')",
                     timeout=360)
    assert submitted.returncode == 1, submitted.stderr
    assert "about to fail" in submitted.stdout
    outcome = submitted.stderr.strip().splitlines()[-1]
    assert "trainingjob crash Failed" in outcome and "exit code 1" in outcome, outcome

    assert volt_here(kube, namespace, "wait", "crash").returncode == 1
    assert volt_here(kube, namespace, "delete", "crash").stdout.strip() == "trainingjob.volt.dev/crash deleted"
    gone = volt_here(kube, namespace, "get", "crash")
    assert gone.returncode == 3 and f"'crash' not found in namespace '{namespace}'" in gone.stderr


@pytest.mark.timeout(300)
def test_refused_and_duplicate_jobs_then_suspend_and_resume(operator: OperatorProcess,
                                                            namespace: str, tmp_path: Path) -> None:
    kube = operator.kube
    # The API server's validation message comes back as it is, naming the field.
    refused = volt_here(kube, namespace, "submit", "--name", "bad", "--precision", "99", "--", "python", "x")
    assert refused.returncode == 2 and "precision" in refused.stderr, refused.stderr
    # A file with the job and its claim: the claim is created first, and kept the second time.
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump_all([CLAIM, {
        "apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "twice"},
        "spec": {"image": IMAGE, "command": ["sleep", "600"],
                 "checkpoint": {"claimName": "ckpts", "path": "/checkpoints"}}}]))
    taken = volt_here(kube, namespace, "submit", "-f", str(manifest), "--no-wait")
    assert taken.returncode == 0 and taken.stdout.strip() == "twice", taken.stderr
    assert "persistentvolumeclaim/ckpts created" in taken.stderr
    again = volt_here(kube, namespace, "submit", "-f", str(manifest), "--no-wait")
    assert "persistentvolumeclaim/ckpts exists, kept" in again.stderr
    assert again.returncode == 3 and "already exists" in again.stderr
    assert volt_here(kube, namespace, "suspend", "twice").returncode == 0
    assert volt_here(kube, namespace, "get", "twice", "-o", "json").stdout.count('"suspended": true') == 1
    assert volt_here(kube, namespace, "resume", "twice").returncode == 0
    assert '"suspended": false' in volt_here(kube, namespace, "get", "twice", "-o", "json").stdout
