"""An operator that holds exactly the chart's permissions, and what the audit log says it did.

`chart_credentials` renders the chart's RBAC objects with `helm template` (watchNamespace set, plus
the given settings), applies them without a release, and hands back a kubeconfig holding its
ServiceAccount's token (`kubectl create token`), for an `OperatorProcess(env={"KUBECONFIG": ...})`.
`used_by` reads the API server's audit log: which (group, resource, verb) a user used, and which
of its requests were refused. test_helm_install.py proves the chart's RBAC sufficient and minimal
for a plain job; the Kueue modules run their operators this way, so every Kueue path they take
is taken with the chart's permissions.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import yaml

from helm_util import CHART, helm_binary, run_helm
from volt_operator.testing.cluster import LocalCluster, write_kubeconfig

Permission = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Every authenticated user may review itself; the tests' own `kubectl auth` checks do.
SELF_REVIEWS = {"authentication.k8s.io", "authorization.k8s.io"}
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")


class ChartIdentity(NamedTuple):
    kubeconfig: Path
    user: str


def used_by(kube: LocalCluster, user: str) -> tuple[set[Permission], list[dict[str, Any]]]:
    """What `user` did according to the audit log, and every request of theirs that was refused."""
    used: set[Permission] = set()
    refused: list[dict[str, Any]] = []
    for event in kube.audit_events():
        if event["user"].get("username") != user or "objectRef" not in event:
            continue
        ref = event["objectRef"]
        group = ref.get("apiGroup", "")
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        if group in SELF_REVIEWS:
            continue
        if event.get("responseStatus", {}).get("code") == 403:
            refused.append({"verb": event["verb"], "uri": event["requestURI"]})
        else:
            used.add((group, resource, event["verb"]))
    return used, refused


@contextmanager
def chart_credentials(kube: LocalCluster, namespace: str, work: Path, *settings: str) -> Iterator[ChartIdentity]:
    """The chart's ServiceAccount and rules for an operator watching `namespace` (which also holds
    the ServiceAccount), for the block; its cluster-scoped objects are deleted after it (the
    namespaced ones go with the namespace)."""
    release = f"rbac{zlib.crc32(namespace.encode()):08x}"  # cluster-scoped names unique per test
    args = ["template", release, str(CHART), "--namespace", namespace, "--set", f"watchNamespace={namespace}"]
    for setting in settings:
        args += ["--set", setting]
    objects = [d for d in yaml.safe_load_all(run_helm(helm_binary(), *args).stdout) if d and d["kind"] in RBAC_KINDS]
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))
    try:
        account = next(d for d in objects if d["kind"] == "ServiceAccount")["metadata"]["name"]
        token = kube.kubectl("create", "token", account, "-n", namespace, "--duration", "1h").stdout.strip()
        user = f"system:serviceaccount:{namespace}:{account}"
        yield ChartIdentity(write_kubeconfig(work / "chart-operator.kubeconfig", kube.server, kube.pki / "ca.crt",
                                             user, token=token), user)
    finally:
        for kind in ("ClusterRoleBinding", "ClusterRole"):
            names = [d["metadata"]["name"] for d in objects if d["kind"] == kind]
            if names:
                kube.kubectl("delete", kind.lower(), *names, "--ignore-not-found", check=False)
