"""VoltClient: submit, watch and manage TrainingJobs through the Kubernetes API.

It talks to the API server with the ``kubernetes`` package and the user's
kubeconfig (or the pod's service account inside a cluster), as kubectl does.
``kubernetes`` is the optional ``client`` extra (``pip install 'volt[client]'``):
the trainer image does not need it to train, and ``import volt`` never loads
this module.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Set, Union

import yaml

try:
    from kubernetes import client as k8s
    from kubernetes import config as kube_config
    from kubernetes import utils as kube_utils
    from kubernetes import watch
    from kubernetes.client.rest import ApiException
except ModuleNotFoundError as err:  # the trainer image installs volt without this extra
    raise ModuleNotFoundError(
        "volt.client needs the kubernetes package: pip install 'volt[client]'", name="kubernetes"
    ) from err

from volt.client.logs import lines_of_rank, node_of_rank, pod_name
from volt.client.results import (
    JobDescription, JobStatus, event, job_status, pod_info,
)
from volt.client.spec import JobSettings, SpecError, build_manifest, split_manifests

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "volt.dev", "v1alpha1", "trainingjobs"
LABEL_JOB = "volt.dev/job"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# A watch is re-opened this often, so that a dropped connection costs at most this long.
WATCH_SECONDS = 60


class ClientError(RuntimeError):
    """The API server refused a request or could not be reached; the message says why."""


class JobNotFound(ClientError, LookupError):
    """No TrainingJob of that name in the namespace."""


class InvalidJob(ClientError, ValueError):
    """The API server refused the TrainingJob (its message names the field)."""


def _api_message(exc: ApiException) -> str:
    try:
        body = yaml.safe_load(exc.body or "") or {}
    except yaml.YAMLError:
        body = {}
    return body.get("message") if isinstance(body, dict) and body.get("message") \
        else f"{exc.status} {exc.reason}"


def _load_config(kubeconfig: Optional[str], context: Optional[str]) -> tuple:
    """(ApiClient, default namespace) from the kubeconfig, else the pod's service account."""
    try:
        return _read_config(kubeconfig, context)
    except (kube_config.ConfigException, OSError, StopIteration) as err:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise ClientError(f"no usable kubeconfig ({where}) or in-cluster service account: "
                          f"{err or context}") from None


def _read_config(kubeconfig: Optional[str], context: Optional[str]) -> tuple:
    configuration = k8s.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]
    if Path(os.path.expanduser(path)).exists() or kubeconfig:
        kube_config.load_kube_config(config_file=kubeconfig, context=context,
                                     client_configuration=configuration)
        _, active = kube_config.list_kube_config_contexts(config_file=kubeconfig)
        if context:
            contexts, _ = kube_config.list_kube_config_contexts(config_file=kubeconfig)
            active = next(c for c in contexts if c["name"] == context)
        namespace = (active.get("context") or {}).get("namespace") or "default"
    else:
        kube_config.load_incluster_config(client_configuration=configuration)
        namespace = Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip()
    return k8s.ApiClient(configuration), namespace


def _response_lines(response: Any) -> Iterator[str]:
    """The lines of a streamed HTTP response as they arrive."""
    pending = b""
    try:
        for chunk in response.stream(None, decode_content=True):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", "replace")
        if pending:
            yield pending.decode("utf-8", "replace")
    finally:
        response.release_conn()


class VoltClient:
    """The TrainingJobs of one namespace.

        client = VoltClient(namespace="team-a")
        name = client.submit(JobSettings(command=["python", "train.py"], nodes=2, devices="2"))
        outcome = client.wait(name, timeout=3600)
        print(outcome.phase, outcome.loss)
    """

    def __init__(self, namespace: Optional[str] = None, kubeconfig: Optional[str] = None,
                 context: Optional[str] = None, api_client: Optional[Any] = None) -> None:
        if api_client is None:
            api_client, default_namespace = _load_config(kubeconfig, context)
        else:
            default_namespace = "default"
        self.api_client = api_client
        self.namespace = namespace or default_namespace
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)

    # -- the TrainingJob object --------------------------------------------------

    def _get_raw(self, name: str) -> Dict[str, Any]:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                            PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                raise JobNotFound(
                    f"trainingjob {name!r} not found in namespace {self.namespace!r}") from None
            raise ClientError(f"reading trainingjob {name!r}: {_api_message(exc)}") from None

    def submit(self, job: Union[JobSettings, Mapping[str, Any], str, Path]) -> str:
        """Create a TrainingJob; returns its name.

        ``job`` is a JobSettings, a TrainingJob manifest, or the path of a YAML
        file holding one TrainingJob and the objects it needs (a PVC...), which
        are created first (an existing one is kept).
        """
        extras: List[Dict[str, Any]] = []
        if isinstance(job, JobSettings):
            manifest = build_manifest(job)
        elif isinstance(job, (str, Path)):
            try:
                documents = list(yaml.safe_load_all(Path(job).read_text()))
            except (OSError, yaml.YAMLError) as err:
                raise SpecError(f"-f {job}: {err}") from None
            manifest, extras = split_manifests(documents, str(job))
        else:
            manifest, _ = split_manifests([dict(job)], "the manifest")
        namespace = (manifest.get("metadata") or {}).get("namespace") or self.namespace
        if namespace != self.namespace:
            raise SpecError(f"the TrainingJob names namespace {namespace!r} but the client "
                            f"uses {self.namespace!r} (--namespace)")
        for extra in extras:
            self._create_kept(extra)
        try:
            created = self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, manifest)
        except ApiException as exc:
            if exc.status in (400, 422):
                raise InvalidJob(_api_message(exc)) from None
            if exc.status == 409:
                raise ClientError(f"{_api_message(exc)}: pick another --name or "
                                  "`volt delete` it first") from None
            raise ClientError(f"creating the trainingjob: {_api_message(exc)}") from None
        return created["metadata"]["name"]

    def _create_kept(self, obj: Dict[str, Any]) -> None:
        what = f"{obj['kind'].lower()}/{(obj.get('metadata') or {}).get('name', '?')}"
        try:
            kube_utils.create_from_dict(self.api_client, obj, namespace=self.namespace)
            log.info("%s created", what)
        except kube_utils.FailToCreateError as err:
            if all(exc.status == 409 for exc in err.api_exceptions):
                log.info("%s exists, kept", what)
                return
            raise ClientError(f"creating {what}: "
                              f"{'; '.join(_api_message(e) for e in err.api_exceptions)}") from None

    def get(self, name: str) -> JobStatus:
        return job_status(self._get_raw(name))

    def list(self) -> List[JobStatus]:
        try:
            items = self.custom.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL)["items"]
        except ApiException as exc:
            if exc.status == 404:
                raise ClientError("the API server does not serve trainingjobs.volt.dev: "
                                  "install volt's CRD (the helm chart) first") from None
            raise ClientError(f"listing trainingjobs: {_api_message(exc)}") from None
        return sorted((job_status(item) for item in items), key=lambda s: s.name)

    def describe(self, name: str, events: int = 20) -> JobDescription:
        """The status, the latest ``events`` events of the job and its pods, and the pods."""
        obj = self._get_raw(name)
        pods = self._pods(name)
        about = {name} | {p["metadata"]["name"] for p in pods}
        return JobDescription(status=job_status(obj), spec=obj.get("spec") or {},
                              events=self._events(about)[-events:],
                              pods=sorted((pod_info(p) for p in pods),
                                          key=lambda p: (p.node_rank is None, p.node_rank or 0)))

    def _pods(self, name: str) -> List[Dict[str, Any]]:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{LABEL_JOB}={name}")
        return [self.api_client.sanitize_for_serialization(p) for p in pods.items]

    def _events(self, about: Set[str]) -> List[Any]:
        items = self.core.list_namespaced_event(self.namespace).items
        raw = [self.api_client.sanitize_for_serialization(e) for e in items]
        chosen = [event(e) for e in raw if (e.get("involvedObject") or {}).get("name") in about]
        return sorted(chosen, key=lambda e: e.last_seen or "")

    def delete(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                raise JobNotFound(
                    f"trainingjob {name!r} not found in namespace {self.namespace!r}") from None
            raise ClientError(f"deleting trainingjob {name!r}: {_api_message(exc)}") from None

    def suspend(self, name: str) -> None:
        """Delete the job's pods and keep the job (spec.suspend: true)."""
        self._set_suspend(name, True)

    def resume(self, name: str) -> None:
        """Start a suspended job's pods again (from its latest checkpoint with resume: Auto)."""
        self._set_suspend(name, False)

    def _set_suspend(self, name: str, value: bool) -> None:
        try:
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, {"spec": {"suspend": value}})
        except ApiException as exc:
            if exc.status == 404:
                raise JobNotFound(
                    f"trainingjob {name!r} not found in namespace {self.namespace!r}") from None
            raise ClientError(f"patching trainingjob {name!r}: {_api_message(exc)}") from None

    # -- waiting -------------------------------------------------------------------

    def wait(self, name: str, timeout: Optional[float] = None,
             on_update: Optional[Callable[[JobStatus], None]] = None) -> JobStatus:
        """Watch the job until it Succeeded or Failed; returns that status.

        Raises TimeoutError after ``timeout`` seconds and JobNotFound if the job
        is (or gets) deleted. ``on_update`` sees every status the watch delivers.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            obj = self._get_raw(name)
            status = job_status(obj)
            if on_update:
                on_update(status)
            if status.finished:
                return status
            left = WATCH_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"trainingjob {name!r} is still {status.phase or 'new'} "
                                   f"after {timeout:.0f}s")
            stream = watch.Watch()
            try:
                for change in stream.stream(
                        self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
                        PLURAL, field_selector=f"metadata.name={name}",
                        resource_version=obj["metadata"]["resourceVersion"],
                        timeout_seconds=max(1, int(min(left, WATCH_SECONDS)))):
                    if change["type"] == "DELETED":
                        raise JobNotFound(f"trainingjob {name!r} was deleted while waiting")
                    status = job_status(change["object"])
                    if on_update:
                        on_update(status)
                    if status.finished:
                        return status
            except ApiException as exc:
                if exc.status != 410:  # 410: the resourceVersion expired; read again
                    raise ClientError(f"watching trainingjob {name!r}: {_api_message(exc)}") from None
            finally:
                stream.stop()

    # -- logs ----------------------------------------------------------------------

    def layout(self, name: str) -> tuple:
        """(nodes, processes per node) as the operator gave them to the job's pods."""
        pods = self._pods(name)
        for pod in pods:
            env = {e["name"]: e.get("value") for c in pod["spec"]["containers"]
                   for e in c.get("env") or []}
            if env.get("PET_NPROC_PER_NODE") and env.get("WORLD_SIZE"):
                nproc = int(env["PET_NPROC_PER_NODE"])
                return int(env["WORLD_SIZE"]) // nproc, nproc
        self._get_raw(name)  # JobNotFound when the job itself is missing
        raise ClientError(f"trainingjob {name!r} has no pods (yet): `volt describe {name}` "
                          "says why")

    def logs(self, name: str, rank: Optional[int] = None, node: Optional[int] = None,
             follow: bool = False, previous: bool = False) -> Iterator[str]:
        """The log lines of one node's pod (node 0 by default), or of one global rank.

        ``rank`` picks the pod ``<job>-node-<rank // processes per node>`` and keeps
        that rank's lines and the node's own (launcher) lines. ``follow`` streams
        until the container ends; ``previous`` reads the container's last run.
        """
        if rank is not None and node is not None:
            raise ValueError("give --rank or --node, not both")
        if rank is not None:
            nodes, nproc = self.layout(name)
            node = node_of_rank(rank, nproc, nodes)
        pod = pod_name(name, node or 0)
        try:
            response = self.core.read_namespaced_pod_log(
                pod, self.namespace, follow=follow, previous=previous, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                self._get_raw(name)
                raise ClientError(f"pod {pod} of trainingjob {name!r} does not exist "
                                  "(not created yet, or deleted when the job ended)") from None
            raise ClientError(f"logs of {pod}: {_api_message(exc)}") from None
        lines = _response_lines(response)
        return lines_of_rank(lines, rank) if rank is not None else lines

    def follow_rank(self, name: str, rank: int = 0, timeout: float = WATCH_SECONDS) -> Iterator[str]:
        """Rank ``rank``'s lines across gang restarts: each new pod of its node is
        followed from its start until it ends; stops when the job has finished."""
        followed: Set[str] = set()
        node: Optional[int] = 0 if rank == 0 else None
        while True:
            if node is None:  # the layout is on the pods, which start together
                if self._started_pod(pod_name(name, 0), set(), timeout) is None:
                    if self.get(name).finished:
                        return
                    continue
                nodes, nproc = self.layout(name)
                node = node_of_rank(rank, nproc, nodes)
            uid = self._started_pod(pod_name(name, node), followed, timeout)
            if uid is None:
                if self.get(name).finished:
                    return
                continue
            followed.add(uid)
            try:
                response = self.core.read_namespaced_pod_log(
                    pod_name(name, node), self.namespace, follow=True, _preload_content=False)
            except ApiException:
                continue  # deleted between the watch and the read: the next pod comes
            yield from lines_of_rank(_response_lines(response), rank)

    def _started_pod(self, pod: str, skip: Set[str], timeout: float) -> Optional[str]:
        """The uid of pod ``pod`` once its container has started, unless in ``skip``;
        None when the watch ends first."""
        stream = watch.Watch()
        try:
            for change in stream.stream(self.core.list_namespaced_pod, self.namespace,
                                        field_selector=f"metadata.name={pod}",
                                        timeout_seconds=int(timeout)):
                obj = change["object"]
                statuses = obj.status.container_statuses or []
                started = any(s.state and (s.state.running or s.state.terminated)
                              for s in statuses)
                if change["type"] != "DELETED" and started and obj.metadata.uid not in skip:
                    return obj.metadata.uid
        except ApiException:
            return None
        finally:
            stream.stop()
        return None
