"""Kueue's waitForPodsReady with TrainingJobs, against the real Kueue manager on the real nodes.

The manager runs with waitForPodsReady (timeout POD_READY_TIMEOUT seconds): an admitted
Workload whose PodsReady condition is not True by then is evicted. The operator writes that
condition for its jobs. Two jobs are admitted together:

* one whose gang comes up: its Workload says PodsReady=True (reason Started) and the job
  runs past the timeout to Succeeded, never evicted;
* one whose pods can never be scheduled (a nodeSelector no node matches): Kueue evicts it
  at the timeout (PodsReadyTimeout), the operator deletes its pods, the job is Queued with
  Kueue's reason, its Workload's quota is released, and Kueue admits it again after its
  backoff (a new attempt with new pods).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest

from job_helpers import apply, diagnosis, events
from kueue_jobs import (chart_operator, condition, queue_manifests, queued_job, status, wait_finished, wait_jobs,
                        workload_of)
from real_nodes import namespace, pods  # noqa: F401 (namespace: a fixture)
from volt_operator.testing.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow]

POD_READY_TIMEOUT = 30


@pytest.fixture(scope="module")
def strict_kueue(real_kube: LocalCluster) -> Iterator[LocalCluster]:
    """Kueue's manager with waitForPodsReady, for this module: one already running (without
    it) is stopped first, and this one is stopped at the end, so a later module that needs
    Kueue starts its own."""
    for running in [c for c in real_kube.components if c.name == "kueue" and c.alive()]:
        running.stop(10)
        real_kube.components.remove(running)
    manager = real_kube.start_kueue(pods_ready_timeout=POD_READY_TIMEOUT)
    try:
        yield real_kube
    finally:
        manager.stop(10)
        real_kube.components.remove(manager)


@pytest.fixture
def roomy_queue(strict_kueue: LocalCluster, namespace: str) -> Iterator[str]:
    """A LocalQueue whose ClusterQueue has room for two 2-node jobs at once."""
    name = f"cq-ready-{namespace}"[:63]
    manifests = [
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "volt-default"}},
        *queue_manifests(name, "training", namespace, cpu="2", memory="4Gi"),
    ]
    strict_kueue.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))
    try:
        yield "training"
    finally:
        strict_kueue.kubectl("delete", "clusterqueue", name, "--wait=false", check=False)


@pytest.mark.timeout(420)
def test_a_gang_that_comes_up_keeps_its_admission_and_one_that_cannot_is_evicted_and_admitted_again(
        strict_kueue: LocalCluster, roomy_queue: str, namespace: str, tmp_path: Path) -> None:
    with chart_operator(strict_kueue, namespace, tmp_path) as proc:
        kube = proc.kube
        # 512 samples / 4 processes / batch 32: 4 steps an epoch, 1 s a step, 12 epochs:
        # still training well after the timeout.
        pvc, up = queued_job("up", roomy_queue, samples=512, step_delay=1.0, epochs=12)
        _, stuck = queued_job("stuck", roomy_queue, samples=64, step_delay=0.0, epochs=1)
        stuck["spec"]["template"] = {"nodeSelector": {"volt.dev/e2e-no-such-node": "x"}}
        apply(kube, namespace, pvc, up, stuck)

        def evicted_and_readmitted(jobs: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
            st = status(jobs, "up")
            if st.get("phase") in ("Succeeded", "Failed") or st.get("attempt", 0) > 0:
                raise AssertionError(f"up ended or was evicted before stuck was: {st}")
            return jobs if status(jobs, "stuck").get("attempt", 0) >= 1 \
                and condition(status(jobs, "stuck"), "Admitted").get("status") == "True" else None
        wait_jobs(kube, namespace, "stuck evicted at the timeout and admitted again", 3 * POD_READY_TIMEOUT + 60,
                  evicted_and_readmitted)
        # the evicted gang's pods were gone before its quota was released and it was admitted again
        stuck_pods = pods(kube, namespace, "stuck")
        assert all(p["metadata"]["labels"]["volt.dev/attempt"] != "0" for p in stuck_pods), \
            [p["metadata"]["name"] for p in stuck_pods]
        ready = condition(workload_of(kube, namespace, "up").get("status") or {}, "PodsReady")
        assert (ready.get("status"), ready.get("reason")) == ("True", "Started"), ready
        st = wait_finished(kube, namespace, "up", 240)
    assert st["phase"] == "Succeeded" and st.get("attempt", 0) == 0, diagnosis(kube, namespace, "up")
    up_reasons = [e["reason"] for e in events(kube, namespace, "up")]
    assert "Evicted" not in up_reasons and "Preempted" not in up_reasons, up_reasons
    # stuck: evicted by Kueue's timeout, queued with Kueue's reason, its gang deleted, then
    # admitted again with a new attempt
    stuck_events = [(e["reason"], e["message"]) for e in events(kube, namespace, "stuck")]
    assert any(reason == "Evicted" and "PodsReady" in message for reason, message in stuck_events), stuck_events
    assert [r for r, _ in stuck_events].count("Admitted") >= 2, stuck_events
