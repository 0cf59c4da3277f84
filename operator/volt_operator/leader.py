"""Leader election through a coordination.k8s.io/v1 Lease (client-go's protocol).

With ``--leader-elect`` every replica runs kopf's watches but only the holder
of the Lease reconciles: the others answer every trigger with "not mine" and
keep trying to take the Lease. A holder renews every ``renew_seconds``; a
replica takes the Lease over once it has seen the same record, unrenewed, for
``lease_seconds`` by its own clock (clocks of different machines are never
compared). A holder that could not renew stops acting ``RENEW_MARGIN_SECONDS``
before its Lease can be taken, so two replicas never act at once.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Optional

from .kube import ApiError, KubeClient

log = logging.getLogger("volt_operator.leader")

LEASE_SECONDS = 15
RENEW_SECONDS = 5.0
RENEW_MARGIN_SECONDS = 3.0


def _micro_time(value: datetime) -> str:
    """metav1.MicroTime, as a Lease's acquireTime and renewTime are written."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Holds (or waits for) the Lease ``namespace/name``; ``is_leader()`` is cheap."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str = "volt-operator",
        identity: Optional[str] = None,
        lease_seconds: int = LEASE_SECONDS,
        renew_seconds: float = RENEW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if renew_seconds + RENEW_MARGIN_SECONDS >= lease_seconds:
            raise ValueError("the lease must outlast a renewal period plus its margin")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity or f"{socket.gethostname()}_{os.getpid()}"
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.clock = clock
        self._valid_until = float("-inf")
        self._observed: Optional[Dict[str, Any]] = None
        self._observed_at = 0.0
        self._leading = False  # what the log last said
        self._seen_holder = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="volt-leader", daemon=True)

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    def is_leader(self) -> bool:
        return self.clock() < self._valid_until

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing and hand the Lease back so a standby takes over at once."""
        self._stop.set()
        self._thread.join(timeout=10)
        if self.is_leader():
            self._valid_until = float("-inf")
            try:
                lease = self.client.request("GET", f"{self.path}/{self.name}")
                if lease["spec"].get("holderIdentity") == self.identity:
                    lease["spec"].update({"holderIdentity": "", "leaseDurationSeconds": 1})
                    self.client.request("PUT", f"{self.path}/{self.name}", lease)
                    log.info("released the lease %s/%s", self.namespace, self.name)
            except ApiError as exc:
                log.warning("releasing the lease %s/%s failed: %s", self.namespace,
                            self.name, exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.try_acquire_or_renew()
            except Exception as exc:  # the API server may be away: retry, never die
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            leader = self.is_leader()
            if leader and not self._leading:
                log.info("acquired leadership (lease %s/%s as %s)", self.namespace, self.name,
                         self.identity)
            elif self._leading and not leader:
                log.warning("lost leadership (lease %s/%s)", self.namespace, self.name)
            self._leading = leader
            self._stop.wait(self.renew_seconds)

    def try_acquire_or_renew(self) -> bool:
        """One round: take or renew the Lease if it is free, expired or ours."""
        started = self.clock()
        now = datetime.now(timezone.utc)
        try:
            lease = self.client.request("GET", f"{self.path}/{self.name}")
        except ApiError as exc:
            if not exc.not_found:
                raise
            lease = None
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now, acquired=now, transitions=0),
            }
            return self._write("POST", self.path, body, started)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if spec != self._observed:
            self._observed, self._observed_at = spec, started
        duration = spec.get("leaseDurationSeconds") or self.lease_seconds
        held_by_other = holder and holder != self.identity
        if held_by_other and started < self._observed_at + duration:
            self._valid_until = float("-inf")
            if holder != self._seen_holder:
                log.info("lease %s/%s held by %s; standing by", self.namespace, self.name,
                         holder)
                self._seen_holder = holder
            return False
        ours = holder == self.identity
        acquired = spec.get("acquireTime") if ours else _micro_time(now)
        transitions = (spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        lease["spec"] = self._spec(now, acquired=acquired, transitions=transitions)
        return self._write("PUT", f"{self.path}/{self.name}", lease, started)

    def _spec(self, now: datetime, acquired: Any, transitions: int) -> Dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": acquired if isinstance(acquired, str) else _micro_time(acquired),
            "renewTime": _micro_time(now),
            "leaseTransitions": transitions,
        }

    def _write(self, method: str, path: str, body: Dict[str, Any], started: float) -> bool:
        try:
            self.client.request(method, path, body)
        except ApiError as exc:
            if exc.status == 409:  # someone else wrote first (resourceVersion / exists)
                self._valid_until = float("-inf")
                return False
            raise
        # Counted from before the read: a standby counts from after it saw the record.
        self._valid_until = started + self.lease_seconds - RENEW_MARGIN_SECONDS
        return True
