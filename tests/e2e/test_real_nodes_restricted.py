"""On real nodes: the example job in a namespace that enforces the restricted Pod Security
Standard is admitted and trains to Succeeded (the kubelet applies the security contexts:
non-root, no capabilities, RuntimeDefault seccomp)."""
from __future__ import annotations

import yaml

import pytest

from operator_process import OperatorProcess, wait_until
from job_helpers import diagnosis
from real_nodes import (  # noqa: F401  (namespace, operator: fixtures)
    example, namespace, operator, pods, wait_phase,
)
from volt_operator.testing.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]


def test_example_succeeds_where_restricted_is_enforced(real_kube: LocalCluster, operator: OperatorProcess,
                                                       namespace: str) -> None:
    real_kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                      "pod-security.kubernetes.io/enforce-version=latest")
    pvc, job = example()
    real_kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([pvc, job]))
    wait_until("both pods Running", lambda: len(found := pods(real_kube, namespace, "synthetic")) == 2 and all(
        p["status"].get("phase") == "Running" for p in found), 300)
    # What the kubelet ran: uid 1000, no capabilities, no new privileges, a seccomp filter.
    status = real_kube.kubectl("exec", "-n", namespace, "synthetic-node-1", "--", "grep", "-E",
                               "^(Uid|CapEff|NoNewPrivs|Seccomp):", "/proc/self/status").stdout
    fields = {line.split(":")[0]: line.split(":", 1)[1].split() for line in status.splitlines()}
    assert fields["Uid"][0] == "1000" and fields["CapEff"] == ["0000000000000000"], status
    assert fields["NoNewPrivs"] == ["1"] and fields["Seccomp"] == ["2"], status
    assert wait_phase(real_kube, namespace, "synthetic", ("Succeeded", "Failed"), 600) == "Succeeded", \
        diagnosis(real_kube, namespace, "synthetic")
