"""The per-job NetworkPolicy against the ports the job's pods open."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest

from volt_operator.api import TrainingJobSpec
from volt_operator.builders import JobRef, build_pod, build_pods
from volt_operator.network_policy import build_network_policy

pytestmark = pytest.mark.timeout(30)

JOB = JobRef("mnist", "team-a", "1234-uid")
PROMETHEUS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
OPERATOR = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "volt-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "volt"}}}


def spec(**over: Any) -> TrainingJobSpec:
    body: Dict[str, Any] = {
        "image": "volt-trainer:0.1", "command": ["python", "train.py"],
        "trainer": {"numNodes": 2, "devices": 3, "accelerator": "cpu"},
        "rendezvous": {"port": 29600}, "metrics": {"port": 9400},
    }
    body.update(over)
    return TrainingJobSpec.model_validate(body)


def _labels_match(selector: Dict[str, Any], labels: Dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def allowed(policy: Dict[str, Any], port: int, peer_labels: Dict[str, str],
            peer_namespace: Optional[str]) -> bool:
    """Whether a pod with ``peer_labels`` in ``peer_namespace`` (None: the job's) may reach ``port``:
    the NetworkPolicy ingress semantics, for the selectors the builder writes."""
    for rule in policy["spec"]["ingress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule["from"]:
            ns_sel = peer.get("namespaceSelector")
            if ns_sel is None:
                ns_ok = peer_namespace is None
            else:
                ns_ok = _labels_match(ns_sel, {"kubernetes.io/metadata.name": peer_namespace or "team-a"})
            pod_ok = "podSelector" not in peer or _labels_match(peer["podSelector"], peer_labels)
            if ns_ok and pod_ok:
                return True
    return False


def _opened_ports(pod: Dict[str, Any]) -> Dict[str, int]:
    return {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}


def test_the_policy_selects_exactly_the_jobs_pods_and_is_owned() -> None:
    s = spec()
    policy = build_network_policy(JOB, s, [PROMETHEUS, OPERATOR])
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "1234-uid"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for pod in build_pods(JOB, s, 0, "auto"):
        assert _labels_match(policy["spec"]["podSelector"], pod["metadata"]["labels"])
    other = build_pod(JobRef("other", "team-a", "u2"), s, 0, 0, "auto")
    assert not _labels_match(policy["spec"]["podSelector"], other["metadata"]["labels"])


def test_rendezvous_only_from_the_jobs_own_pods() -> None:
    s = spec()
    policy = build_network_policy(JOB, s, [PROMETHEUS, OPERATOR])
    pod = build_pod(JOB, s, 1, 0, "auto")
    rendezvous = _opened_ports(pod)["rendezvous"]
    assert rendezvous == 29600
    assert allowed(policy, rendezvous, pod["metadata"]["labels"], None)
    other_job = build_pod(JobRef("other", "team-a", "u2"), s, 0, 0, "auto")["metadata"]["labels"]
    assert not allowed(policy, rendezvous, other_job, None)
    assert not allowed(policy, rendezvous, {"app.kubernetes.io/name": "prometheus"}, "monitoring")
    assert not allowed(policy, rendezvous, {"app.kubernetes.io/name": "volt"}, "volt-system")
    # The collectives pick their ports at run time: the job's pods reach each other on any port.
    assert allowed(policy, 41234, pod["metadata"]["labels"], None)
    assert not allowed(policy, 41234, other_job, None)


def test_every_metrics_port_a_pod_opens_is_open_to_the_named_peers_only() -> None:
    s = spec()
    policy = build_network_policy(JOB, s, [PROMETHEUS, OPERATOR])
    pod = build_pod(JOB, s, 0, 0, "auto")
    metrics: List[int] = [port for name, port in _opened_ports(pod).items() if name.startswith("metrics-")]
    assert metrics == [9400, 9401, 9402]
    for port in metrics:
        assert allowed(policy, port, {"app.kubernetes.io/name": "prometheus"}, "monitoring")
        assert allowed(policy, port, {"app.kubernetes.io/name": "volt"}, "volt-system")
        assert not allowed(policy, port, {"app.kubernetes.io/name": "grafana"}, "monitoring")
        assert not allowed(policy, port, {"app.kubernetes.io/name": "prometheus"}, "team-b")
    # Only the ports the pods open are listed.
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])} == set(metrics)


def test_without_peers_only_the_jobs_pods_get_in() -> None:
    policy = build_network_policy(JOB, spec(), [])
    assert len(policy["spec"]["ingress"]) == 1
    assert not allowed(policy, 9400, {"app.kubernetes.io/name": "prometheus"}, "monitoring")
