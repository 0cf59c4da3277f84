"""Session fixtures of the e2e tier: a Docker engine and one cluster with real nodes.

`docker_env` (session): an environment whose DOCKER_HOST answers; volt's own dockerd is
started if no engine did, and stopped afterwards.
`real_kube` (session): a LocalCluster with two real nodes (kubelet + containerd), the
trainer image built and imported, and the CRD installed. All the real-node modules
(test_real_nodes*.py) share it: only one real-node cluster runs on a machine at a time,
and each start costs ~10-50 s plus the image checks. Its tests leave it as they found
it: their namespaces are deleted and their pods waited for, and each test starts on two
Ready nodes (tests/e2e/real_nodes.py). VOLT_TEST_REAL_CLUSTER_DIR=D uses the cluster started with
`python -m volt_operator.testing.cluster up --dir D --nodes 2 --runtime kubelet` and
leaves it running (faster iterations).

Both are stopped right after the last collected test that uses them rather than at the
end of the session: `make test` runs tests/engine and tests/operator after this
directory, and an idle cluster's kubelets, containerds and CoreDNS (or an idle dockerd)
would share the machine with them.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

from operator_process import apply_crd
from real_nodes import IMAGE
from test_docker import build
from volt_operator.testing.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]

REAL_KUBE_FIRST_USE_TIMEOUT = 3600  # seconds: a cold image build and import, then the test itself
# Session fixtures stopped after their last user, not at the session's end (see above).
RELEASED_AFTER_LAST_USER = ("real_kube", "docker_env")  # the cluster first: it imports from docker
_last_user: Dict[str, str] = {}  # fixture name -> node id of the last collected test that uses it
_stop: Dict[str, Callable[[], None]] = {}  # fixture name -> how to stop what it started, while it runs


def _release(name: str) -> None:
    stop = _stop.pop(name, None)
    if stop is not None:
        stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "own_real_cluster: starts a real-node cluster of its own, so it runs "
                                       "before the session's shared one (`real_kube`) starts")


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    # A developer skips everything that builds or runs images (the `docker` marker: the docker
    # tests and the real nodes, which run the trainer image) with VOLT_SKIP_DOCKER=1; CI runs them.
    if os.environ.get("VOLT_SKIP_DOCKER") == "1":
        for item in items:
            if item.get_closest_marker("docker"):
                item.add_marker(pytest.mark.skip(reason="VOLT_SKIP_DOCKER=1"))
    # One real-node cluster runs on a machine at a time: a test that starts its own runs
    # before the session's shared one (`real_kube`) starts. A stable sort keeps the rest in order.
    items.sort(key=lambda item: item.get_closest_marker("own_real_cluster") is None)


def pytest_collection_finish(session: pytest.Session) -> None:
    for item in session.items:  # in run order, after -k/-m deselection
        for name in RELEASED_AFTER_LAST_USER:
            if name in getattr(item, "fixturenames", ()):  # directly or through another fixture
                _last_user[name] = item.nodeid
    # The first test to use `real_kube` pays for building the trainer image and importing it
    # into both nodes (over 20 minutes from a cold cache on 2 cores): its timeout covers that,
    # whichever test it is.
    first = next((item for item in session.items if "real_kube" in getattr(item, "fixturenames", ())), None)
    if first is not None:
        first.add_marker(pytest.mark.timeout(REAL_KUBE_FIRST_USE_TIMEOUT), append=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)  # the test's own fixtures first: its operator, its namespace
    finally:
        for name in RELEASED_AFTER_LAST_USER:
            if _last_user.get(name) == item.nodeid:
                _release(name)


def _docker_cli() -> str:
    # Debian's client matches Debian's engine (the one `make docker` installs).
    cli = os.environ.get("DOCKER") or ("/usr/bin/docker" if os.path.exists("/usr/bin/docker")
                                       else shutil.which("docker"))
    if not cli:
        pytest.fail("no docker client: run `make docker` (Debian's docker.io)", pytrace=False)
    return cli


def _engine_answers(cli: str, host: str) -> bool:
    proc = subprocess.run([cli, "version", "--format", "{{.Server.Version}}"], capture_output=True,
                          text=True, env={**os.environ, "DOCKER_HOST": host}, timeout=30)
    return proc.returncode == 0


@pytest.fixture(scope="session")
def docker_env() -> Iterator[Dict[str, str]]:
    """Environment whose DOCKER_HOST answers; starts volt's own dockerd if none did, stops it after."""
    cli = _docker_cli()
    script = str(REPO / "scripts" / "docker-daemon.sh")
    # An engine that answers already, volt's own dockerd included (started by `make images` or
    # another run: scripts/docker-daemon.sh keeps its socket there), is not this session's to stop.
    volt_socket = Path(os.environ.get("VOLT_CACHE", Path.home() / ".cache" / "volt")) / "docker" / "docker.sock"
    already = any(_engine_answers(cli, host) for host in (
        os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock", f"unix://{volt_socket}") if host)
    proc = subprocess.run(["bash", script, "ensure"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DOCKER": cli})
    if proc.returncode != 0:
        pytest.fail(f"no Docker engine: {proc.stderr.strip()}", pytrace=False)
    env = {**os.environ, "DOCKER_HOST": proc.stdout.strip(), "DOCKER": cli}
    if not already:
        _stop["docker_env"] = lambda: subprocess.run(["bash", script, "stop"], env=env, timeout=120, check=False)
    try:
        yield env
    finally:
        _release("docker_env")


@pytest.fixture(scope="session")
def real_kube(tmp_path_factory: pytest.TempPathFactory, docker_env: Dict[str, str]) -> Iterator[LocalCluster]:
    """Two real nodes with the trainer image loaded and the CRD installed, for the whole session."""
    started = time.monotonic()
    build(docker_env, "trainer", timeout=2700)
    print(f"trainer image built (or current) in {time.monotonic() - started:.1f}s")
    reuse = os.environ.get("VOLT_TEST_REAL_CLUSTER_DIR")
    cluster = LocalCluster(reuse or tmp_path_factory.mktemp("real"), nodes=2, runtime="kubelet")
    if reuse and not (cluster.status()["ready"] and cluster.runtime == "kubelet"):
        pytest.fail(f"VOLT_TEST_REAL_CLUSTER_DIR={reuse} names no running cluster with real nodes", pytrace=False)
    started = time.monotonic()
    cluster.up()
    print(f"2 real nodes Ready {time.monotonic() - started:.1f}s after `up` began")
    if not reuse:
        _stop["real_kube"] = cluster.down
    try:
        started = time.monotonic()
        imported = cluster.load_image(IMAGE, docker=docker_env["DOCKER"], env=docker_env)
        print(f"{IMAGE} imported into {imported or 'no node (current)'} in {time.monotonic() - started:.1f}s")
        apply_crd(cluster)
        yield cluster
    finally:
        _release("real_kube")
