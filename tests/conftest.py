"""Shared fixtures: a real Kubernetes control plane for tests/operator and tests/e2e.

`kube` (session): one LocalCluster for the whole pytest run, started on first
use, torn down at the end. It includes the node agent's nodes when the agent
is present. Starting takes ~20-40 s on a busy 2-core machine and counts
against the timeout of the first test that asks for it, so tests using `kube`
keep a timeout of at least 180 s.
`namespace` (function): a fresh namespace whose `default` service account
exists (pods can be created at once), deleted afterwards.
`crd` (module): `kube` with the committed TrainingJob CRD installed and served.
`operator` (function): the real operator watching `namespace`; its log tail is
printed afterwards (pytest shows it when the test fails).

Tests that use `kube` get the `cluster` marker, so `-m "not cluster"` skips them.
VOLT_TEST_CLUSTER_DIR=D reuses a cluster started with the CLI (faster iterations).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from job_helpers import fresh_namespace
from operator_process import OperatorProcess, apply_crd
from volt_operator.testing.cluster import ClusterError, LocalCluster, find_binaries

# Nodes the agent registers for the session's cluster (node-0 .. node-N-1).
TEST_NODES = int(os.environ.get("VOLT_TEST_NODES", "2"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "kube" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    reuse = os.environ.get("VOLT_TEST_CLUSTER_DIR")
    if reuse:
        # Developer loop: a cluster started with `python -m volt_operator.testing.cluster up --dir D`
        # is used as it is and left running.
        cluster = LocalCluster(reuse)
        if not cluster.status()["ready"]:
            pytest.fail(f"VOLT_TEST_CLUSTER_DIR={reuse} names no running cluster: start it with "
                        f"`python -m volt_operator.testing.cluster up --dir {reuse} --nodes {TEST_NODES}`",
                        pytrace=False)
        yield cluster
        return
    try:
        find_binaries()
    except ClusterError as exc:
        # Not a skip: CI must run these tests, so a missing build is a failure.
        pytest.fail(str(exc), pytrace=False)
    cluster = LocalCluster(tmp_path_factory.mktemp("kube"), nodes=TEST_NODES)
    try:
        cluster.up()
    except ClusterError as exc:
        pytest.fail(f"local cluster failed to start (logs in {cluster.log_dir}): {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def namespace(kube: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    with fresh_namespace(kube, request.node.name) as name:
        yield name


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def crd(kube: LocalCluster) -> LocalCluster:
    apply_crd(kube)
    return kube


@pytest.fixture
def operator(crd: LocalCluster, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    with OperatorProcess(crd, [namespace], tmp_path).running() as proc:
        yield proc
