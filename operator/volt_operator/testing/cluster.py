"""A real Kubernetes control plane on loopback, for tests and the local demo.

Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler
(built by `make cluster` into ~/.cache/volt) the way envtest does: one
throwaway CA, TLS everywhere, RBAC, service-account tokens, an audit log.
With `runtime="agent"` (the default) `up()` also starts the node agent
(`volt_operator.testing.node_agent`), whose nodes run pods as local
processes; with `runtime="kubelet"` each node is a real kubelet with its own
containerd, plus CoreDNS and a volume provisioner (`kubelet_nodes.py`).

    with LocalCluster("/tmp/kube", nodes=2) as kube:
        kube.kubectl("get", "nodes")

or from a shell (the processes outlive the command; `down` stops them):

    python -m volt_operator.testing.cluster up --dir /tmp/kube --nodes 2 [--runtime kubelet]
    export KUBECONFIG=/tmp/kube/kubeconfig
    python -m volt_operator.testing.cluster load-image --dir /tmp/kube volt-trainer:0.1.0   # kubelet nodes
    python -m volt_operator.testing.cluster stop-kubelet --dir /tmp/kube node-1       # node-1 goes NotReady
    python -m volt_operator.testing.cluster start-kubelet --dir /tmp/kube node-1
    python -m volt_operator.testing.cluster down --dir /tmp/kube
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

from volt_operator.testing import kubelet_nodes, kueue_process, node_images
from volt_operator.testing.kubelet_nodes import RealNodes
from volt_operator.testing.pki import CertificateAuthority, KeyPair, create_signing_key

log = logging.getLogger("volt.cluster")
T = TypeVar("T")

# Defaults kept in step with scripts/build-kube.sh and the Makefile (a test checks
# it); `make` exports VOLT_KUBE_VERSION/VOLT_ETCD_VERSION when they are overridden.
KUBE_VERSION = os.environ.get("VOLT_KUBE_VERSION", "1.34.4")
ETCD_VERSION = os.environ.get("VOLT_ETCD_VERSION", "3.6.16")
COREDNS_VERSION = os.environ.get("VOLT_COREDNS_VERSION", "1.12.1")
RUNTIMES = ("agent", "kubelet")

# Service IPs are only allocated, never routed (no kube-proxy). 198.18.0.0/15 is
# set aside for network testing; pods use 198.18.0.0/16 (the node agent), services this.
SERVICE_CIDR = "198.19.0.0/16"
KUBERNETES_SERVICE_IP = "198.19.0.1"
# With real nodes the API server listens on the `kubernetes` Service's own address
# and port, so in-cluster clients reach it without kube-proxy (kubelet_nodes.API_LABEL).
KUBERNETES_SERVICE_PORT = 443
# How long a node's heartbeat may be missing before the node is NotReady (upstream: 50 s).
NODE_MONITOR_GRACE_PERIOD = "20s"
CLUSTER_DNS_IP = "198.19.0.10"
CLUSTER_DOMAIN = "cluster.local"

STATE_FILE = "cluster.json"
AGENT_MODULE = "volt_operator.testing.node_agent"
AGENT_READY_LINE = "node-agent ready"

_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
        # Node heartbeats every few seconds would drown everything else.
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}],
         "namespaces": ["kube-node-lease"]},
        {"level": "Metadata"},
    ],
}


class ClusterError(RuntimeError):
    """The local control plane could not be started, reached or stopped."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; the message carries its stderr."""

    def __str__(self) -> str:
        return f"{' '.join(map(str, self.cmd))} exited {self.returncode}: {(self.stderr or '').strip()}"


def cache_dir() -> Path:
    return Path(os.environ.get("VOLT_CACHE", str(Path.home() / ".cache" / "volt")))


def kube_bin_dir() -> Path:
    """Where kube-apiserver & co. live: $VOLT_KUBE_BIN_DIR or the versioned cache."""
    override = os.environ.get("VOLT_KUBE_BIN_DIR")
    return Path(override) if override else cache_dir() / "kube" / KUBE_VERSION / "bin"


def etcd_bin_dir() -> Path:
    override = os.environ.get("VOLT_ETCD_BIN_DIR")
    return Path(override) if override else cache_dir() / "etcd" / ETCD_VERSION / "bin"


def coredns_binary() -> Path:
    override = os.environ.get("VOLT_COREDNS_BIN")
    return Path(override) if override else cache_dir() / "coredns" / COREDNS_VERSION / "bin" / "coredns"


def pause_binary() -> Path:
    """scripts/build-kube.sh keys the pause build by the hash of its source."""
    override = os.environ.get("VOLT_PAUSE_BIN")
    if override:
        return Path(override)
    source = Path(__file__).resolve().parents[3] / "scripts" / "pause" / "pause.go"
    key = hashlib.sha256(source.read_bytes()).hexdigest()[:12] if source.is_file() else "missing-source"
    return cache_dir() / "pause" / key / "bin" / "pause"


def find_binaries() -> dict[str, Path]:
    """Paths of the five binaries; a clear error naming `make cluster` if any is missing."""
    found = {name: kube_bin_dir() / name
             for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")}
    found["etcd"] = etcd_bin_dir() / "etcd"
    missing = [str(path) for path in found.values() if not os.access(path, os.X_OK)]
    if missing:
        raise ClusterError(
            f"control-plane binaries missing: {', '.join(missing)}. Run `make cluster` "
            f"(builds Kubernetes v{KUBE_VERSION} and etcd v{ETCD_VERSION} into {cache_dir()})")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; ClusterError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except ClusterError:
            raise
        except Exception as exc:  # not up yet: connection refused, 404, ...
            last_error = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


# --- processes -------------------------------------------------------------

def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks (tells a live pid from a reused one); None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):  # exited, waiting to be reaped
        return None
    return int(fields[19])


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the Python process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Component:
    """One control-plane process: its own process group, its output in a log file."""

    name: str
    pid: int
    start_ticks: int
    log_path: Path
    popen: subprocess.Popen | None = None  # only in the process that started it

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return _start_ticks(self.pid) == self.start_ticks

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float) -> None:
        """SIGTERM the whole group, SIGKILL what is left after `grace` seconds."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        # Also catches children that outlived the leader in its group, unless
        # the pid now names an unrelated process (a stale state file).
        if self.popen is not None or _start_ticks(self.pid) in (None, self.start_ticks):
            self._signal_group(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=10)
        else:
            wait_for(lambda: not self.alive(), 10, f"{self.name} (pid {self.pid}) to exit")

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start_ticks": self.start_ticks,
                "log": str(self.log_path)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Component":
        return cls(name=data["name"], pid=int(data["pid"]), start_ticks=int(data["start_ticks"]),
                   log_path=Path(data["log"]))


def _spawn(name: str, argv: Sequence[str], log_dir: Path, *, env: Mapping[str, str] | None,
           tie_to_parent: bool) -> Component:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as out:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None, start_new_session=True,
            preexec_fn=_die_with_parent if tie_to_parent else None)
    ticks = _start_ticks(popen.pid) or 0
    return Component(name=name, pid=popen.pid, start_ticks=ticks, log_path=log_path, popen=popen)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def _agent_available() -> bool:
    """True when `python -m volt_operator.testing.node_agent` can run (it has a __main__)."""
    try:
        return importlib.util.find_spec(AGENT_MODULE + ".__main__") is not None
    except ImportError:
        return False


# --- kubeconfigs -------------------------------------------------------------

def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, ca_cert: Path, user: str, *,
                     client: KeyPair | None = None, token: str | None = None) -> Path:
    """A self-contained kubeconfig (certificates embedded) for one user; JSON is valid YAML."""
    if (client is None) == (token is None):
        raise ValueError("write_kubeconfig needs exactly one of client= or token=")
    credentials = ({"client-certificate-data": _b64(client.cert), "client-key-data": _b64(client.key)}
                   if client is not None else {"token": token})
    config = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "volt-local", "cluster": {
            "server": server, "certificate-authority-data": _b64(ca_cert)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": f"{user}@volt-local", "context": {"cluster": "volt-local", "user": user}}],
        "current-context": f"{user}@volt-local",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)
    return path


# --- the cluster -------------------------------------------------------------

class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler (+ node agent) under `dir`.

    Layout of `dir`: kubeconfig (admin, system:masters), pki/, etcd-data/,
    logs/<component>.log, audit.log, cluster.json (the pidfile `down` reads).
    `tie_to_parent` kills the processes when this Python process dies (tests);
    the CLI's `up` turns it off so the cluster outlives the command.
    """

    def __init__(self, dir: str | os.PathLike[str], *, nodes: int = 0, runtime: str = "agent",
                 agent_args: Sequence[str] = (), tie_to_parent: bool = True,
                 start_timeout: float = 120.0, kueue: bool = False) -> None:
        if nodes < 0:
            raise ValueError(f"nodes must be >= 0, got {nodes}")
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.dir = Path(dir).absolute()
        self.nodes = nodes
        self.runtime = runtime
        self.agent_args = list(agent_args)
        self.tie_to_parent = tie_to_parent
        self.start_timeout = start_timeout
        self.kueue = kueue  # also start Kueue's manager (kueue_process.py)
        self.kubeconfig = self.dir / "kubeconfig"
        self.audit_log = self.dir / "audit.log"
        self.pki = self.dir / "pki"
        self.log_dir = self.dir / "logs"
        self.server = ""
        self.node_names: list[str] = []
        self.components: list[Component] = []
        self._ssl: ssl.SSLContext | None = None
        self._load_state()
        self.real_nodes = RealNodes(self.dir, cache_dir())

    # -- lifecycle --

    def up(self) -> "LocalCluster":
        """Start everything and wait until it is ready; a running cluster in `dir` is reused."""
        if self.components and all(c.alive() for c in self.components):
            log.info("cluster in %s is already running at %s", self.dir, self.server)
            return self
        if self.components:
            log.info("cleaning up a half-dead cluster in %s", self.dir)
            self.down()
        binaries = find_binaries()
        started = time.monotonic()
        for attempt in (1, 2):
            try:
                self._start_all(binaries)
                break
            except ClusterError as exc:
                self.down()
                # Ports are picked free, then bound by another process: another
                # cluster on the machine may win the race once. Retry that only.
                if attempt == 2 or "address already in use" not in str(exc):
                    raise
                log.warning("a port was taken while starting (%s); retrying once", exc)
            except BaseException:
                self.down()
                raise
        log.info("cluster up at %s in %.1fs (kubeconfig %s)", self.server,
                 time.monotonic() - started, self.kubeconfig)
        return self

    def _start_all(self, binaries: Mapping[str, Path]) -> None:
        self._prepare_files()
        if self._serves_pods():
            self._plan_real_nodes()  # the host address the API server binds comes first
        self._start_etcd(binaries["etcd"])
        self._start_apiserver(binaries["kube-apiserver"])
        self._start_controllers(binaries["kube-controller-manager"], binaries["kube-scheduler"])
        if self.runtime == "kubelet":
            self._start_real_nodes()
        else:
            self._start_agent()
        self._wait_ready()
        if self.kueue:
            self.start_kueue()

    def down(self, purge: bool = False) -> None:
        """Stop every process (agent first, etcd last); keep logs unless `purge`.

        Real nodes: the kubelets stop first (they leave their pods running),
        then every container is removed through its containerd, then the
        containerds and the control plane stop, then the host changes are undone.
        """
        grace = {"node-agent": 30.0}
        first = [c for c in self.components if c.name.startswith("kubelet-") or c.name in ("coredns", "provisioner")]
        for component in reversed(first):
            component.stop(grace.get(component.name, 10.0))
        if self.real_nodes.nodes:
            self.real_nodes.remove_containers()
        for component in reversed(self.components):
            if component not in first:
                component.stop(grace.get(component.name, 10.0))
        self.components = []
        self.real_nodes.teardown()
        (self.dir / STATE_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.dir / "etcd-data", ignore_errors=True)
        if purge:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def status(self) -> dict[str, Any]:
        """What runs, and whether the API server answers /readyz."""
        procs = {c.name: {"pid": c.pid, "alive": c.alive(), "log": str(c.log_path)}
                 for c in self.components}
        nodes = {n.name: {"address": n.address, "pods": n.subnet, "bridge": n.bridge,
                          "kubelet_port": n.kubelet_port, "containerd": n.socket}
                 for n in self.real_nodes.nodes}
        try:
            ready = bool(self.server) and self._get_text("/readyz") == "ok"
        except (OSError, ClusterError):
            ready = False
        return {"dir": str(self.dir), "server": self.server, "kubeconfig": str(self.kubeconfig),
                "ready": ready, "runtime": self.runtime, "nodes": self.node_names,
                "real_nodes": nodes, "processes": procs}

    # -- clients --

    def env(self) -> dict[str, str]:
        """os.environ with KUBECONFIG set and our kubectl first on PATH (for subprocesses)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{kube_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 60.0, kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
        """Run the real kubectl (same release as the server) as admin, or as `kubeconfig`'s user."""
        argv = [str(kube_bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, argv, result.stdout, result.stderr)
        return result

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None,
                timeout: float = 30.0) -> dict[str, Any]:
        """One admin REST call; raises urllib.error.HTTPError (with .code) on 4xx/5xx."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              "Accept": "application/json"})
        with urllib.request.urlopen(req, context=self._admin_ssl(), timeout=timeout) as resp:
            payload = resp.read()
        return json.loads(payload) if payload else {}

    def watch(self, path: str, until: Callable[[dict[str, dict[str, Any]]], Any], timeout: float,
              what: str) -> Any:
        """Watch the list at `path` until `until(objects)` returns something truthy; that value.

        `path` is a list URL (`/api/v1/namespaces/ns/pods?labelSelector=...`), `objects` its
        current objects by name. `until` runs on the list and then on every change the API
        server sends: no polling, no change missed. An expired watch is resumed from its
        resourceVersion; one too old (410) or a dropped connection lists again.
        ClusterError after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        separator = "&" if "?" in path else "?"

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
            return remaining

        while True:
            listing = wait_for(lambda: self.request("GET", path, timeout=30), left(), f"a list of {path}")
            objects = {o["metadata"]["name"]: o for o in listing.get("items") or []}
            version = listing["metadata"]["resourceVersion"]
            result = until(objects)
            while not result and version:
                url = (f"{self.server}{path}{separator}watch=1&allowWatchBookmarks=true"
                       f"&resourceVersion={version}&timeoutSeconds={max(1, int(left()))}")
                request = urllib.request.Request(url, headers={"Accept": "application/json"})
                try:
                    with urllib.request.urlopen(request, context=self._admin_ssl(), timeout=left() + 30) as resp:
                        for line in resp:
                            event = json.loads(line)
                            obj = event["object"]
                            if event["type"] == "ERROR":  # 410 Gone: the version is too old
                                version = ""
                                break
                            version = obj["metadata"]["resourceVersion"]
                            if event["type"] == "BOOKMARK":
                                continue
                            if event["type"] == "DELETED":
                                objects.pop(obj["metadata"]["name"], None)
                            else:
                                objects[obj["metadata"]["name"]] = obj
                            result = until(objects)
                            if result:
                                break
                except (urllib.error.URLError, OSError):  # the API server went away: list again
                    version = ""
            if result:
                return result
            left()

    def user_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A kubeconfig with a client certificate for `user` in `groups` (RBAC applies to it)."""
        ca = CertificateAuthority(self.pki)
        pair = ca.issue(f"user-{user.replace(':', '_')}", user, groups)
        return write_kubeconfig(self.dir / f"user-{user.replace(':', '_')}.kubeconfig",
                                self.server, ca.cert, user, client=pair)

    def service_account_kubeconfig(self, namespace: str, name: str, *,
                                   expiration_seconds: int = 86400) -> Path:
        """A kubeconfig with a TokenRequest token: acts exactly as system:serviceaccount:<ns>:<name>."""
        review = self.request(
            "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
             "spec": {"expirationSeconds": expiration_seconds}})
        user = f"system:serviceaccount:{namespace}:{name}"
        return write_kubeconfig(self.dir / f"sa-{namespace}-{name}.kubeconfig", self.server,
                                self.pki / "ca.crt", user, token=review["status"]["token"])

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """Every event in the API server's audit log, oldest first.

        The server rotates the log by size into audit-<time>.log beside it, so the
        rotated file is read first. A last line that does not parse is one the server
        is still writing, and is left for the next read. Requests that failed
        authentication carry an empty `user`: read it with `.get`.
        """
        for path in sorted(self.audit_log.parent.glob(f"{self.audit_log.stem}*{self.audit_log.suffix}")):
            lines = path.read_text().splitlines()
            for number, line in enumerate(lines, 1):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    if number < len(lines):
                        raise

    # -- internals --

    def _prepare_files(self) -> None:
        self._ssl = None  # it trusted the previous CA
        for stale in ("etcd-data", "pki", "agent"):
            shutil.rmtree(self.dir / stale, ignore_errors=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob("*.log"):
            old.unlink()
        self.audit_log.unlink(missing_ok=True)
        ca = CertificateAuthority.create(self.pki)
        ca.issue("apiserver", "kube-apiserver", server=True, ip_addresses=["127.0.0.1", KUBERNETES_SERVICE_IP],
                 dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                            f"kubernetes.default.svc.{CLUSTER_DOMAIN}"])
        ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ["system:masters"])
        self._admin = ca.issue("admin", "volt-admin", ["system:masters"])
        self._kcm = ca.issue("controller-manager", "system:kube-controller-manager")
        self._scheduler = ca.issue("scheduler", "system:kube-scheduler")
        create_signing_key(self.pki / "sa.key", self.pki / "sa.pub")
        (self.dir / "audit-policy.json").write_text(json.dumps(_AUDIT_POLICY, indent=2))

    def _start_etcd(self, etcd: Path) -> None:
        client, peer = free_port(), free_port()
        self._etcd_url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        self._add(_spawn("etcd", [
            str(etcd), "--name=volt", f"--data-dir={self.dir / 'etcd-data'}",
            f"--listen-client-urls={self._etcd_url}", f"--advertise-client-urls={self._etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=volt={peer_url}",
            # A test cluster's data dies with it: skip fsync, keep the log quiet.
            "--unsafe-no-fsync=true", "--log-level=warn",
        ], self.log_dir, env=None, tie_to_parent=self.tie_to_parent))
        wait_for(lambda: self._alive_or_raise() and self._etcd_healthy(), 30, "etcd /health")

    def _serves_pods(self) -> bool:
        """Real nodes will run pods, which reach the API server on the Service address."""
        return self.runtime == "kubelet" and self.nodes > 0

    def _start_apiserver(self, apiserver: Path) -> None:
        if self._serves_pods():
            address, port = KUBERNETES_SERVICE_IP, KUBERNETES_SERVICE_PORT
            # The `kubernetes` Endpoints name the address pods reach, as in any cluster.
            endpoints = "--endpoint-reconciler-type=lease"
        else:
            address, port = "127.0.0.1", free_port()
            # The kubernetes Service would point at loopback, which Endpoints refuse.
            endpoints = "--endpoint-reconciler-type=none"
        self.server = f"https://{address}:{port}"
        pki = self.pki
        self._add(_spawn("kube-apiserver", [
            str(apiserver), f"--bind-address={address}", f"--advertise-address={address}",
            f"--secure-port={port}", f"--etcd-servers={self._etcd_url}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--service-account-issuer={self.server}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            # Real kubelets serve certificates from the cluster CA; the node agent's are self-signed.
            *([f"--kubelet-certificate-authority={pki / 'ca.crt'}"] if self.runtime == "kubelet" else []),
            endpoints,
            f"--audit-policy-file={self.dir / 'audit-policy.json'}",
            f"--audit-log-path={self.audit_log}", "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
            "--profiling=false",
        ], self.log_dir, env=None, tie_to_parent=self.tie_to_parent))
        write_kubeconfig(self.kubeconfig, self.server, pki / "ca.crt", "volt-admin", client=self._admin)
        wait_for(lambda: self._alive_or_raise() and self._get_text("/readyz") == "ok",
                 self.start_timeout, "kube-apiserver /readyz")

    def _start_controllers(self, kcm: Path, scheduler: Path) -> None:
        pki = self.pki
        kcm_config = write_kubeconfig(pki / "controller-manager.kubeconfig", self.server, pki / "ca.crt",
                                      "system:kube-controller-manager", client=self._kcm)
        sched_config = write_kubeconfig(pki / "scheduler.kubeconfig", self.server, pki / "ca.crt",
                                        "system:kube-scheduler", client=self._scheduler)
        self._kcm_port, self._sched_port = free_port(), free_port()
        self._add(_spawn("kube-controller-manager", [
            str(kcm), f"--kubeconfig={kcm_config}", "--bind-address=127.0.0.1",
            f"--secure-port={self._kcm_port}", "--leader-elect=false",
            # Each controller acts as its own service account, as in a real cluster.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--controllers=*",
            # Real nodes: a stopped kubelet makes its node NotReady after 20 s instead
            # of 50 s (the kubelets renew their heartbeat every 3 s, kubelet_nodes.py).
            *([f"--node-monitor-grace-period={NODE_MONITOR_GRACE_PERIOD}", "--node-monitor-period=2s"]
              if self.runtime == "kubelet" else []),
        ], self.log_dir, env=None, tie_to_parent=self.tie_to_parent))
        self._add(_spawn("kube-scheduler", [
            str(scheduler), f"--kubeconfig={sched_config}", "--bind-address=127.0.0.1",
            f"--secure-port={self._sched_port}", "--leader-elect=false",
        ], self.log_dir, env=None, tie_to_parent=self.tie_to_parent))

    def _start_agent(self) -> None:
        if self.nodes == 0:
            return
        if not _agent_available():
            log.warning("%s is not available: starting without nodes (pods will stay Pending)", AGENT_MODULE)
            return
        self.node_names = [f"node-{i}" for i in range(self.nodes)]
        env = dict(os.environ)
        # The agent must import this same volt_operator, installed or not.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["PATH"] = f"{kube_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
        self._add(_spawn("node-agent", [
            sys.executable, "-m", AGENT_MODULE, "--kubeconfig", str(self.kubeconfig),
            "--nodes", ",".join(self.node_names), "--workdir", str(self.dir / "agent"),
            "--client-ca-file", str(self.pki / "ca.crt"), *self.agent_args,
        ], self.log_dir, env=env, tie_to_parent=self.tie_to_parent))

    def _wait_ready(self) -> None:
        for name, port in (("kube-controller-manager", self._kcm_port), ("kube-scheduler", self._sched_port)):
            url = f"https://127.0.0.1:{port}/healthz"
            wait_for(lambda: self._alive_or_raise() and self._get_text(url, insecure=True) == "ok",
                     60, f"{name} /healthz")
        # The serviceaccount controller (kcm) creates `default`: pods cannot be created before it.
        wait_for(lambda: self._alive_or_raise() and self._exists("/api/v1/namespaces/default/serviceaccounts/default"),
                 60, "the default service account")
        for name, line in (("provisioner", kubelet_nodes.PROVISIONER_READY_LINE),):
            found = [c for c in self.components if c.name == name]
            if found:
                wait_for(lambda: self._alive_or_raise() and line in found[0].log_path.read_text(errors="replace"),
                         60, f"the {name}'s '{line}' line in {found[0].log_path}")
        if any(c.name == "coredns" for c in self.components):
            url = f"http://127.0.0.1:{self._coredns_ready_port}/ready"
            wait_for(lambda: self._alive_or_raise() and _http_ok(url), 90, "CoreDNS /ready")
        if self.runtime == "kubelet" and self.node_names:
            wait_for(lambda: self._alive_or_raise() and all(self._node_ready(n) for n in self.node_names),
                     180, "the kubelets' nodes to be Ready")
        if any(c.name == "node-agent" for c in self.components):
            agent = next(c for c in self.components if c.name == "node-agent")
            wait_for(lambda: self._alive_or_raise() and AGENT_READY_LINE in agent.log_path.read_text(errors="replace"),
                     90, f"the node agent's '{AGENT_READY_LINE}' line in {agent.log_path}")
            wait_for(lambda: all(self._node_ready(n) for n in self.node_names), 60, "nodes to be Ready")

    def start_kueue(self, pods_ready_timeout: int | None = None) -> Component:
        """Kueue's CRDs, then its manager as admin (docs/local-cluster.md, "Kueue"); also
        on a running cluster (a no-op if it runs). Its Component: ``stop()`` stops Kueue alone.
        ``pods_ready_timeout``: with waitForPodsReady (stop a running manager first)."""
        running = next((c for c in self.components if c.name == "kueue" and c.alive()), None)
        if running is not None:
            return running
        kueue_process.install_crds(self.kubectl, kueue_process.find_kueue()[1])
        launch = kueue_process.prepare(self.dir / "kueue", CertificateAuthority(self.pki),
                                       self.user_kubeconfig("kueue-manager", ["system:masters"]), free_port,
                                       pods_ready_timeout)
        manager = _spawn("kueue", launch.argv, self.log_dir, env=launch.env, tie_to_parent=self.tie_to_parent)
        self._add(manager)
        wait_for(lambda: self._alive_or_raise() and _http_ok(launch.ready_url), 90, f"Kueue {launch.ready_url}")
        return manager

    def _plan_real_nodes(self) -> None:
        """The machine-wide lock, the nodes' bridges and the host addresses (see kubelet_nodes.py)."""
        kubelet_nodes.check_prerequisites(kube_bin_dir(), coredns_binary(), pause_binary())
        self.node_names = [f"node-{i}" for i in range(self.nodes)]
        self.real_nodes.plan(self.node_names, CLUSTER_DNS_IP, KUBERNETES_SERVICE_IP, free_port)
        self.real_nodes.prepare_host()

    def _start_real_nodes(self) -> None:
        """containerd + kubelet per node, CoreDNS and the provisioner (see kubelet_nodes.py)."""
        if self.nodes == 0:
            return
        nodes = self.real_nodes
        layouts = nodes.nodes
        ca = CertificateAuthority(self.pki)
        nodes.write_node_files(self.pki, self.server, CLUSTER_DOMAIN, write_kubeconfig, ca)
        for node in layouts:
            self._add(_spawn(f"containerd-{node.name}", [
                "containerd", "--config", f"{node.dir}/containerd/config.toml", "--log-level", "warn",
            ], self.log_dir, env=None, tie_to_parent=self.tie_to_parent))
        for node in layouts:
            wait_for(lambda: self._alive_or_raise() and kubelet_nodes.ctr(node, "version", check=False,
                                                                           timeout=10).returncode == 0,
                     60, f"containerd of {node.name} on {node.socket}")
        pause = pause_binary()
        archive = kubelet_nodes.pause_image_archive(pause)
        pause_id = hashlib.sha256(pause.read_bytes()).hexdigest()
        for node in layouts:
            nodes.load_image_archive(node, archive, kubelet_nodes.PAUSE_IMAGE, pause_id)
        self._start_coredns(ca)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self._add(_spawn("provisioner", [
            sys.executable, "-u", "-m", "volt_operator.testing.node_agent.provisioner",
            "--kubeconfig", str(self.kubeconfig), "--root", str(self.dir / "pv"), "--owner", nodes.id,
        ], self.log_dir, env=env, tie_to_parent=self.tie_to_parent))
        for node in layouts:
            self._add(self._spawn_kubelet(node, self.tie_to_parent))

    def _spawn_kubelet(self, node: kubelet_nodes.NodeLayout, tie_to_parent: bool) -> Component:
        return _spawn(f"kubelet-{node.name}", kubelet_nodes.kubelet_argv(kube_bin_dir() / "kubelet", node),
                      self.log_dir, env=None, tie_to_parent=tie_to_parent)

    def _real_node(self, name: str) -> kubelet_nodes.NodeLayout:
        for node in self.real_nodes.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.real_nodes.nodes) or "none: the cluster has no real nodes"
        raise ClusterError(f"no real node {name!r} (real nodes: {known})")

    def stop_kubelet(self, name: str, grace: float = 10.0) -> None:
        """Stop node `name`'s kubelet (SIGTERM) as a node failure would: its containers keep running.

        Without heartbeats the node turns NotReady after the controller-manager's
        --node-monitor-grace-period (20 s here); what then happens to its pods is the
        cluster's business (taints, their tolerations, force deletion). No-op if stopped.
        """
        self._real_node(name)
        for component in [c for c in self.components if c.name == f"kubelet-{name}"]:
            component.stop(grace)
            self.components.remove(component)
        self._save_state()

    def start_kubelet(self, name: str, timeout: float = 180.0) -> None:
        """Start node `name`'s kubelet again (same flags, root dir and certificates); wait until the node is Ready."""
        node = self._real_node(name)
        if not any(c.name == f"kubelet-{name}" and c.alive() for c in self.components):
            self.components = [c for c in self.components if c.name != f"kubelet-{name}"]
            # Tie it to this process only if the rest of the cluster is (a CLI-started cluster outlives us).
            tie = self.tie_to_parent and any(c.popen is not None for c in self.components)
            self._add(self._spawn_kubelet(node, tie))
        wait_for(lambda: self._alive_or_raise() and self._node_ready(name), timeout, f"node {name} to be Ready")

    def _start_coredns(self, ca: CertificateAuthority) -> None:
        pair = ca.issue("coredns", kubelet_nodes.COREDNS_USER)
        kubeconfig = write_kubeconfig(self.pki / "coredns.kubeconfig", self.server, self.pki / "ca.crt",
                                      kubelet_nodes.COREDNS_USER, client=pair)
        for obj in kubelet_nodes.coredns_objects(CLUSTER_DNS_IP):
            self.kubectl("apply", "-f", "-", input=json.dumps(obj))
        health, self._coredns_ready_port = free_port(), free_port()
        corefile = self.dir / "Corefile"
        corefile.write_text(kubelet_nodes.corefile(CLUSTER_DNS_IP, CLUSTER_DOMAIN, kubeconfig, health,
                                                   self._coredns_ready_port))
        self._add(_spawn("coredns", [str(coredns_binary()), "-conf", str(corefile)], self.log_dir,
                         env=None, tie_to_parent=self.tie_to_parent))

    def load_image(self, image: str, docker: str = "docker", env: Mapping[str, str] | None = None) -> list[str]:
        """Copy a docker image into every real node's containerd; returns the nodes it was imported into.

        A node that already holds this image id is skipped. `docker save` is read once, and
        each node is sent only the layers it lacks (`node_images`); the nodes for which that
        fails get the whole archive (`RealNodes.import_stream`). Every node is left with this version
        only of the image's repository (`RealNodes.prune_images`): the stores outlive `down`,
        and a trainer image is gigabytes.
        """
        if not self.real_nodes.nodes:
            raise ClusterError("load_image needs a running cluster with --runtime kubelet nodes")
        docker_env = dict(env if env is not None else os.environ)
        inspect = subprocess.run([docker, "image", "inspect", "--format", "{{.Id}} {{json .RootFS.Layers}}", image],
                                 capture_output=True, text=True, env=docker_env, timeout=60)
        if inspect.returncode != 0:
            raise ClusterError(f"docker has no image {image}: {inspect.stderr.strip()}")
        image_id, layers_json = inspect.stdout.strip().split(" ", 1)
        nodes = self.real_nodes
        stale = [n for n in nodes.nodes if not nodes.has_image(n, image, image_id)]
        for node in nodes.nodes:
            if node not in stale:
                nodes.prune_images(node, [image])
        if not stale:
            return []
        diff_ids = json.loads(layers_json)
        held = {node.name: nodes.held_layers(node, diff_ids) for node in stale}
        skip = node_images.skip_sizes(diff_ids, set.intersection(*held.values()),
                                      nodes.layer_sizes(stale))
        workdir = self.dir / "image-layers"
        try:
            saved = self._docker_save(image, docker, docker_env,
                                      lambda archive: node_images.split_saved_image(archive, workdir, skip))
            if saved.image_id != image_id:
                raise ClusterError(f"docker save {image} gave image {saved.image_id}, not {image_id}")

            def import_missing(node: kubelet_nodes.NodeLayout) -> bool:
                lacking = [d for d in saved.diff_ids if d not in held[node.name]]
                try:
                    if any(d not in saved.kept for d in lacking):
                        raise kubelet_nodes.NodeSetupError("a layer it lacks was not kept: its size matched a held one")
                    nodes.import_layers(node, saved, image, lacking)
                    return True
                except kubelet_nodes.NodeSetupError as exc:
                    log.warning("%s: importing only the missing layers of %s failed (%s); importing all of it",
                                node.name, image, exc)
                    return False

            # Each node has its own containerd: their imports (hashing and unpacking gigabytes) overlap.
            with ThreadPoolExecutor(max_workers=len(stale), thread_name_prefix="load-image") as pool:
                whole = [node for node, done in zip(stale, pool.map(import_missing, stale)) if not done]
        finally:
            node_images.remove(workdir)
        if whole:
            self._docker_save(image, docker, docker_env,
                              lambda archive: nodes.import_stream(whole, archive, image, image_id))
            for node in whole:
                nodes.record_layer_sizes(node, saved.sizes)
        return [n.name for n in stale]

    @staticmethod
    def _docker_save(image: str, docker: str, env: Mapping[str, str], read: Callable[[Any], T]) -> T:
        """`read(stream)` of `docker save image`'s archive; a failure of either names both."""
        with tempfile.TemporaryFile() as save_errors:
            save = subprocess.Popen([docker, "save", image], stdout=subprocess.PIPE, stderr=save_errors, env=env)

            def why() -> str:
                save_errors.seek(0)
                return save_errors.read().decode(errors="replace").strip()

            try:
                result = read(save.stdout)
                # A tar reader stops at the end-of-archive blocks; docker may still be writing
                # the padding after them, and a closed pipe would fail the save.
                while save.stdout.read(1 << 20):  # type: ignore[union-attr]
                    pass
            except (kubelet_nodes.NodeSetupError, ValueError, tarfile.TarError) as exc:
                save.kill()
                save.wait()
                raise ClusterError(f"{exc}" + (f"; docker save {image}: {why()}" if why() else "")) from None
            finally:
                save.stdout.close()  # type: ignore[union-attr]
            if save.wait(timeout=60) != 0:
                raise ClusterError(f"docker save {image} failed: {why()}")
            return result

    def _add(self, component: Component) -> None:
        self.components.append(component)
        # Saved at every start, so `down` finds whatever a killed `up` left running.
        self._save_state()

    def _alive_or_raise(self) -> bool:
        for component in self.components:
            if not component.alive():
                raise ClusterError(f"{component.name} exited during startup; last lines of "
                                   f"{component.log_path}:\n{component.log_tail()}")
        return True

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(self._etcd_url + "/health", timeout=2) as resp:
            return json.loads(resp.read()).get("health") == "true"

    def _admin_ssl(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
            self._ssl = ctx
        return self._ssl

    def _get_text(self, path_or_url: str, insecure: bool = False) -> str:
        url = path_or_url if path_or_url.startswith("https://") else self.server + path_or_url
        if insecure:  # kcm/scheduler serve /healthz with a self-signed certificate
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = self._admin_ssl()
        with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
            return resp.read().decode().strip()

    def _exists(self, path: str) -> bool:
        try:
            self.request("GET", path, timeout=5)
            return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise

    def _node_ready(self, name: str) -> bool:
        node = self.request("GET", f"/api/v1/nodes/{name}", timeout=5)
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in node.get("status", {}).get("conditions", []))

    def _save_state(self) -> None:
        state = {"server": self.server, "nodes": self.node_names, "runtime": self.runtime,
                 "components": [c.to_json() for c in self.components]}
        (self.dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _load_state(self) -> None:
        path = self.dir / STATE_FILE
        if not path.is_file():
            return
        try:
            state = json.loads(path.read_text())
            self.server = state["server"]
            self.node_names = list(state.get("nodes", []))
            self.runtime = state.get("runtime", self.runtime)
            self.components = [Component.from_json(c) for c in state["components"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"{path} is not a valid cluster state file: {exc}") from exc


# --- command line ------------------------------------------------------------

def _default_dir() -> Path:
    return cache_dir() / "local-cluster"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m volt_operator.testing.cluster",
                                     description="A local Kubernetes control plane (etcd, apiserver, "
                                                 "controller-manager, scheduler, node agent).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("up", "start (or reuse) the cluster"), ("down", "stop every process"),
                       ("status", "show processes and readiness as JSON"),
                       ("load-image", "copy docker images into every real node's containerd"),
                       ("stop-kubelet", "stop a real node's kubelet (the node turns NotReady)"),
                       ("start-kubelet", "start a real node's kubelet again and wait until it is Ready")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--dir", type=Path, default=_default_dir(),
                         help=f"state directory (default {_default_dir()})")
        if name == "up":
            cmd.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
            cmd.add_argument("--runtime", choices=RUNTIMES, default="agent",
                             help="agent: the node agent runs pods as local processes (default); "
                                  "kubelet: real kubelet + containerd nodes running the images")
            cmd.add_argument("--kueue", action="store_true", help="also start Kueue (make kueue builds it)")
        if name in ("stop-kubelet", "start-kubelet"):
            cmd.add_argument("node", help="the node's name, e.g. node-1")
        if name == "load-image":
            cmd.add_argument("images", nargs="+", help="docker image references, e.g. volt-trainer:0.1.0")
        if name == "down":
            cmd.add_argument("--purge", action="store_true", help="also delete the directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "up":
            if args.nodes < 0:
                parser.error(f"--nodes must be >= 0, got {args.nodes}")
            cluster = LocalCluster(args.dir, nodes=args.nodes, runtime=args.runtime, tie_to_parent=False,
                                   kueue=args.kueue).up()
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        elif args.command == "load-image":
            cluster = LocalCluster(args.dir)
            docker = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
            for image in args.images:
                done = cluster.load_image(image, docker=os.environ.get("DOCKER", docker))
                print(f"{image}: imported into {', '.join(done) or 'no node (all up to date)'}")
        elif args.command == "stop-kubelet":
            LocalCluster(args.dir).stop_kubelet(args.node)
            print(f"kubelet of {args.node} stopped (its containers keep running)")
        elif args.command == "start-kubelet":
            LocalCluster(args.dir, tie_to_parent=False).start_kubelet(args.node)
            print(f"{args.node} is Ready")
        elif args.command == "down":
            LocalCluster(args.dir).down(purge=args.purge)
            print(f"cluster in {args.dir} stopped")
        else:
            status = LocalCluster(args.dir).status()
            print(json.dumps(status, indent=2))
            return 0 if status["ready"] else 1
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
