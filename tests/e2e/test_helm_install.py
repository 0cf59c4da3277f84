"""`helm install` into the local cluster, then a TrainingJob run end to end on its real nodes
by an operator that holds only the chart ServiceAccount's token (from `kubectl create token`).

This proves the chart's RBAC is sufficient. The API server's audit log then
proves it is minimal: every (resource, verb) the chart grants was used by the
operator during the run, none was refused, and `kubectl auth can-i --list`
shows nothing beyond the chart's rules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from chart_rbac import Permission, used_by
from helm_util import CHART, REPO, helm_binary, run_helm
from helpers import free_port
from real_nodes import IMAGE, namespace  # noqa: F401 (namespace: a fixture)
from volt_operator.testing.cluster import ClusterError, LocalCluster, wait_for, write_kubeconfig

RELEASE = "volt"
JOB_TIMEOUT = 360
STEPS = 8

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]

def helm_env(kube: LocalCluster, home: Path) -> dict[str, str]:
    """Admin kubeconfig; helm's config, cache and data kept out of the user's home."""
    return {**kube.env(), "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data")}


def granted(rules: list[dict[str, Any]]) -> set[Permission]:
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def can_i_list(output: str) -> dict[str, set[str]]:
    """`kubectl auth can-i --list` as {resource: verbs}; non-resource URL rows are left out."""
    allowed: dict[str, set[str]] = {}
    for line in output.splitlines()[1:]:
        if not line.strip() or line[0].isspace():
            continue
        name = line.split()[0]
        verbs = line[line.rindex("[") + 1:line.rindex("]")].split()
        allowed.setdefault(name, set()).update(verbs)
    return allowed


@pytest.fixture
def release_namespace(real_kube: LocalCluster, namespace: str) -> Iterator[str]:
    """The operator's own namespace, apart from the namespace whose jobs it runs."""
    name = f"{namespace}-sys"
    real_kube.kubectl("create", "namespace", name)
    yield name
    real_kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def example_job(namespace: str) -> tuple[list[dict[str, Any]], str]:
    """examples/trainingjob.yaml, moved into the test namespace and shortened.

    The finished job's pods are cleaned up and the job itself expires soon after
    (cleanPodPolicy All, ttlSecondsAfterFinished), so the run also takes the
    operator's delete paths and the audit log sees them.
    """
    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "trainingjob.yaml").read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    job = next(d for d in docs if d["kind"] == "TrainingJob")
    job["spec"]["image"] = IMAGE
    job["spec"]["trainer"]["maxSteps"] = STEPS
    job["spec"]["cleanPodPolicy"] = "All"
    job["spec"]["ttlSecondsAfterFinished"] = 5
    return docs, job["metadata"]["name"]


def test_chart_installs_and_its_service_account_runs_a_job(
        real_kube: LocalCluster, namespace: str, release_namespace: str, tmp_path: Path) -> None:
    kube = real_kube
    helm = helm_binary()
    env = helm_env(kube, tmp_path / "helm")

    # The operator runs as a host process holding the ServiceAccount's token, so that the test
    # reads its log and stops it when the run is over: replicas=0, everything else is installed
    # exactly as on a cluster. (The operator pod itself runs in
    # test_real_nodes_in_cluster_operator.py.)
    run_helm(helm, "install", RELEASE, str(CHART), "--namespace", release_namespace,
             "--set", f"watchNamespace={namespace}", "--set", "operator.replicas=0",
             "--wait", "--timeout", "120s", env=env, timeout=180)
    status = json.loads(run_helm(helm, "status", RELEASE, "-n", release_namespace, "-o", "json",
                                 env=env).stdout)
    assert status["info"]["status"] == "deployed"
    kube.kubectl("wait", "--for", "condition=established", "--timeout", "60s", "crd/trainingjobs.volt.dev")
    for kind, ns in (("deployment", release_namespace), ("serviceaccount", release_namespace),
                     ("service", release_namespace), ("role", namespace), ("rolebinding", namespace)):
        kube.kubectl("get", kind, "-n", ns, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name")
    manifest = list(yaml.safe_load_all(run_helm(helm, "get", "manifest", RELEASE, "-n", release_namespace,
                                                env=env).stdout))
    roles = [d for d in manifest if d and d["kind"] == "Role"]
    role = next(r for r in roles if r["metadata"]["namespace"] == namespace)
    lease_role = next(r for r in roles if r["metadata"]["namespace"] == release_namespace)
    # The operator runs here with the arguments the chart gives its pod that matter to RBAC.
    rendered_args = next(d for d in manifest if d and d["kind"] == "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    policy_args = [a for a in rendered_args if a.startswith("--network-policy-peers=")]
    assert policy_args, "networkPolicy.enabled is the chart's default"
    leader_args = [a for a in rendered_args if a.startswith("--leader-elect")]
    assert "--leader-elect" in leader_args, "leaderElection.enabled is the chart's default"
    sa_name = next(d for d in manifest if d and d["kind"] == "ServiceAccount")["metadata"]["name"]
    user = f"system:serviceaccount:{release_namespace}:{sa_name}"

    # The operator's credentials: the ServiceAccount's token, as a user would get it.
    token = kube.kubectl("create", "token", sa_name, "-n", release_namespace, "--duration", "1h").stdout.strip()
    op_kubeconfig = write_kubeconfig(tmp_path / "operator.kubeconfig", kube.server, kube.pki / "ca.crt",
                                     user, token=token)
    whoami = json.loads(kube.kubectl("auth", "whoami", "-o", "json", kubeconfig=op_kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == user
    # Namespaced mode: nothing outside the watched namespace, no secrets anywhere.
    for args in (("list", "pods", "-A"), ("list", "trainingjobs.volt.dev", "-n", release_namespace),
                 ("get", "secrets", "-n", namespace), ("create", "clusterroles"), ("list", "nodes")):
        answer = kube.kubectl("auth", "can-i", *args, kubeconfig=op_kubeconfig, check=False).stdout.strip()
        assert answer == "no", f"the operator may {' '.join(args)}"

    health, metrics = free_port(), free_port()
    log_path = tmp_path / "operator.log"
    with log_path.open("w") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "volt_operator", f"--namespace={namespace}", *leader_args,
             f"--liveness=http://127.0.0.1:{health}/healthz", f"--metrics-port={metrics}", *policy_args],
            env={**os.environ, "KUBECONFIG": str(op_kubeconfig)}, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: operator.poll() is None and
                 urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2).status == 200,
                 60, "the operator's /healthz")
        docs, job = example_job(namespace)
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

        def operator_alive() -> None:
            # ClusterError is the one exception wait_for lets through at once.
            if operator.poll() is not None:
                raise ClusterError(f"the operator exited ({operator.returncode}):\n{log_path.read_text()[-4000:]}")

        def finished() -> str | None:
            operator_alive()
            phase = kube.kubectl("get", "tj", job, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout
            return phase if phase in ("Succeeded", "Failed") else None

        phase = wait_for(finished, JOB_TIMEOUT, f"TrainingJob {job} to finish", interval=2)
        described = kube.kubectl("get", "tj", job, "-n", namespace, "-o", "yaml").stdout
        assert phase == "Succeeded", f"{described}\noperator log:\n{log_path.read_text()[-4000:]}"
        status = yaml.safe_load(described)["status"]
        # A gang restart on the way (a crashed rank on a loaded machine) is the operator's
        # job too and needs no other permission; the RBAC checks below cover it either way.
        assert status["nodes"]["desired"] == 2, status
        # The job's NetworkPolicy, owned by the job (the local CNI does not enforce it).
        policy = json.loads(kube.kubectl("get", "networkpolicy", job, "-n", namespace, "-o", "json").stdout)
        assert policy["metadata"]["ownerReferences"][0]["name"] == job

        def expired() -> bool:
            operator_alive()
            left = kube.kubectl("get", "tj,pods", "-n", namespace, "-o", "name").stdout.split()
            return not left

        wait_for(expired, 120, f"TrainingJob {job} and its pods to be deleted (ttlSecondsAfterFinished)")
        operator_metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert 'volt_operator_time_to_running_seconds_count' in operator_metrics, operator_metrics[:2000]
    finally:
        operator.terminate()
        try:
            operator.wait(30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()

    # Least privilege, from the API server's own record of the run.
    time.sleep(1)  # the audit backend writes batches; let the last one land
    used, refused = used_by(kube, user)
    assert not refused, f"the chart's RBAC refused the operator: {refused}"
    # The Lease role's rules: get/update name one Lease; the audit log records the name.
    rules = granted(role["rules"]) | granted(lease_role["rules"])
    assert used <= rules
    unused = rules - used
    assert not unused, f"the chart grants permissions the operator never used: {sorted(unused)}"

    can_i = kube.kubectl("auth", "can-i", "--list", "-n", namespace, kubeconfig=op_kubeconfig).stdout
    allowed = can_i_list(can_i)
    expected: dict[str, set[str]] = {}
    for group, resource, verb in rules:
        base, _, sub = resource.partition("/")
        name = (f"{base}.{group}" if group else base) + (f"/{sub}" if sub else "")
        expected.setdefault(name, set()).add(verb)
    # Every authenticated user may review itself (system:basic-user); nothing else is extra.
    extra = {name: verbs - expected.get(name, set()) for name, verbs in allowed.items()
             if not name.startswith("selfsubject")}
    assert not any(extra.values()), f"auth can-i --list allows more than the chart's rules:\n{can_i}"
    # In the release namespace: the one Lease, and nothing of the jobs'.
    can_i = kube.kubectl("auth", "can-i", "--list", "-n", release_namespace, kubeconfig=op_kubeconfig).stdout
    allowed = {name: verbs for name, verbs in can_i_list(can_i).items() if not name.startswith("selfsubject")}
    assert allowed == {"leases.coordination.k8s.io": {"create", "get", "update"}}, can_i

    run_helm(helm, "uninstall", RELEASE, "-n", release_namespace, "--wait", env=env, timeout=180)

    def revoked() -> bool:
        answer = kube.kubectl("auth", "can-i", "list", "trainingjobs.volt.dev", "-n", namespace,
                              kubeconfig=op_kubeconfig, check=False)
        # "no", or no identity at all: the ServiceAccount went with the release, so its
        # token is refused (401) once the API server has seen the deletion.
        return answer.stdout.strip() == "no" or "Unauthorized" in answer.stderr

    # The API server's authenticator and RBAC authorizer learn of the deletions from their
    # own watches, a moment after the DELETEs returned: nothing a client can wait on.
    assert wait_for(revoked, 30, "the operator's permissions to go with the release", interval=0.5), \
        "uninstall left the operator's permissions behind"


def test_cluster_wide_chart_passes_server_side_validation(real_kube: LocalCluster, namespace: str) -> None:
    """The default (cluster-wide) rendering, with every optional object, is valid for the API server,
    and its operator pod passes the "restricted" Pod Security admission."""
    kube = real_kube
    helm = helm_binary()
    rendered = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", namespace, "--include-crds",
                        "--set", "metrics.grafanaDashboard.enabled=true").stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered) if d)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition",
                     "Deployment", "Role", "RoleBinding", "Service", "ServiceAccount",
                     "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    out = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered).stdout
    assert out.count("(server dry run)") == len(kinds), out

    # The operator pod meets the "restricted" Pod Security Standard: the API server's
    # Pod Security admission, enforcing it on the namespace, admits the pod template.
    kube.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    deployment = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    spec = dict(deployment["spec"]["template"]["spec"], serviceAccountName="default")
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": spec,
           "metadata": {"name": "operator-pod-security", "namespace": namespace}}
    admitted = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert admitted.returncode == 0 and "Warning" not in admitted.stderr, admitted.stderr
    spec["securityContext"] = {}  # without the pod-level settings it must be refused: the check is live
    refused = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr
