"""A small synchronous Kubernetes REST client: JSON dicts in, JSON dicts out.

The operator needs a handful of calls (get/list/create/patch/delete of
TrainingJobs, pods, services and events). Doing them as plain REST keeps the
children exactly the dicts the pure builders produced, with no model
round-trip. Credentials and TLS come from the official client's loaders
(in-cluster service account or kubeconfig), so token rotation works as usual.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote, urlencode

import urllib3
from kubernetes import config as kube_config
from kubernetes.client import Configuration
from kubernetes.client.rest import RESTClientObject

from .api import GROUP, PLURAL, VERSION
from .cache import resource_version

REQUEST_TIMEOUT_SECONDS = 15.0
# The reconciler's requests in the API server's audit log (kopf's watches say kopf/<version>).
USER_AGENT = "volt-operator"


class ApiError(Exception):
    """A non-2xx answer from the API server."""

    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.body = body
        self.message = str(body.get("message") if isinstance(body, dict) else body)
        self.reason = body.get("reason") if isinstance(body, dict) else None
        super().__init__(f"{method} {path}: {status} {self.message}")

    @property
    def forbidden(self) -> bool:
        """RBAC (or an admission plugin) does not let the caller do this."""
        return self.status == 403

    @property
    def action(self) -> str:
        """What was asked, in words: 'delete pods/x in namespace ns'."""
        return describe_request(self.method, self.path)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def refused(self) -> bool:
        """The object itself is invalid (400/422): sending it again cannot succeed."""
        return self.status in (400, 422)


_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


class ApiUnreachable(Exception):
    """No answer from the API server: connection refused or reset, a timeout."""


def describe_request(method: str, path: str) -> str:
    """A request in RBAC's words: DELETE /apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads/w
    is 'delete workloads.kueue.x-k8s.io/w in namespace ns'."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return f"{method} {path}"  # not a resource (/version, /healthz)
    namespace = None
    if len(rest) > 2 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest:
        return f"{method} {path}"
    resource = rest[0] + (f".{group}" if group else "")
    described = f"{_VERBS.get(method, method.lower())} {'/'.join([resource] + rest[1:])}"
    return f"{described} in namespace {namespace}" if namespace else described


def load_configuration() -> Configuration:
    """In-cluster credentials when running in a pod, else $KUBECONFIG/~/.kube/config."""
    configuration = Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException:
        kube_config.load_kube_config(client_configuration=configuration)
    return configuration


# Connections kept open to the API server: one per thread that may call at once (kopf's
# 16 workers, the work queue's 16, the reconciler's 16 pod creators, the progress
# poller, the Lease elector). The client's default (5 per CPU) made a busy operator
# open and drop connections.
CONNECTION_POOL_SIZE = 64


class KubeClient:
    def __init__(self, configuration: Optional[Configuration] = None) -> None:
        # A copy: the pool size below is this client's, not the caller's configuration's.
        self.configuration = copy.deepcopy(configuration) if configuration else load_configuration()
        self.configuration.connection_pool_maxsize = max(
            self.configuration.connection_pool_maxsize or 0, CONNECTION_POOL_SIZE)
        self._rest = RESTClientObject(self.configuration)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Optional[Dict[str, str]] = None,
        content_type: str = "application/json",
    ) -> Any:
        url = self.configuration.host.rstrip("/") + path
        if query:
            url += "?" + urlencode(query)
        headers = {"Accept": "application/json", "Content-Type": content_type,
                   "User-Agent": USER_AGENT}
        token = self.configuration.get_api_key_with_prefix("authorization", "BearerToken")
        if token:
            headers["Authorization"] = token
        data = json.dumps(body).encode() if body is not None else None
        try:
            response = self._rest.pool_manager.request(
                method, url, body=data, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS,
                preload_content=True,
            )
        except urllib3.exceptions.HTTPError as exc:
            raise ApiUnreachable(f"{method} {path}: no answer from the API server: {exc}") from exc
        payload: Any = None
        if response.data:
            try:
                payload = json.loads(response.data)
            except ValueError:
                payload = response.data.decode(errors="replace")
        if response.status >= 300:
            raise ApiError(response.status, method, path, payload)
        return payload

    # -- paths -------------------------------------------------------------

    @staticmethod
    def job_path(namespace: str, name: str = "", sub: str = "") -> str:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}"
        if name:
            path += f"/{quote(name)}"
        if sub:
            path += f"/{sub}"
        return path

    @staticmethod
    def core_path(namespace: str, kind: str, name: str = "") -> str:
        path = f"/api/v1/namespaces/{quote(namespace)}/{kind}"
        return f"{path}/{quote(name)}" if name else path

    # -- calls the operator makes ------------------------------------------

    def get_job(self, namespace: str, name: str) -> Optional[Dict[str, Any]]:
        try:
            return self.request("GET", self.job_path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def list_jobs(self, namespace: Optional[str] = None) -> Tuple[List[Dict[str, Any]], int]:
        """TrainingJobs in one namespace, or in all of them, and the list's resourceVersion."""
        if namespace:
            path = self.job_path(namespace)
        else:
            path = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
        body = self.request("GET", path)
        return list(body.get("items") or []), resource_version(body)

    def patch_job_status(self, namespace: str, name: str, patch: Dict[str, Any]) -> Any:
        return self.request(
            "PATCH", self.job_path(namespace, name, "status"), patch,
            content_type="application/merge-patch+json",
        )

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            self.request(
                "DELETE", self.job_path(namespace, name),
                {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if not exc.not_found:
                raise

    def list_pods(self, namespace: Optional[str], selector: str) -> Tuple[List[Dict[str, Any]], int]:
        """The pods matching ``selector`` in one namespace (None: all of them) and the list's
        resourceVersion (-1 if none)."""
        return self.list_core(namespace, "pods", selector)

    def list_core(self, namespace: Optional[str], kind: str,
                  selector: str) -> Tuple[List[Dict[str, Any]], int]:
        """Core objects of ``kind`` (plural) matching ``selector`` in one namespace (None: all
        of them) and the list's resourceVersion (-1 if none)."""
        path = self.core_path(namespace, kind) if namespace else f"/api/v1/{kind}"
        body = self.request("GET", path, query={"labelSelector": selector})
        return list(body.get("items") or []), resource_version(body)

    def create(self, namespace: str, kind: str, body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Create a core object: the object created, None when it already exists (idempotent)."""
        return self._create(self.core_path(namespace, kind), body)

    def create_network_policy(self, namespace: str, body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Create a job's NetworkPolicy; None when it already exists."""
        return self._create(
            f"/apis/networking.k8s.io/v1/namespaces/{quote(namespace)}/networkpolicies", body)

    def _create(self, path: str, body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        try:
            return self.request("POST", path, body) or {}
        except ApiError as exc:
            if exc.already_exists:
                return None
            raise

    def delete_pod(
        self, namespace: str, name: str, grace_seconds: Optional[int] = None,
        uid: Optional[str] = None,
    ) -> Optional[Dict[str, Any]]:
        """Delete a pod; ``grace_seconds=0`` force-deletes it (no wait for its kubelet).
        With ``uid``, only that pod: a newer pod that took the name stays (409, as gone).

        Returns the API server's answer: the pod, marked for deletion, or None if it was gone."""
        body: Optional[Dict[str, Any]] = None
        if grace_seconds is not None or uid:
            body = {"kind": "DeleteOptions", "apiVersion": "v1"}
            if grace_seconds is not None:
                body["gracePeriodSeconds"] = grace_seconds
            if uid:
                body["preconditions"] = {"uid": uid}
        try:
            return self.request("DELETE", self.core_path(namespace, "pods", name), body)
        except ApiError as exc:
            if exc.not_found or (uid and exc.conflict):
                return None
            raise
