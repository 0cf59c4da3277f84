"""An operator that lacks a permission it needs (the chart's Role, less `delete` on pods):
the job says so (condition `Reconciled`, reason Forbidden, and a Warning event), the
operator's `volt_operator_failing_jobs` gauge counts it, the refused request is retried with
backoff (not on every sweep), and once the permission is granted the job goes on and says
it recovered. The real operator process against the real API server; the retries are
counted in the API server's audit log, and `volt describe` quotes the condition."""
from __future__ import annotations

import contextlib
import io
import json
import re
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from chart_rbac import chart_credentials
from helpers import free_port
from job_helpers import idle_job_manifest
from operator_process import OperatorProcess, get_json
from volt.client.cli import main as volt_main
from volt_operator.testing.cluster import LocalCluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

# The sweep's first four delays after failures in a row (Backoff(first=1.0)): 1 + 2 + 4 + 8 s.
# Five refusals at the sweep's pace (every 2 s here) would take 8 s.
REFUSALS = 5
BACKOFF_SPAN_S = 1 + 2 + 4 + 8


def _revoke_pod_deletes(kube: LocalCluster, namespace: str, user: str, allowed: bool) -> None:
    """Take `delete` on pods from the chart's Role in `namespace` (or give it back); returns
    once the authorizer applies it."""
    [role] = [r for r in get_json(kube, "-n", namespace, "roles")["items"]
              if any("pods" in rule.get("resources", []) for rule in r["rules"])]
    for rule in role["rules"]:
        if rule.get("resources") == ["pods"]:
            verbs = [v for v in rule["verbs"] if v != "delete"]
            rule["verbs"] = verbs + ["delete"] if allowed else verbs
    role["metadata"] = {"name": role["metadata"]["name"], "namespace": namespace}
    kube.kubectl("apply", "-f", "-", input=json.dumps(role))
    wait_for(lambda: (kube.kubectl("auth", "can-i", "delete", "pods", "-n", namespace, "--as", user,
                                   check=False).returncode == 0) == allowed,
             30, f"{user} {'may' if allowed else 'may not'} delete pods")


def _refused_pod_deletes(kube: LocalCluster, user: str) -> List[datetime]:
    return sorted(datetime.fromisoformat(e["requestReceivedTimestamp"].replace("Z", "+00:00"))
                  for e in kube.audit_events()
                  if e["user"].get("username") == user and e["verb"] == "delete"
                  and e.get("objectRef", {}).get("resource") == "pods"
                  and e.get("responseStatus", {}).get("code") == 403)


def _failing_jobs(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(r"^volt_operator_failing_jobs (\S+)$", text, re.MULTILINE)
    assert found, "volt_operator_failing_jobs is not served"
    return float(found.group(1))


def _reconciled(job: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    conds = (job.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == "Reconciled"), None)


def test_a_permission_the_operator_lacks_is_said_on_the_job_and_retried_with_backoff(
        crd: LocalCluster, namespace: str, tmp_path: Path) -> None:
    kube = crd
    jobs = f"/apis/volt.dev/v1alpha1/namespaces/{namespace}/trainingjobs"
    pods = f"/api/v1/namespaces/{namespace}/pods?labelSelector=volt.dev/job=locked"
    with chart_credentials(kube, namespace, tmp_path) as identity:
        _revoke_pod_deletes(kube, namespace, identity.user, allowed=False)
        port = free_port()
        with OperatorProcess(kube, [namespace], tmp_path, metrics_port=port,
                             env={"KUBECONFIG": str(identity.kubeconfig)}).running():
            kube.kubectl("apply", "-n", namespace, "-f", "-", input=idle_job_manifest("locked"))
            kube.watch(pods, lambda found: len(found) == 2, 60, "the gang's two pods")
            kube.kubectl("patch", "tj", "locked", "-n", namespace, "--type=merge",
                         "-p", '{"spec":{"suspend":true}}')

            def refused(found: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
                said = _reconciled(found.get("locked") or {})
                return said if said and said["status"] == "False" else None

            said = kube.watch(jobs, refused, 60, "Reconciled=False")
            assert said["reason"] == "Forbidden"
            assert said["message"].startswith("the operator may not delete pods/locked-node-"), said
            assert _failing_jobs(port) == 1.0
            events = get_json(kube, "-n", namespace, "events", "--field-selector",
                              "involvedObject.name=locked,reason=ReconcileFailed")["items"]
            assert [e["type"] for e in events] == ["Warning"]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert volt_main(["describe", "locked", "-n", namespace, "--kubeconfig", str(kube.kubeconfig)]) == 0
            assert f"Blocked by:  Reconciled=False Forbidden: {said['message']}" in out.getvalue().splitlines()

            times = wait_for(lambda: (t := _refused_pod_deletes(kube, identity.user)) and len(t) >= REFUSALS and t,
                             120, f"{REFUSALS} refused pod deletions in the audit log")
            span = (times[REFUSALS - 1] - times[0]).total_seconds()
            assert span >= BACKOFF_SPAN_S - 1, f"{REFUSALS} tries in {span:.1f} s: {times}"
            # One event per distinct failure, not one per try.
            assert len(get_json(kube, "-n", namespace, "events", "--field-selector",
                                "involvedObject.name=locked,reason=ReconcileFailed")["items"]) == 1

            # Granted again: a pod event brings a look at once (events are not held back by
            # the backoff); the gang is deleted, the job is Suspended and says it recovered.
            _revoke_pod_deletes(kube, namespace, identity.user, allowed=True)
            kube.kubectl("annotate", "pods", "-n", namespace, "-l", "volt.dev/job=locked", "example.com/nudge=1")

            def recovered(found: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
                job = found.get("locked") or {}
                said = _reconciled(job)
                if (job.get("status") or {}).get("phase") == "Suspended" and said and said["status"] == "True":
                    return said
                return None

            said = kube.watch(jobs, recovered, 60, "Suspended and Reconciled=True")
            assert said["reason"] == "Recovered" and "Forbidden" in said["message"]
            wait_for(lambda: _failing_jobs(port) == 0.0, 30, "no failing job in the gauge")
