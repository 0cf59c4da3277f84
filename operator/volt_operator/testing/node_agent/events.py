"""Pod events as the kubelet records them (Started, Killing, BackOff, Failed, FailedMount).

`kubectl describe pod` and `kubectl get events` show them. They are sent from
a background thread so that a slow API server never delays the reconcile
loop; if the queue overflows, events are dropped (they are best effort in
Kubernetes too).
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import datetime, timezone
from typing import Any, Mapping

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

QUEUE_SIZE = 1000
API_TIMEOUT_S = 15


def pod_event(pod: Mapping[str, Any], kind: str, reason: str, message: str,
              container: str | None, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about `pod` (and one of its containers), reported by its node."""
    meta, node = pod["metadata"], (pod.get("spec") or {}).get("nodeName") or ""
    involved = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "namespace": meta["namespace"],
                "uid": meta["uid"]}
    if container:
        involved["fieldPath"] = f"spec.containers{{{container}}}"
    stamp = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": involved,
        "type": kind, "reason": reason, "message": message,
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet", "reportingInstance": node,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


class EventRecorder:
    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._send_loop, name="events", daemon=True)
        self._thread.start()

    def record(self, pod: Mapping[str, Any], kind: str, reason: str, message: str,
               container: str | None = None) -> None:
        try:
            self._queue.put_nowait(pod_event(pod, kind, reason, message, container,
                                             datetime.now(timezone.utc)))
        except queue.Full:
            log.debug("event queue full, dropped %s %s", reason, message)

    def _send_loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self.core.create_namespaced_event(event["metadata"]["namespace"], event,
                                                  _request_timeout=API_TIMEOUT_S)
            except ApiException as error:
                if error.status != 404:  # the namespace is going away: nothing to tell
                    log.debug("event %s not recorded: %s", event["reason"], error.reason)
            except Exception as error:  # best effort: never let one event stop the others
                log.debug("event %s not recorded: %s", event["reason"], error)

    def close(self) -> None:
        """Send what is queued (bounded wait), then stop."""
        try:
            self._queue.put(None, timeout=1)
        except queue.Full:
            return
        self._thread.join(timeout=5)
