"""Both images build with Debian's docker, and the trainer image trains in a container.

Marked `docker`. CI runs them; a developer skips them with VOLT_SKIP_DOCKER=1.
No registry is reachable: the base image is a debootstrapped Debian + Python
imported with `docker import` (scripts/build-base-image.sh), and pip reaches
PyPI through the host network during the build. The first trainer build
downloads torch (several GB); later builds reuse the cached layers in
~/.cache/volt/docker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from volt_operator.testing.cluster import LocalCluster, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
TAG = "e2e"

# `docker_env` (the engine, started if none answers) is a session fixture: tests/e2e/conftest.py.
pytestmark = [
    pytest.mark.docker,
]


def docker(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([env["DOCKER"], *args], capture_output=True, text=True, env=env, timeout=timeout)


def build(env: dict[str, str], which: str, timeout: float) -> None:
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build-images.sh"), which], capture_output=True,
                          text=True, env={**env, "VOLT_IMAGE_TAG": TAG}, timeout=timeout)
    assert proc.returncode == 0, f"building the {which} image failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"


def image_config(env: dict[str, str], image: str) -> dict:
    proc = docker(env, "image", "inspect", "--format", "{{json .Config}}", image)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def operator_image(docker_env: dict[str, str]) -> str:
    build(docker_env, "operator", timeout=1100)
    return f"volt-operator:{TAG}"


LOCKED_DOWN = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


@pytest.mark.timeout(1200)
def test_operator_image_builds_and_runs_locked_down(docker_env: dict[str, str], operator_image: str) -> None:
    image = operator_image
    config = image_config(docker_env, image)
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["python", "-m", "volt_operator"]
    # As the chart runs it: read-only root, no capabilities, no privilege escalation.
    locked = ["run", "--rm", "--network", "none", *LOCKED_DOWN]
    proc = docker(docker_env, *locked, image, "--help", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--namespace" in proc.stdout and "--standalone" in proc.stdout
    # The operator image ships without torch and without the local test harness.
    proc = docker(docker_env, *locked, "--entrypoint", "python", image, "-c",
                  "import importlib.util as u; import volt_operator; "
                  "print(u.find_spec('torch') is None, u.find_spec('volt_operator.testing') is None)",
                  timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


@pytest.mark.timeout(1200)
def test_operator_image_runs_against_the_control_plane(docker_env: dict[str, str], operator_image: str,
                                                       kube: LocalCluster, namespace: str, tmp_path: Path) -> None:
    """The image's operator connects to a real API server and reports healthy, locked down as in the chart."""
    kubeconfig = tmp_path / "kubeconfig"
    shutil.copy(kube.kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)  # read by uid 65532 inside the container
    health = free_port()
    name = f"volt-operator-{namespace}"
    proc = docker(docker_env, "run", "-d", "--name", name, "--network", "host", *LOCKED_DOWN,
                  "-v", f"{kubeconfig}:/etc/volt/kubeconfig:ro", "-e", "KUBECONFIG=/etc/volt/kubeconfig",
                  operator_image, "--standalone", f"--namespace={namespace}",
                  f"--liveness=http://127.0.0.1:{health}/healthz", "--metrics-port=-1")
    assert proc.returncode == 0, proc.stderr
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2).status == 200,
                 120, "the containerized operator's /healthz")
        state = json.loads(docker(docker_env, "inspect", "--format", "{{json .State}}", name).stdout)
        assert state["Running"], state
    finally:
        logs = docker(docker_env, "logs", name).stderr
        docker(docker_env, "rm", "--force", name)
    assert "Traceback" not in logs, logs[-4000:]


@pytest.mark.timeout(3000)
def test_trainer_image_trains_in_a_container(docker_env: dict[str, str], tmp_path: Path) -> None:
    build(docker_env, "trainer", timeout=2700)
    image = f"volt-trainer:{TAG}"
    config = image_config(docker_env, image)
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["volt-run"]
    assert config["WorkingDir"] == "/workspace"
    proc = docker(docker_env, "run", "--rm", "--entrypoint", "ls", image, "/workspace")
    assert "trainingjob.yaml" in proc.stdout.split(), proc.stdout

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    checkpoints.chmod(0o777)  # the container runs as uid 1000
    # Two processes in one container, as one node of a TrainingJob; gloo over loopback.
    proc = docker(docker_env, "run", "--rm", "--network", "none",
                  "-v", f"{checkpoints}:/checkpoints",
                  "-e", "VOLT_CHECKPOINT_DIR=/checkpoints", "-e", "VOLT_JOB_NAME=docker-e2e",
                  image, "--nproc-per-node", "2",
                  "python", "-m", "volt.examples.synthetic", "--max-steps", "6",
                  timeout=600)
    assert proc.returncode == 0, f"training in the container failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    manifest = checkpoints / "latest.json"
    assert manifest.is_file(), sorted(p.name for p in checkpoints.rglob("*"))
    latest = json.loads(manifest.read_text())
    assert latest["step"] == 6, latest
    assert (checkpoints / latest["checkpoint"]).is_file(), latest
