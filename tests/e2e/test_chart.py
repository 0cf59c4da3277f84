"""The Helm chart: lint, render, least-privilege RBAC, hardened pod, CRD copy, values schema.

These tests need only the helm binary (no cluster); test_helm_install.py installs
the chart into the local control plane.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from helm_util import CHART, REPO, helm_binary, run_helm

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def helm() -> Path:
    return helm_binary()


def render(helm: Path, *set_args: str) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "volt-system"]
    for item in set_args:
        args += ["--set", item]
    out = run_helm(helm, *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_helm_lint_passes_in_both_rbac_modes(helm: Path) -> None:
    run_helm(helm, "lint", "--strict", str(CHART))
    run_helm(helm, "lint", "--strict", str(CHART), "--set", "watchNamespace=team-a")
    run_helm(helm, "lint", "--strict", str(CHART), "--set", "metrics.grafanaDashboard.enabled=true")


def test_default_render_is_cluster_wide(helm: Path) -> None:
    docs = render(helm)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "RoleBinding", "Service",
                     "ServiceAccount", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    binding = by_kind(docs, "ClusterRoleBinding")[0]
    sa = by_kind(docs, "ServiceAccount")[0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "volt-system"}]
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args and "--log-format=text" in args
    assert "--leader-elect" in args and "--standalone" not in args  # leaderElection.enabled by default


def test_watch_namespace_gives_a_role_and_no_cluster_permission(helm: Path) -> None:
    docs = render(helm, "watchNamespace=team-a")
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    role, = [r for r in by_kind(docs, "Role") if not r["metadata"]["name"].endswith("-leader-election")]
    binding, = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "team-a"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    # The ServiceAccount stays in the release namespace; the binding reaches across.
    assert binding["subjects"][0]["namespace"] == "volt-system"
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args


def test_trainingjob_policy_binds_where_the_operator_watches(helm: Path) -> None:
    """Deputy limits (tests/e2e/test_trainingjob_policy.py runs them on the API server)."""
    policy, = by_kind(render(helm), "ValidatingAdmissionPolicy")
    binding, = by_kind(render(helm), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"] and "matchResources" not in binding["spec"]
    assert len(policy["spec"]["validations"]) == 6  # 4 deputy limits, Secrets and ConfigMaps read access
    scoped, = by_kind(render(helm, "watchNamespace=team-a"), "ValidatingAdmissionPolicyBinding")
    assert scoped["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "team-a"}
    allowed, = by_kind(render(helm, "trainingJobPolicy.allowHostPath=true",
                              "trainingJobPolicy.allowPrivileged=true"), "ValidatingAdmissionPolicy")
    assert len(allowed["spec"]["validations"]) == 4
    unchecked, = by_kind(render(helm, "trainingJobPolicy.requireReadAccessToReferences=false"),
                         "ValidatingAdmissionPolicy")
    assert len(unchecked["spec"]["validations"]) == 4
    assert not any("authorizer" in v["expression"] for v in unchecked["spec"]["validations"])
    off = render(helm, "trainingJobPolicy.enabled=false")
    assert not by_kind(off, "ValidatingAdmissionPolicy") and not by_kind(off, "ValidatingAdmissionPolicyBinding")


def test_network_policy_switch_sets_the_flag_and_the_permission_together(helm: Path) -> None:
    def flag_and_rules(*settings: str) -> tuple[list[Any], list[str]]:
        docs = render(helm, *settings)
        args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
        flags = [json.loads(a.split("=", 1)[1]) for a in args if a.startswith("--network-policy-peers=")]
        groups = [g for rule in by_kind(docs, "ClusterRole")[0]["rules"] for g in rule["apiGroups"]]
        return flags, groups

    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    flags, groups = flag_and_rules("networkPolicy.metricsFrom[0].namespaceSelector.matchLabels"
                                   ".kubernetes\\.io/metadata\\.name=monitoring")
    (peers,) = flags
    assert peers[0] == prometheus
    assert peers[1]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "volt-system"}}
    assert peers[1]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "volt"
    assert "networking.k8s.io" in groups
    flags, groups = flag_and_rules("networkPolicy.enabled=false")
    assert not flags and "networking.k8s.io" not in groups


def _lease_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for role in by_kind(docs, "Role") for rule in role["rules"]
            if "coordination.k8s.io" in rule["apiGroups"]]


@pytest.mark.parametrize("mode", [(), ("watchNamespace=team-a",)])
def test_leader_election_flags_and_lease_role_come_together(helm: Path, mode: tuple[str, ...]) -> None:
    """On (the default): --leader-elect with the release's namespace and its own Lease name, and
    a Role in the release namespace on that one Lease (get/update by name, create). Off: kopf
    --standalone, no Lease permission anywhere, and at most one replica."""
    docs = render(helm, *mode)
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert {"--leader-elect", "--leader-election-namespace=volt-system",
            "--leader-election-lease=rel-volt"} <= set(args) and "--standalone" not in args
    lease_role = next(r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "rel-volt-leader-election")
    assert lease_role["metadata"]["namespace"] == "volt-system"
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["rel-volt"],
         "verbs": ["get", "update"]},
    ]
    binding = next(b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == "rel-volt-leader-election")
    assert binding["metadata"]["namespace"] == "volt-system"
    assert binding["subjects"][0]["name"] == by_kind(docs, "ServiceAccount")[0]["metadata"]["name"]
    cluster_rules = [rule for role in by_kind(docs, "ClusterRole") for rule in role["rules"]]
    assert not [r for r in cluster_rules if "coordination.k8s.io" in r["apiGroups"]]

    off = render(helm, *mode, "leaderElection.enabled=false")
    args = by_kind(off, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" in args and not [a for a in args if a.startswith("--leader-elect")]
    assert not _lease_rules(off)
    assert not [r for r in by_kind(off, "Role") if r["metadata"]["name"].endswith("-leader-election")]


def test_standby_replicas_need_leader_election(helm: Path) -> None:
    docs = render(helm, "operator.replicas=3")
    assert by_kind(docs, "Deployment")[0]["spec"]["replicas"] == 3
    proc = run_helm(helm, "template", "rel", str(CHART), "--set", "operator.replicas=2",
                    "--set", "leaderElection.enabled=false", check=False)
    assert proc.returncode != 0 and "replicas" in proc.stderr, proc.stderr


def test_rbac_grants_no_wildcards_and_no_read_of_secrets(helm: Path) -> None:
    for mode in ((), ("watchNamespace=team-a",)):
        docs = render(helm, *mode)
        rules = [rule for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role") for rule in role["rules"]]
        for rule in rules:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], rule
            assert "secrets" not in rule["resources"], rule
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule


def test_operator_pod_is_hardened_and_probed(helm: Path) -> None:
    deployment, = by_kind(render(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container, = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert f"--liveness=http://0.0.0.0:{ports['health']}/healthz" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VOLT_OPERATOR_METRICS_PORT"] == "8080"
    # The only writable path is the /tmp emptyDir.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["replicas"] == 1


def test_metrics_service_selects_the_operator_pod(helm: Path) -> None:
    docs = render(helm, "metrics.port=9100")
    service, = by_kind(docs, "Service")
    deployment, = by_kind(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics",
                                         "protocol": "TCP"}]


def test_grafana_dashboard_configmap_carries_every_dashboard(helm: Path) -> None:
    dashboards = sorted((CHART / "dashboards").glob("*.json"))
    assert dashboards, "charts/volt/dashboards/ holds no dashboard"
    assert not by_kind(render(helm), "ConfigMap"), "dashboard ConfigMap must be opt-in"
    configmap, = by_kind(render(helm, "metrics.grafanaDashboard.enabled=true"), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert sorted(configmap["data"]) == [p.name for p in dashboards]
    for path in dashboards:
        assert json.loads(configmap["data"][path.name]) == json.loads(path.read_text())


def test_chart_crd_is_the_generated_crd() -> None:
    generated = REPO / "crds" / "trainingjob.yaml"
    in_chart = CHART / "crds" / "trainingjob.yaml"
    assert generated.is_file(), "crds/trainingjob.yaml is missing: run `make crds`"
    assert in_chart.is_file(), "charts/volt/crds/trainingjob.yaml is missing: run `make crds`"
    assert in_chart.read_bytes() == generated.read_bytes(), (
        "charts/volt/crds/trainingjob.yaml differs from crds/trainingjob.yaml: run `make crds`")
    crd = yaml.safe_load(in_chart.read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "trainingjobs.volt.dev"


@pytest.mark.parametrize(("setting", "named"), [
    ("metrics.port=0", "metrics.port"),
    ("image.pullPolicy=Sometimes", "image.pullPolicy"),
    ("watchNamespace=Team_A", "watchNamespace"),
    ("operator.logLevel=loud", "operator.logLevel"),
    ("operator.logFormat=xml", "operator.logFormat"),
    ("metrics.podMonitor.interval=often", "metrics.podMonitor.interval"),
    ("operator.replicas=2,leaderElection.enabled=false", "operator.replicas"),
    ("operator.replicas=6", "operator.replicas"),
    ("leaderElection.enabled=maybe", "leaderElection.enabled"),
    ("replicas=1", "replicas"),
    ("trainingJobPolicy.allowHostPath=yes", "trainingJobPolicy.allowHostPath"),
    ("trainingJobPolicy.serviceAccountNames={Bad_Name}", "trainingJobPolicy.serviceAccountNames"),
])
def test_values_schema_rejects_bad_values(helm: Path, setting: str, named: str) -> None:
    proc = run_helm(helm, "template", "rel", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0, f"--set {setting} rendered without error"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert named.split(".")[-1] in proc.stderr, proc.stderr


@pytest.mark.parametrize("settings", [(), ("watchNamespace=team-a", "operator.logLevel=verbose",
                                           "operator.logFormat=json", "operator.healthPort=9000")])
def test_operator_cli_accepts_the_rendered_arguments(helm: Path, settings: tuple[str, ...]) -> None:
    from volt_operator.__main__ import parse_args

    container = by_kind(render(helm, *settings), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    args = parse_args(container["args"])
    assert args.leader_elect and not args.standalone
    assert args.leader_election_namespace == "volt-system" and args.leader_election_lease == "rel-volt"
    if settings:
        assert args.namespace == ["team-a"] and args.verbose and args.log_format == "json"
        assert args.liveness == "http://0.0.0.0:9000/healthz"
    else:
        assert args.all_namespaces and not args.namespace and args.log_format == "text"


def test_service_monitor_selects_the_metrics_service(helm: Path) -> None:
    base = ["template", "rel", str(CHART), "--namespace", "volt-system",
            "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true"]
    without_crds = [d for d in yaml.safe_load_all(run_helm(helm, *base).stdout) if d]
    assert not by_kind(without_crds, "ServiceMonitor"), "monitors need the Prometheus Operator's API"
    docs = [d for d in yaml.safe_load_all(run_helm(helm, *base, "--api-versions", "monitoring.coreos.com/v1").stdout)
            if d]
    monitor, = by_kind(docs, "ServiceMonitor")
    service, = by_kind(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert by_kind(docs, "PodMonitor")


def monitors(helm: Path, *set_args: str) -> list[dict[str, Any]]:
    args = ["template", "rel", str(CHART), "--namespace", "volt-system", "--api-versions", "monitoring.coreos.com/v1",
            "--set", "metrics.podMonitor.enabled=true", "--set", "metrics.serviceMonitor.enabled=true"]
    for item in set_args:
        args += ["--set", item]
    docs = [d for d in yaml.safe_load_all(run_helm(helm, *args).stdout) if d]
    return by_kind(docs, "PodMonitor") + by_kind(docs, "ServiceMonitor")


def test_monitors_carry_the_release_label_kube_prometheus_stack_selects(helm: Path) -> None:
    found = monitors(helm)
    assert len(found) == 2 and all(m["metadata"]["labels"]["release"] == "rel" for m in found)
    found = monitors(helm, "metrics.prometheusRelease=kps", "metrics.podMonitor.labels.team=ml")
    assert [m["metadata"]["labels"]["release"] for m in found] == ["kps", "kps"]
    assert found[0]["metadata"]["labels"]["team"] == "ml"
    # A release in a monitor's own labels wins, and the label appears once.
    found = monitors(helm, "metrics.prometheusRelease=kps", "metrics.serviceMonitor.labels.release=other")
    assert [m["metadata"]["labels"]["release"] for m in found] == ["kps", "other"]


def notes(helm: Path, tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it (helm template skips NOTES; a copy of the chart
    renders it through tpl in an ordinary template)."""
    chart = tmp_path / "volt"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "notes-render.yaml").write_text(
        'text: |-\n  {{- tpl (.Files.Get "notes.txt") . | nindent 2 }}\n')
    out = run_helm(helm, "template", "rel", str(chart), "--namespace", "volt-system",
                   "--show-only", "templates/notes-render.yaml", *args).stdout
    return yaml.safe_load(out)["text"]


def test_notes_tell_the_truth_about_monitors_and_crd_upgrades(helm: Path, tmp_path: Path) -> None:
    enabled = ("--set", "metrics.podMonitor.enabled=true", "--set", "metrics.serviceMonitor.enabled=true")
    text = notes(helm, tmp_path / "a", *enabled)
    assert "NO PodMonitor was created" in text and "NO ServiceMonitor" in text
    assert "kubectl apply --server-side --force-conflicts -f charts/volt/crds/" in text
    text = notes(helm, tmp_path / "b", *enabled, "--api-versions", "monitoring.coreos.com/v1")
    assert "PodMonitor rel-volt-trainingjobs scrapes every rank" in text and "NO PodMonitor" not in text
    assert "release=rel" in text
    text = notes(helm, tmp_path / "c", "--set", "operator.replicas=0", "--set", "watchNamespace=team-a")
    assert "no running operator" in text and "rollout status" not in text
    assert "kubectl apply -n team-a -f examples/trainingjob.yaml" in text


# Operator-wide series (no job, no job namespace): the namespace variable cannot apply to them.
OPERATOR_WIDE = ("volt_operator_time_to_running_seconds", "volt_operator_reconcile_",
                 "volt_operator_failing_jobs")


def test_dashboard_panels_follow_the_namespace_variable_and_show_an_eta() -> None:
    dashboard = json.loads((CHART / "dashboards" / "volt.json").read_text())
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert variables == ["datasource", "namespace", "trainingjob"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            if not any(name in expr for name in OPERATOR_WIDE):
                assert 'namespace=~"$namespace"' in expr, f"panel {panel['title']!r} ignores $namespace: {expr}"
    eta, = [p for p in dashboard["panels"] if p["title"] == "ETA"]
    assert eta["fieldConfig"]["defaults"]["unit"] == "s"
    assert "volt_train_progress_ratio" in eta["targets"][0]["expr"]
