"""The chart's deputy limits (templates/trainingjob-policy.yaml) on the real API server:
a TrainingJob asking for another ServiceAccount, a hostPath volume, a projected token
or a privileged container is refused at apply time naming the field, and admitted
once the chart value allows it; one that names Secrets or ConfigMaps only from someone
who may read them."""
from __future__ import annotations

import secrets
from typing import Any, Dict, Iterator

import pytest
import yaml

from helm_util import CHART, helm_binary, run_helm
from operator_process import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

ASKS: Dict[str, Dict[str, Any]] = {
    "serviceAccountName": {"serviceAccountName": "builder"},
    "hostPath": {"volumes": [{"name": "host", "hostPath": {"path": "/etc"}}]},
    "projected": {"volumes": [{"name": "token", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "audience": "vault"}}]}}]},
    "privileged": {"containerSecurityContext": {"privileged": True}},
}
# The field each refusal names, and the chart value that allows it.
NAMES = {
    "serviceAccountName": ("spec.template.serviceAccountName",
                           "trainingJobPolicy.serviceAccountNames={builder}"),
    "hostPath": ("spec.template.volumes: hostPath", "trainingJobPolicy.allowHostPath=true"),
    "projected": ("spec.template.volumes: projected serviceAccountToken",
                  "trainingJobPolicy.allowProjectedServiceAccountTokens=true"),
    "privileged": ("spec.template.containerSecurityContext.privileged",
                   "trainingJobPolicy.allowPrivileged=true"),
}


def job(name: str, template: Dict[str, Any]) -> str:
    return yaml.safe_dump({
        "apiVersion": "volt.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"image": "volt-trainer:test", "command": ["python", "-c", "pass"],
                 "trainer": {"numNodes": 1, "devices": 1, "accelerator": "cpu"},
                 "template": template},
    })


def dry_run(kube: Any, namespace: str, manifest: str) -> Any:
    return kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                        input=manifest, check=False)


@pytest.fixture
def install_policy(crd: Any, namespace: str) -> Iterator[Any]:
    """Apply the chart's policy for ``namespace`` only (watchNamespace), with ``settings``."""
    helm = helm_binary()
    applied: list[str] = []

    def install(*settings: str) -> None:
        args = ["template", namespace, str(CHART), "--show-only",
                "templates/trainingjob-policy.yaml", "--set", f"watchNamespace={namespace}"]
        for setting in settings:
            args += ["--set", setting]
        rendered = run_helm(helm, *args).stdout
        crd.kubectl("apply", "-f", "-", input=rendered)
        applied.append(rendered)

    yield install
    if applied:
        crd.kubectl("delete", "--ignore-not-found", "-f", "-", input=applied[-1], check=False)


def test_deputy_limits_refuse_by_default_and_admit_when_the_chart_allows(
        crd: Any, namespace: str, install_policy: Any) -> None:
    kube = crd
    install_policy()
    # The API server compiles a new policy in the background: wait for it to act.
    wait_until("the policy refuses hostPath", lambda: dry_run(
        kube, namespace, job("probe", ASKS["hostPath"])).returncode != 0, 60)

    for ask, template in ASKS.items():
        out = dry_run(kube, namespace, job(f"ask-{ask.lower()}", template))
        field, value = NAMES[ask]
        assert out.returncode != 0, f"{ask} was admitted by default"
        assert field in out.stderr and value.split("=")[0] in out.stderr, out.stderr
        # The refusal names the field, never the value asked for.
        assert "/etc" not in out.stderr and "vault" not in out.stderr
    # What every job gets is admitted: the default ServiceAccount, a PVC or emptyDir volume.
    plain = dry_run(kube, namespace, job("plain", {
        "serviceAccountName": "default",
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "containerSecurityContext": {"privileged": False}}))
    assert plain.returncode == 0, plain.stderr
    # Host namespaces are no field of spec.template at all: strict field validation refuses them.
    host = dry_run(kube, namespace, job("hostnet", {"hostNetwork": True}))
    assert host.returncode != 0 and "hostNetwork" in host.stderr, host.stderr

    install_policy(*(value for _, value in NAMES.values()))
    wait_until("the new allowances", lambda: dry_run(
        kube, namespace, job("probe", ASKS["hostPath"])).returncode == 0, 60)
    for ask, template in ASKS.items():
        out = dry_run(kube, namespace, job(f"ask-{ask.lower()}", template))
        assert out.returncode == 0, f"{ask} refused although allowed: {out.stderr}"


# What may name a Secret or a ConfigMap: env valueFrom (spec.env and spec.template.env),
# secret and configMap volumes, projected secret and configMap sources.
REFERENCES: Dict[str, Dict[str, Any]] = {
    "env secretKeyRef": {"env": [{"name": "TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "wandb", "key": "token"}}}]},
    "template env secretKeyRef": {"template": {"env": [{"name": "TOKEN", "valueFrom": {
        "secretKeyRef": {"name": "wandb", "key": "token"}}}]}},
    "secret volume": {"template": {"volumes": [{"name": "creds", "secret": {"secretName": "wandb"}}]}},
    "projected secret": {"template": {"volumes": [{"name": "creds", "projected": {"sources": [
        {"secret": {"name": "wandb"}}]}}]}},
    "env configMapKeyRef": {"env": [{"name": "MODE", "valueFrom": {
        "configMapKeyRef": {"name": "settings", "key": "mode"}}}]},
    "configMap volume": {"template": {"volumes": [{"name": "cfg", "configMap": {"name": "settings"}}]}},
}


def job_with(name: str, change: Dict[str, Any]) -> str:
    doc = yaml.safe_load(job(name, {}))
    doc["spec"].update(change)
    return yaml.safe_dump(doc)


def test_only_someone_who_may_read_them_may_name_secrets_and_configmaps(
        crd: Any, namespace: str, install_policy: Any) -> None:
    """A user who may create TrainingJobs but not read Secrets (ConfigMaps) cannot have the
    operator's pods hand them over; once allowed to get them, or with the chart value off, can.
    The operator's own writes (the spec unchanged) pass without any read permission."""
    kube = crd
    install_policy()
    user = f"bob-{secrets.token_hex(3)}"
    bob = kube.user_kubeconfig(user)
    kube.kubectl("create", "role", "submitter", "--verb=get,create,patch",
                 "--resource=trainingjobs.volt.dev", "-n", namespace)
    kube.kubectl("create", "rolebinding", "bob-submits", "--role=submitter", f"--user={user}",
                 "-n", namespace)

    def as_bob(manifest: str) -> Any:
        return kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                            input=manifest, kubeconfig=bob, check=False)

    wait_until("the policy refuses bob's secret volume", lambda: "Secrets" in as_bob(
        job_with("probe", REFERENCES["secret volume"])).stderr, 60)
    for what, change in REFERENCES.items():
        out = as_bob(job_with("refs", change))
        kind = "ConfigMaps" if "onfigMap" in what else "Secrets"
        assert out.returncode != 0, f"{what} was admitted from someone who may not get {kind}"
        assert f"names {kind}" in out.stderr and "trainingJobPolicy.requireReadAccessToReferences" in out.stderr
        assert "spec.env" in out.stderr and "spec.template.volumes" in out.stderr, out.stderr
        assert "wandb" not in out.stderr  # the field, not the value
    plain = as_bob(job_with("plain", {}))  # the control: bob may create TrainingJobs
    assert plain.returncode == 0, plain.stderr
    # An admin (who may read them) is admitted.
    admitted = kube.kubectl("apply", "-n", namespace, "-f", "-", check=False,
                            input=job_with("admins", {**REFERENCES["secret volume"],
                                                      **REFERENCES["env configMapKeyRef"]}))
    assert admitted.returncode == 0, admitted.stderr
    # A write that keeps the references (the operator's finalizer and annotations, a suspend)
    # needs no read permission: they were checked at creation (and are immutable).
    labelled = kube.kubectl("label", "trainingjob", "admins", "seen=yes", "-n", namespace,
                            kubeconfig=bob, check=False)
    assert labelled.returncode == 0, labelled.stderr
    suspended = kube.kubectl("patch", "trainingjob", "admins", "-n", namespace, "--type=merge",
                             "-p", '{"spec": {"suspend": true}}', kubeconfig=bob, check=False)
    assert suspended.returncode == 0, suspended.stderr

    kube.kubectl("create", "role", "secret-reader", "--verb=get", "--resource=secrets", "-n", namespace)
    kube.kubectl("create", "rolebinding", "bob-reads", "--role=secret-reader", f"--user={user}", "-n", namespace)
    wait_until("bob's new permission", lambda: as_bob(
        job_with("probe", REFERENCES["secret volume"])).returncode == 0, 60)
    for what, change in REFERENCES.items():
        out = as_bob(job_with("refs", change))
        assert (out.returncode == 0) == ("onfigMap" not in what), f"{what}: {out.stderr}"

    install_policy("trainingJobPolicy.requireReadAccessToReferences=false")
    wait_until("the chart value off", lambda: as_bob(
        job_with("probe", REFERENCES["configMap volume"])).returncode == 0, 60)
    for what, change in REFERENCES.items():
        out = as_bob(job_with("refs", change))
        assert out.returncode == 0, f"{what} refused with the check off: {out.stderr}"
