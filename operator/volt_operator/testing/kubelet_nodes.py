"""Real Kubernetes nodes on this machine: one containerd and one kubelet per node.

`LocalCluster(..., runtime="kubelet")` uses this module. Each node gets:

- its own containerd (Debian's, from `make node-runtime`) with a private
  config, root, state, sockets, CNI config and stream-server port;
- its own kubelet (built by `make cluster`) with its own root dir, hostname,
  cgroup root, ports, pod-log dir, client certificate (`system:node:<name>`)
  and serving certificate from the cluster CA;
- its own Linux bridge holding the `.1` of its pod /24 (the node's
  InternalIP): Debian's `bridge` + `host-local` CNI plugins attach pods to it,
  and the host routes between the bridges, so pods on different nodes reach
  each other by IP.

Shared by the nodes: CoreDNS (built by `make cluster`) on the host, listening
on the cluster DNS address (added to the host's loopback interface) and serving
`cluster.local` from the API; the API server's in-cluster address (the
`kubernetes` Service's ClusterIP, also on the loopback interface, where the API
server listens on port 443), so that pods reach the API as in any cluster; and
the hostPath volume provisioner.

Everything this module changes on the host is listed in `<dir>/nodes/host.json`
before it is changed, so `teardown()` undoes it from any process, even after
a crash. Only one such cluster runs on a machine at a time (`OWNER_FILE`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Callable, Collection, Iterable, Sequence

from volt_operator.testing import node_images
from volt_operator.testing.node_agent.network import LOCK_FILE as SUBNET_LOCK
from volt_operator.testing.node_agent.network import addresses_in_use, choose_subnet
from volt_operator.testing.node_agent.provisioner import READY_LINE as PROVISIONER_READY_LINE

log = logging.getLogger("volt.cluster.nodes")

# Node state (configs, sockets, kubelet root, pod logs): short paths, see plan().
NODES_ROOT = "/var/lib/volt-nodes"
CNI_BIN_DIR = Path(os.environ.get("VOLT_CNI_BIN_DIR", "/usr/lib/cni"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Names the one cluster directory whose real nodes own this machine's host changes.
OWNER_FILE = Path("/run/volt-kubelet-nodes.json")
PAUSE_IMAGE = "volt.local/pause:1"
# Cluster DNS: an address inside the Service range, added to the host's
# loopback interface (labelled, so it is recognisable) where CoreDNS listens:
# pods reach it through their gateway. There is no kube-proxy to route a ClusterIP.
DNS_LABEL = "lo:volt-dns"
# The API server listens on the `kubernetes` Service's ClusterIP and port (443) too,
# on the loopback interface: in-cluster clients (KUBERNETES_SERVICE_HOST/PORT,
# which the kubelet sets from that Service) reach it through their gateway.
API_LABEL = "lo:volt-api"
# kubelet's iptables chains (it makes them on start and never removes them).
KUBELET_CHAINS = {"filter": ["KUBE-FIREWALL", "KUBE-KUBELET-CANARY"],
                  "mangle": ["KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"],
                  "nat": ["KUBE-KUBELET-CANARY", "KUBE-MARK-DROP", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"]}


class NodeSetupError(RuntimeError):
    """A host prerequisite is missing or a host change failed."""


def run(*argv: str, check: bool = True, input: bytes | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(argv, capture_output=True, input=input, timeout=timeout)
    if check and result.returncode != 0:
        raise NodeSetupError(f"{' '.join(argv)} failed ({result.returncode}): "
                             f"{result.stderr.decode(errors='replace').strip()}")
    return result


def check_prerequisites(kube_bin: Path, coredns: Path, pause: Path) -> None:
    """Root, the Debian packages and the built binaries; one error naming every missing piece."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (kubelet and containerd need it)")
    for tool in ("containerd", "runc", "ctr", "ip", "iptables"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (run `make node-runtime`)")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN_DIR / plugin).exists():
            missing.append(f"{CNI_BIN_DIR / plugin} (run `make node-runtime`)")
    for binary in (kube_bin / "kubelet", coredns, pause):
        if not os.access(binary, os.X_OK):
            missing.append(f"{binary} (run `make cluster`)")
    if not (CGROUP_ROOT / "memory").is_dir() and not (CGROUP_ROOT / "cgroup.controllers").is_file():
        missing.append(f"a cgroup hierarchy under {CGROUP_ROOT}")
    if missing:
        raise NodeSetupError("real nodes need: " + "; ".join(missing))


# --- layout ----------------------------------------------------------------

@dataclass
class NodeLayout:
    """Everything that names one node's resources (saved in host.json for teardown)."""

    name: str
    dir: str
    subnet: str
    bridge: str
    cgroup_root: str
    kubelet_port: int
    healthz_port: int
    stream_port: int
    containerd_root: str

    @property
    def address(self) -> str:
        """The bridge's .1: pods' gateway and the node's InternalIP."""
        return str(next(ipaddress.IPv4Network(self.subnet).hosts()))

    @property
    def socket(self) -> str:
        return f"{self.dir}/containerd.sock"

    @property
    def kubelet_root(self) -> str:
        return f"{self.dir}/kubelet"

    @property
    def pod_logs(self) -> str:
        return f"{self.dir}/pod-logs"


def cluster_id(directory: Path) -> str:
    return hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:6]


def containerd_config(node: NodeLayout) -> str:
    """containerd 1.6 config (version 2): everything private to the node except the shim socket dir."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{node.containerd_root}"
state = "{node.dir}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{node.socket}"

[ttrpc]
  address = "{node.socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{node.dir}/containerd/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "{node.stream_port}"
  netns_mounts_under_state_dir = true
  # The VM drops CAP_SYS_RESOURCE even for root: runc may only raise oom_score_adj.
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node.dir}/cni"
    max_conf_num = 1
"""


def cni_config(node: NodeLayout) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0", "name": f"volt-{node.name}",
        "plugins": [{
            "type": "bridge", "bridge": node.bridge, "isGateway": True, "ipMasq": False,
            "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": f"{node.dir}/ipam",
                     "ranges": [[{"subnet": node.subnet, "gateway": node.address}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    }


def kubelet_config(node: NodeLayout, pki: Path, dns_ip: str, cluster_domain: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": node.address, "port": node.kubelet_port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": node.healthz_port,
        "tlsCertFile": str(pki / f"kubelet-{node.name}-serving.crt"),
        "tlsPrivateKeyFile": str(pki / f"kubelet-{node.name}-serving.key"),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        "cgroupDriver": "cgroupfs", "cgroupRoot": node.cgroup_root,
        # This VM kind mounts cgroup v1; 1.34 still runs there when told so explicitly.
        "failCgroupV1": False, "failSwapOn": False,
        "clusterDNS": [dns_ip], "clusterDomain": cluster_domain,
        "podLogsDir": node.pod_logs,  # /var/log/pods would be shared (and garbage-collected) by every kubelet
        "resolvConf": "/etc/resolv.conf",
        # Every node sees the same disk: the defaults (10-15 % free) would evict pods
        # on a busy development machine, and image GC would delete the loaded images.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "maxPods": 110,
        "nodeStatusReportFrequency": "10s", "nodeStatusUpdateFrequency": "5s",
        # The node's heartbeat: its Lease is renewed every quarter of this (3 s), well
        # inside the controller-manager's shortened --node-monitor-grace-period (20 s).
        "nodeLeaseDurationSeconds": 12,
        "syncFrequency": "10s", "fileCheckFrequency": "20s",
        "shutdownGracePeriod": "0s", "rotateCertificates": False, "serverTLSBootstrap": False,
        # The KUBE-IPTABLES-HINT chain is a hint for kube-proxy, which this cluster does not run.
        "makeIPTablesUtilChains": False,
    }


def kubelet_argv(kubelet: Path, node: NodeLayout) -> list[str]:
    return [str(kubelet), f"--config={node.dir}/kubelet-config.json",
            f"--kubeconfig={node.dir}/kubelet.kubeconfig", f"--root-dir={node.kubelet_root}",
            f"--cert-dir={node.dir}/kubelet-pki", f"--hostname-override={node.name}",
            f"--node-ip={node.address}", "--v=1"]


COREDNS_USER = "volt:coredns"


def corefile(dns_ip: str, domain: str, kubeconfig: Path, health_port: int, ready_port: int) -> str:
    """CoreDNS as kubeadm configures it, reading the API with its own client certificate."""
    return f""".:53 {{
    bind {dns_ip}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {domain} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    forward . /etc/resolv.conf
    cache 5
}}
"""


def coredns_objects(dns_ip: str) -> list[dict[str, Any]]:
    """What CoreDNS's kubernetes plugin reads (the rules of kubeadm's system:coredns role)."""
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "volt:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "volt:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "volt:coredns"},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": COREDNS_USER}]},
        # Reserves the address in the Service range, as kube-dns does in any cluster.
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": "kube-system",
                      "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
         "spec": {"clusterIP": dns_ip, "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                                                       {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}},
    ]


# --- the pause image ---------------------------------------------------------

def pause_image_archive(pause_binary: Path) -> bytes:
    """A docker-archive tar (what `docker save` writes) holding only the pause program."""
    def tar_bytes(members: Iterable[tuple[str, bytes, int]]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data, mode in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), mode, 0
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    layer = tar_bytes([("pause", pause_binary.read_bytes(), 0o755)])
    layer_digest = hashlib.sha256(layer).hexdigest()
    image_config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "volt: scripts/pause/pause.go"}],
    }, sort_keys=True).encode()
    config_digest = hashlib.sha256(image_config).hexdigest()
    manifest = json.dumps([{"Config": f"{config_digest}.json", "RepoTags": [PAUSE_IMAGE],
                            "Layers": [f"{layer_digest}/layer.tar"]}]).encode()
    return tar_bytes([(f"{layer_digest}/layer.tar", layer, 0o644), (f"{config_digest}.json", image_config, 0o644),
                      ("manifest.json", manifest, 0o644)])


def normalize_ref(ref: str) -> str:
    """The name containerd gives an image reference (`volt-trainer:1` -> `docker.io/library/volt-trainer:1`)."""
    first, _, rest = ref.partition("/")
    if not rest:
        return f"docker.io/library/{ref}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{ref}"
    return ref


def repository(ref: str) -> str:
    """A normalized reference without its tag or digest (`docker.io/library/volt-trainer:e2e` -> `...volt-trainer`)."""
    name = ref.split("@", 1)[0]
    colon = name.rfind(":")
    return name[:colon] if colon > name.rfind("/") else name


def stale_image_refs(images: Sequence[tuple[str, str]], loaded: Iterable[str], in_use: Iterable[str]) -> list[str]:
    """The references to delete so that a node's store holds one version of each loaded repository.

    `images` are (reference, manifest digest) pairs as containerd lists them, `loaded` the
    normalized references just imported, `in_use` the references containers were made from.
    Deleted: another tag of a loaded repository that names other content, and every
    `sha256:<image id>` reference (the CRI plugin adds one per image) whose content no kept
    name points at: what a tag moved to a rebuilt image leaves behind. Never what a
    container uses. containerd then collects the unreferenced layers and snapshots.
    """
    loaded, in_use = set(loaded), set(in_use)
    digest_of = dict(images)
    loaded_repos = {repository(ref) for ref in loaded}
    loaded_digests = {digest_of[ref] for ref in loaded if ref in digest_of}
    used_digests = {digest_of[ref] for ref in in_use if ref in digest_of}
    kept_digests = set(used_digests)
    stale = []
    for ref, digest in images:
        if ref.startswith("sha256:"):
            continue
        if (ref in loaded or repository(ref) not in loaded_repos
                or digest in loaded_digests or digest in used_digests):
            kept_digests.add(digest)
        else:
            stale.append(ref)
    stale += [ref for ref, digest in images
              if ref.startswith("sha256:") and digest not in kept_digests and ref not in in_use]
    return stale


def ctr_argv(node: NodeLayout, *args: str) -> list[str]:
    """`ctr` against the node's containerd, in the CRI's namespace (the images kubelet sees)."""
    return ["ctr", "--address", node.socket, "--namespace", "k8s.io", *args]


def ctr(node: NodeLayout, *args: str, input: bytes | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return run(*ctr_argv(node, *args), input=input, timeout=timeout, check=check)


# --- host changes ------------------------------------------------------------

def _cgroup_hierarchies() -> list[Path]:
    """Every mounted hierarchy under /sys/fs/cgroup (v1 controllers, name=systemd, unified)."""
    if (CGROUP_ROOT / "cgroup.controllers").is_file():  # pure cgroup v2
        return [CGROUP_ROOT]
    return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()
                  and (p / "cgroup.procs").exists())


def create_cgroup_root(name: str) -> None:
    """kubelet refuses a cgroupRoot missing from any hierarchy; cpuset needs cpus/mems copied in."""
    for hierarchy in _cgroup_hierarchies():
        path = hierarchy / name.lstrip("/")
        path.mkdir(exist_ok=True)
        if hierarchy.name == "cpuset":
            for knob in ("cpuset.cpus", "cpuset.mems"):
                (path / knob).write_text((hierarchy / knob).read_text())


def remove_cgroup_tree(name: str) -> None:
    """Kill what is left in the node's cgroups, then rmdir them deepest first."""
    for hierarchy in _cgroup_hierarchies():
        top = hierarchy / name.lstrip("/")
        if not top.is_dir():
            continue
        dirs = sorted((p for p in [top, *top.rglob("*")] if p.is_dir()), key=lambda p: len(p.parts),
                      reverse=True)
        for directory in dirs:
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        break
                    _kill_cgroup_members(directory)
                    time.sleep(0.1)


def _kill_cgroup_members(directory: Path) -> None:
    try:
        pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def unmount_under(directory: Path) -> bool:
    """Unmount everything mounted at or below `directory` (deepest first); True when none is left."""
    prefix = str(directory.resolve())
    for _ in range(5):
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                mounts.append(target)
        if not mounts:
            return True
        for target in sorted(set(mounts), key=len, reverse=True):
            if run("umount", target, check=False).returncode != 0:
                run("umount", "-l", target, check=False)
    return False


def kill_shims(socket: str) -> None:
    """containerd's shims outlive it; they carry the socket in their command line."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and socket.encode() in argv:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _iptables_tools() -> list[str]:
    return [tool for tool in ("iptables", "ip6tables") if shutil.which(tool)]


def remove_kubelet_chains() -> None:
    for tool in _iptables_tools():
        for table, chains in KUBELET_CHAINS.items():
            listing = run(tool, "-w", "-t", table, "-S", check=False).stdout.decode()
            # Rules that jump to the chains first, then the chains.
            for line in listing.splitlines():
                if line.startswith("-A ") and any(f"-j {chain}" in line for chain in chains):
                    run(tool, "-w", "-t", table, *("-D " + line[3:]).split(), check=False)
            for chain in chains:
                if f"-N {chain}" in listing:
                    run(tool, "-w", "-t", table, "-F", chain, check=False)
                    run(tool, "-w", "-t", table, "-X", chain, check=False)


class RealNodes:
    """Layout, host setup and teardown for `names` nodes of the cluster in `cluster_dir`."""

    def __init__(self, cluster_dir: Path, cache: Path) -> None:
        self.cluster_dir = cluster_dir
        self.dir = cluster_dir / "nodes"
        self.cache = cache
        self.id = cluster_id(cluster_dir)
        self.state_path = self.dir / "host.json"
        self.nodes: list[NodeLayout] = []
        self.dns_ip = ""
        self.api_ip = ""
        self._load()

    # -- state --

    def _save(self, extra: dict[str, Any]) -> None:
        state = self._state()
        state.update(extra)
        state["nodes"] = [asdict(n) for n in self.nodes]
        state["dns_ip"] = self.dns_ip
        state["api_ip"] = self.api_ip
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")

    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _load(self) -> None:
        state = self._state()
        self.nodes = [NodeLayout(**n) for n in state.get("nodes", [])]
        self.dns_ip = state.get("dns_ip", "")
        self.api_ip = state.get("api_ip", "")

    # -- setup --

    def plan(self, names: Sequence[str], dns_ip: str, api_ip: str, free_port: Any) -> list[NodeLayout]:
        """Take the machine-wide lock, pick a free /24 per node and create its bridge.

        `api_ip` is the address the API server will listen on for pods (see `prepare_host`).
        """
        try:
            owner = json.loads(OWNER_FILE.read_text()).get("dir", "")
        except (OSError, ValueError):
            owner = ""
        if owner and owner != str(self.cluster_dir) and (Path(owner) / "nodes" / "host.json").is_file():
            raise NodeSetupError(f"the cluster in {owner} runs real nodes on this machine (one at a time); "
                                 f"stop it first: python -m volt_operator.testing.cluster down --dir {owner}")
        self.teardown()  # leftovers of a crashed run with the same directory
        OWNER_FILE.write_text(json.dumps({"dir": str(self.cluster_dir)}) + "\n")
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.dns_ip, self.api_ip = dns_ip, api_ip
        forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self._save({"ip_forward": forward, "dns_address": f"{dns_ip}/32", "api_address": f"{api_ip}/32"})
        SUBNET_LOCK.parent.mkdir(parents=True, exist_ok=True)
        with open(SUBNET_LOCK, "w") as subnet_lock:
            # Node agents pick their /24 under the same lock from the same addresses.
            fcntl.flock(subnet_lock, fcntl.LOCK_EX)
            for index, name in enumerate(names):
                used = addresses_in_use()
                subnet = choose_subnet(hashlib.sha1(f"{self.id}-{name}".encode()).hexdigest()[:6], used)
                node = NodeLayout(
                    # Short and on disk: containerd's and kubelet's unix sockets live
                    # below it (at most 108 bytes a path), and so do emptyDir volumes.
                    name=name, dir=f"{NODES_ROOT}/{self.id}/{name}", subnet=str(subnet), bridge=f"vk{self.id}{index}",
                    cgroup_root=f"/volt-{self.id}-{name}", kubelet_port=free_port(),
                    healthz_port=free_port(), stream_port=free_port(),
                    containerd_root=str(self.cache / "node-images" / name))
                self.nodes.append(node)
                self._save({})
                run("ip", "link", "add", "name", node.bridge, "type", "bridge")
                run("ip", "addr", "add", f"{node.address}/{subnet.prefixlen}", "dev", node.bridge)
                run("ip", "link", "set", node.bridge, "up")
        return self.nodes

    def prepare_host(self) -> None:
        """ip_forward, the DNS and API addresses, FORWARD rules for the bridges, cgroup roots.

        Called before the API server starts: it binds the API address.
        """
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        run("ip", "addr", "replace", f"{self.dns_ip}/32", "dev", "lo", "label", DNS_LABEL)
        run("ip", "addr", "replace", f"{self.api_ip}/32", "dev", "lo", "label", API_LABEL)
        for node in self.nodes:
            # Docker may set the FORWARD policy to DROP: let pod traffic between the bridges through.
            for rule in (["-i", node.bridge], ["-o", node.bridge]):
                run("iptables", "-w", "-I", "FORWARD", *rule, "-j", "ACCEPT")
            create_cgroup_root(node.cgroup_root)

    def write_node_files(self, pki: Path, server: str, cluster_domain: str, write_kubeconfig: Any,
                         ca: Any) -> None:
        for node in self.nodes:
            base = Path(node.dir)
            for sub in ("containerd/state", "cni", "kubelet", "pod-logs", "ipam", "kubelet-pki"):
                (base / sub).mkdir(parents=True, exist_ok=True)
            Path(node.containerd_root).mkdir(parents=True, exist_ok=True)
            (base / "containerd" / "config.toml").write_text(containerd_config(node))
            (base / "cni" / "10-volt.conflist").write_text(json.dumps(cni_config(node), indent=2))
            client = ca.issue(f"kubelet-{node.name}", f"system:node:{node.name}", ["system:nodes"])
            ca.issue(f"kubelet-{node.name}-serving", f"system:node:{node.name}", server=True,
                     ip_addresses=[node.address, "127.0.0.1"], dns_names=[node.name])
            write_kubeconfig(base / "kubelet.kubeconfig", server, pki / "ca.crt", f"system:node:{node.name}",
                             client=client)
            (base / "kubelet-config.json").write_text(
                json.dumps(kubelet_config(node, pki, self.dns_ip, cluster_domain), indent=2))

    # -- images --

    @staticmethod
    def _marker(node: NodeLayout) -> Path:
        return Path(node.containerd_root) / "volt-images.json"

    def has_image(self, node: NodeLayout, ref: str, image_id: str) -> bool:
        """True when this image id was imported under `ref` and containerd still lists it."""
        try:
            loaded = json.loads(self._marker(node).read_text())
        except (OSError, ValueError):
            return False
        return (loaded.get(ref) == image_id
                and normalize_ref(ref).encode() in ctr(node, "images", "ls", "-q").stdout.split())

    def load_image_archive(self, node: NodeLayout, archive: bytes, ref: str, image_id: str) -> bool:
        """Import a small docker-archive into the node's containerd unless this image id is already there.

        Either way, older versions of the same repository are then deleted (`prune_images`).
        """
        if self.has_image(node, ref, image_id):
            self.prune_images(node, [ref])
            return False
        ctr(node, "images", "import", "-", input=archive, timeout=600)
        self._imported(node, ref, image_id)
        return True

    def import_stream(self, nodes: Sequence[NodeLayout], archive: IO[bytes], ref: str, image_id: str,
                      timeout: float = 1800) -> None:
        """Import the docker-archive read from `archive` (`docker save`'s stdout) into every
        node's containerd at once, then delete the nodes' older versions (`prune_images`).

        One read feeds all the imports, and the gigabytes of a trainer image are never
        written to a file on the way.
        """
        def fan_out(stdins: list[IO[bytes]]) -> None:
            while chunk := archive.read(1 << 20):
                for stdin in stdins:
                    stdin.write(chunk)

        self._ctr_import(nodes, ref, fan_out, timeout)
        for node in nodes:
            self._imported(node, ref, image_id)

    @staticmethod
    def _ctr_import(nodes: Sequence[NodeLayout], ref: str, write: Callable[[list[IO[bytes]]], None],
                    timeout: float) -> None:
        """Run `ctr images import -` on every node, `write` the archive to their stdins, and
        raise NodeSetupError naming each import that failed (or ran past `timeout`)."""
        errors = [tempfile.TemporaryFile() for _ in nodes]  # a pipe nobody reads could block ctr
        importers = [subprocess.Popen(ctr_argv(node, "images", "import", "-"), stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=err) for node, err in zip(nodes, errors)]
        watchdog = threading.Timer(timeout, lambda: [p.kill() for p in importers])
        watchdog.start()
        try:
            try:
                write([importer.stdin for importer in importers])  # type: ignore[misc]
            except BrokenPipeError:  # an import stopped early: its exit status and stderr say why
                pass
            finally:
                for importer in importers:
                    with contextlib.suppress(BrokenPipeError):
                        importer.stdin.close()  # type: ignore[union-attr]
            failed = []
            for node, importer, err in zip(nodes, importers, errors):
                if importer.wait() != 0:
                    err.seek(0)
                    failed.append(f"{node.name}: ctr images import exited {importer.returncode}: "
                                  f"{err.read().decode(errors='replace').strip()}")
        finally:
            watchdog.cancel()
            for importer in importers:
                if importer.poll() is None:
                    importer.kill()
                    importer.wait()
            for err in errors:
                err.close()
        if failed:
            raise NodeSetupError(f"importing {ref}: " + "; ".join(failed))

    def held_layers(self, node: NodeLayout, diff_ids: Sequence[str]) -> set[str]:
        """The layers of an image (`diff_ids`, bottom first) that the node holds unpacked, and
        that an import of the image therefore need not send (`node_images.unpacked_layers`)."""
        return set(node_images.unpacked_layers(diff_ids, self._committed_snapshots(node)))

    @staticmethod
    def _committed_snapshots(node: NodeLayout) -> set[str]:
        rows = [line.split() for line in ctr(node, "snapshots", "ls").stdout.decode().splitlines()[1:]]
        return {fields[0] for fields in rows if fields and fields[-1] == "Committed"}

    @staticmethod
    def _images(node: NodeLayout) -> list[tuple[str, str]]:
        """(reference, manifest digest) of every image the node's containerd lists."""
        rows = [line.split() for line in ctr(node, "images", "ls").stdout.decode().splitlines()[1:]]
        return [(fields[0], fields[2]) for fields in rows if len(fields) >= 3]

    def _loaded_layers(self, node: NodeLayout) -> set[str]:
        """The layers, by digest, that the node holds unpacked for the images volt loaded into it."""
        loaded = {normalize_ref(ref) for ref in self._loaded(node)}
        manifests = {manifest for ref, manifest in self._images(node) if ref in loaded}
        committed = self._committed_snapshots(node)
        layers: set[str] = set()
        for manifest in manifests:
            layers.update(node_images.unpacked_layers(self._diff_ids(node, manifest), committed))
        return layers

    @staticmethod
    def _diff_ids(node: NodeLayout, manifest: str) -> list[str]:
        """The layers of the image whose manifest has this digest, from its config; [] if unreadable."""
        try:
            config = json.loads(ctr(node, "content", "get", manifest).stdout)["config"]["digest"]
            return list(json.loads(ctr(node, "content", "get", config).stdout)["rootfs"]["diff_ids"])
        except (NodeSetupError, ValueError, KeyError, TypeError):
            return []

    def discard_unpacked_blobs(self, node: NodeLayout, unpacked: Collection[str]) -> list[str]:
        """Delete the content-store copy of each of the `unpacked` layers (`_loaded_layers`) that the
        store still holds; returns their digests.

        An import leaves every layer twice in the store: the blob it came as and the snapshot
        unpacking made of it (5.8 GB each for the trainer image). Containers start from the
        snapshots, and the CRI plugin reads only an image's manifest and config, which stay;
        a later import of the image skips the layers whose snapshots it finds (`held_layers`).
        Only the layers of the images volt loaded (the marker) are touched.
        """
        blobs = sorted(set(ctr(node, "content", "ls", "-q").stdout.decode().split()) & set(unpacked))
        if blobs:
            ctr(node, "content", "rm", *blobs, timeout=600)
        return blobs

    def layer_sizes(self, nodes: Sequence[NodeLayout]) -> dict[str, int]:
        """Layer digest -> size, as recorded by the nodes' imports (`import_layers`)."""
        sizes: dict[str, int] = {}
        for node in nodes:
            try:
                sizes.update(json.loads(self._sizes_file(node).read_text()))
            except (OSError, ValueError):
                pass
        return sizes

    def import_layers(self, node: NodeLayout, image: node_images.SavedImage, ref: str,
                      layers: Sequence[str], timeout: float = 1800) -> None:
        """Import `image` as `ref` into the node's containerd, sending only the blobs of `layers`
        (the node holds the others), then delete the node's older versions (`prune_images`)."""
        self._ctr_import([node], ref, lambda stdins: node_images.oci_archive(
            image, normalize_ref(ref), layers, stdins[0]), timeout)
        self.record_layer_sizes(node, image.sizes)
        self._imported(node, ref, image.image_id)

    def record_layer_sizes(self, node: NodeLayout, sizes: dict[str, int]) -> None:
        """Add `sizes` (digest -> bytes) to what `layer_sizes` reads (`prune_images` drops the
        sizes of the layers the node no longer holds)."""
        self._write_sizes(node, {**self.layer_sizes([node]), **sizes})

    def _write_sizes(self, node: NodeLayout, sizes: dict[str, int]) -> None:
        self._sizes_file(node).write_text(json.dumps(sizes, indent=2) + "\n")

    @staticmethod
    def _sizes_file(node: NodeLayout) -> Path:
        return Path(node.containerd_root) / "volt-layer-sizes.json"

    def _imported(self, node: NodeLayout, ref: str, image_id: str) -> None:
        loaded = self._loaded(node)
        loaded[ref] = image_id
        self._marker(node).write_text(json.dumps(loaded, indent=2) + "\n")
        self.prune_images(node, [ref])

    def _loaded(self, node: NodeLayout) -> dict[str, str]:
        try:
            return dict(json.loads(self._marker(node).read_text()))
        except (OSError, ValueError):
            return {}

    def prune_images(self, node: NodeLayout, loaded: Iterable[str]) -> list[str]:
        """Delete the node's other versions of the repositories of `loaded` (see `stale_image_refs`),
        then the blobs of the layers it holds unpacked (`discard_unpacked_blobs`) and the recorded
        sizes of the layers it no longer holds.

        The store lives across `down` and a trainer image is ~6 GB: without this every
        rebuild would stay on disk for good. `--sync` waits for containerd's garbage
        collection of the freed content and snapshots.
        """
        images = self._images(node)
        in_use = [line.split()[1] for line in ctr(node, "containers", "ls").stdout.decode().splitlines()[1:]
                  if len(line.split()) >= 2]
        stale = stale_image_refs(images, [normalize_ref(ref) for ref in loaded], in_use)
        if stale:
            log.info("%s: deleting older images %s", node.name, ", ".join(stale))
            ctr(node, "images", "rm", "--sync", *stale, timeout=600)
        # The marker names only what the store still holds (images may be deleted by hand too).
        listed = {ref for ref, _ in images} - set(stale)
        marker = self._loaded(node)
        kept = {ref: image_id for ref, image_id in marker.items() if normalize_ref(ref) in listed}
        if kept != marker:
            self._marker(node).write_text(json.dumps(kept, indent=2) + "\n")
        unpacked = self._loaded_layers(node)
        self.discard_unpacked_blobs(node, unpacked)
        sizes = self.layer_sizes([node])
        if not sizes.keys() <= unpacked:
            self._write_sizes(node, {d: n for d, n in sizes.items() if d in unpacked})
        return stale

    # -- teardown --

    def remove_containers(self) -> None:
        """Kill every task and remove every container of every node (their containerd still runs)."""
        for node in self.nodes:
            if not Path(node.socket).exists():
                continue
            listing = ctr(node, "tasks", "ls", check=False, timeout=30).stdout.decode().splitlines()[1:]
            for line in listing:
                task = line.split()[0]
                ctr(node, "tasks", "kill", "--signal", "SIGKILL", task, check=False, timeout=30)
            for line in listing:
                ctr(node, "tasks", "delete", "--force", line.split()[0], check=False, timeout=30)
            containers = ctr(node, "containers", "ls", "-q", check=False, timeout=30).stdout.decode().split()
            if containers:
                ctr(node, "containers", "delete", *containers, check=False, timeout=60)

    def teardown(self) -> None:
        """Undo every host change recorded in host.json; idempotent."""
        state = self._state()
        for node in self.nodes:
            kill_shims(node.socket)
        for node in self.nodes:
            if unmount_under(Path(node.dir)):
                shutil.rmtree(node.dir, ignore_errors=True)
            else:  # never recurse into a mounted volume (a PV's directory)
                log.warning("mounts are left under %s; not deleting it", node.dir)
            remove_cgroup_tree(node.cgroup_root)
            if run("ip", "link", "show", node.bridge, check=False).returncode == 0:
                run("ip", "link", "del", node.bridge, check=False)
            for rule in (["-i", node.bridge], ["-o", node.bridge]):
                while run("iptables", "-w", "-C", "FORWARD", *rule, "-j", "ACCEPT", check=False).returncode == 0:
                    run("iptables", "-w", "-D", "FORWARD", *rule, "-j", "ACCEPT", check=False)
        try:
            os.rmdir(f"{NODES_ROOT}/{self.id}")
        except OSError:
            pass
        for address in ("dns_address", "api_address"):
            if state.get(address):
                run("ip", "addr", "del", state[address], "dev", "lo", check=False)
        if self.nodes:
            remove_kubelet_chains()
        if "ip_forward" in state:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(state["ip_forward"] + "\n")
        # The CNI library's cache of results (kubelet never deleted these sandboxes):
        # `<network>-<sandbox id>-<interface>`, for our network and containerd's loopback.
        for node in self.nodes:
            for cached in Path("/var/lib/cni/results").glob(f"volt-{node.name}-*-eth0"):
                sandbox = cached.name[len(f"volt-{node.name}-"):-len("-eth0")]
                Path(f"/var/lib/cni/results/cni-loopback-{sandbox}-lo").unlink(missing_ok=True)
                cached.unlink(missing_ok=True)
        self.nodes = []
        self.state_path.unlink(missing_ok=True)
        try:
            if json.loads(OWNER_FILE.read_text()).get("dir") == str(self.cluster_dir):
                OWNER_FILE.unlink()
        except (OSError, ValueError):
            pass
