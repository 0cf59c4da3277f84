"""The chart's deputy limits (templates/trainingjob-policy.yaml) on the real API server:
a TrainingJob asking for another ServiceAccount, a hostPath volume, a projected token
or a privileged container is refused at apply time naming the field, and admitted
once the chart value allows it."""
from __future__ import annotations

from pathlib import Path
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
