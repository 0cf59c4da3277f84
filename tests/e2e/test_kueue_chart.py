"""The chart's Kueue switch: kueue.enabled sets the operator's --kueue flag and grants exactly
the Kueue permissions it uses; off (the default), the chart renders nothing of Kueue's."""
from __future__ import annotations

from typing import Any

import pytest
import yaml

from helm_util import CHART, helm_binary, run_helm
from volt_operator.__main__ import parse_args

pytestmark = pytest.mark.timeout(300)


def render(*settings: str) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "volt-system"]
    for item in settings:
        args += ["--set", item]
    return [d for d in yaml.safe_load_all(run_helm(helm_binary(), *args).stdout) if d]


def operator_args(docs: list[dict[str, Any]]) -> list[str]:
    deployment, = [d for d in docs if d["kind"] == "Deployment"]
    return deployment["spec"]["template"]["spec"]["containers"][0]["args"]


def kueue_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for d in docs if d["kind"] in ("Role", "ClusterRole") for rule in d["rules"]
            if {"kueue.x-k8s.io", "scheduling.k8s.io"} & set(rule["apiGroups"])]


def test_kueue_is_off_by_default() -> None:
    docs = render()
    assert not kueue_rules(docs) and "--kueue" not in operator_args(docs)
    assert not parse_args(operator_args(docs)).kueue


@pytest.mark.parametrize("scope", [(), ("watchNamespace=team-a",)])
def test_kueue_enabled_sets_the_flag_and_only_the_permissions_it_uses(scope: tuple[str, ...]) -> None:
    docs = render("kueue.enabled=true", *scope)
    assert parse_args(operator_args(docs)).kueue
    rules = kueue_rules(docs)
    assert {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads"],
            "verbs": ["get", "list", "watch", "create", "patch", "delete"]} in rules
    assert {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloads/status"], "verbs": ["patch"]} in rules
    # priority classes and flavors are cluster-scoped: a ClusterRole of their own, also with watchNamespace
    priorities, = [d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-kueue-cluster-reads")]
    assert priorities["rules"] == [
        {"apiGroups": ["scheduling.k8s.io"], "resources": ["priorityclasses"], "verbs": ["get"]},
        {"apiGroups": ["kueue.x-k8s.io"], "resources": ["workloadpriorityclasses", "resourceflavors"],
         "verbs": ["get"]}]
    binding, = [d for d in docs if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == priorities["metadata"]["name"]]
    assert binding["subjects"][0]["namespace"] == "volt-system"
    assert len(rules) == 4


def test_kueue_enabled_must_be_a_boolean() -> None:
    proc = run_helm(helm_binary(), "template", "rel", str(CHART), "--set", "kueue.enabled=maybe", check=False)
    assert proc.returncode != 0 and "enabled" in proc.stderr
