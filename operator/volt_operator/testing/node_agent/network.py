"""Pod networking for the local node agent.

Every agent owns one Linux bridge and one /24 out of 198.18.0.0/16 (half the range
set aside for network testing, never routed off the machine). The bridge holds
the .1 address, which is also the InternalIP of the agent's nodes, so host
processes (the operator, tests, the API server's log proxy) reach pods directly.
Each pod gets a network namespace with a veth pair into the bridge and its own
address, plus `/etc/netns/<netns>/hosts`, which `ip netns exec` mounts over
/etc/hosts: it lists the DNS names of the pods of the same namespace and
subdomain, so `<job>-node-0.<job>` resolves from every rank as it does in a
cluster with CoreDNS and a headless Service.

The rendering and address arithmetic are pure functions; `PodNetwork` applies
them with `ip`, `iptables` (only when installed) and files.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# 198.18.0.0/15 is set aside for network testing; the control plane takes
# 198.19.0.0/16 for Services, pods get the lower half.
SUPERNET = ipaddress.IPv4Network("198.18.0.0/16")
SUBNET_PREFIX = 24
NETNS_ETC = Path("/etc/netns")
CLUSTER_DOMAIN = "cluster.local"
LOCK_FILE = Path("/run/volt-node-agent/subnet.lock")


def agent_id_for(workdir: str | os.PathLike[str]) -> str:
    """A short id, stable for one workdir, that prefixes every name the agent creates.

    A restarted agent with the same workdir finds (and removes) what a crashed
    predecessor left behind; two agents with different workdirs never collide.
    """
    return hashlib.sha1(str(Path(workdir).resolve()).encode()).hexdigest()[:6]


def choose_subnet(agent_id: str, in_use: set[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """Pick the /24 for this agent: a hash-derived start, then the next free one."""
    subnets = list(SUPERNET.subnets(new_prefix=SUBNET_PREFIX))
    start = int(agent_id, 16) % len(subnets)
    for offset in range(len(subnets)):
        candidate = subnets[(start + offset) % len(subnets)]
        if not any(candidate.overlaps(used) for used in in_use):
            return candidate
    raise RuntimeError(f"no free /{SUBNET_PREFIX} left in {SUPERNET}")


@dataclass(frozen=True)
class PodAddress:
    """What the hosts file of a pod needs to know about one pod."""

    pod_name: str
    namespace: str
    ip: str
    hostname: str
    subdomain: str | None


def pod_dns_names(pod: PodAddress) -> list[str]:
    """The names cluster DNS gives a pod with hostname+subdomain, most specific first."""
    if not pod.subdomain:
        return []
    base = f"{pod.hostname}.{pod.subdomain}"
    return [
        f"{base}.{pod.namespace}.svc.{CLUSTER_DOMAIN}",
        f"{base}.{pod.namespace}.svc",
        f"{base}.{pod.namespace}",
        base,
    ]


def render_hosts(own: PodAddress, peers: list[PodAddress]) -> str:
    """The /etc/hosts of `own`: localhost, itself, and the peers of its subdomain.

    Peers are the running pods of the same namespace; only those with the same
    subdomain get names, as a headless Service only publishes its own pods.
    """
    lines = [
        "# written by the volt local node agent",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{own.ip}\t" + " ".join(pod_dns_names(own) + [own.hostname]),
    ]
    for peer in sorted(peers, key=lambda p: (p.hostname, p.pod_name)):
        if peer.pod_name == own.pod_name or peer.namespace != own.namespace:
            continue
        if not own.subdomain or peer.subdomain != own.subdomain:
            continue
        lines.append(f"{peer.ip}\t" + " ".join(pod_dns_names(peer)))
    return "\n".join(lines) + "\n"


def render_resolv_conf(namespace: str) -> str:
    """The pod's resolv.conf: the kubelet's search path, and no reachable name server.

    Pod names come from the hosts file; pods have no route off the machine, so
    a lookup of any other name should fail at once (127.0.0.1:53 refuses)
    instead of timing out against the host's resolver.
    """
    return (f"search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
            "nameserver 127.0.0.1\n"
            "options ndots:5 timeout:1 attempts:1\n")


class AddressPool:
    """Hands out the host addresses of one subnet (gateway excluded), keyed by pod uid.

    Sequential, as CNI's host-local IPAM: each allocation takes the next free
    address after the last one handed out, wrapping around, so an address that
    was just released is the last to be reused. A pod's peers may still hold
    its old address (connections, ARP and DNS caches) for a while after it died.
    """

    def __init__(self, subnet: ipaddress.IPv4Network) -> None:
        self.subnet = subnet
        self.gateway = next(subnet.hosts())
        self._hosts = [a for a in subnet.hosts() if a != self.gateway]
        self._last = -1  # index in _hosts of the last address handed out
        self._by_key: dict[str, ipaddress.IPv4Address] = {}
        self._lock = threading.Lock()

    def allocate(self, key: str) -> ipaddress.IPv4Address:
        with self._lock:
            if key in self._by_key:
                return self._by_key[key]
            taken = set(self._by_key.values())
            for step in range(1, len(self._hosts) + 1):
                index = (self._last + step) % len(self._hosts)
                if self._hosts[index] not in taken:
                    self._last = index
                    self._by_key[key] = self._hosts[index]
                    return self._hosts[index]
        raise RuntimeError(f"address pool {self.subnet} is exhausted")

    def release(self, key: str) -> None:
        with self._lock:
            self._by_key.pop(key, None)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def addresses_in_use() -> set[ipaddress.IPv4Network]:
    """Subnets of SUPERNET already configured on this machine's interfaces."""
    out = _run("ip", "-j", "-4", "addr", "show").stdout
    used: set[ipaddress.IPv4Network] = set()
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            net = ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False)
            if net.overlaps(SUPERNET):
                used.add(net)
    return used


class PodNetwork:
    """The bridge of one agent and the namespaces of its pods."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        self.bridge = f"vb{agent_id}"
        self.netns_prefix = f"volt-{agent_id}-"
        self.pool: AddressPool | None = None
        self._iptables_rule: list[str] | None = None

    # -- bridge -------------------------------------------------------------

    def setup(self) -> ipaddress.IPv4Network:
        """Create the bridge (removing leftovers of a crashed run first)."""
        self.teardown()
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_FILE, "w") as lock:
            # Agents starting at once must not both pick the same free /24.
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = choose_subnet(self.agent_id, addresses_in_use())
            self.pool = AddressPool(subnet)
            _run("ip", "link", "add", "name", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.pool.gateway}/{subnet.prefixlen}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        self._allow_forwarding()
        log.info("bridge %s up with %s (gateway %s)", self.bridge, subnet, self.pool.gateway)
        return subnet

    @property
    def gateway(self) -> str:
        if self.pool is None:
            raise RuntimeError("PodNetwork.setup() has not run")
        return str(self.pool.gateway)

    def _allow_forwarding(self) -> None:
        # Docker sets the FORWARD policy to DROP and loads br_netfilter, which
        # sends bridged pod-to-pod frames through that chain: accept ours.
        if shutil.which("iptables") is None:
            return
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        if _run("iptables", "-C", *rule, check=False).returncode != 0:
            _run("iptables", "-I", *rule)
        self._iptables_rule = rule

    def teardown(self) -> None:
        """Remove every namespace, link, rule and file this agent id owns."""
        for name in self.list_namespaces():
            self.kill_namespace_processes(name)
            self.delete_pod_namespace(name)
        if _run("ip", "link", "show", self.bridge, check=False).returncode == 0:
            _run("ip", "link", "del", self.bridge, check=False)
        if shutil.which("iptables") is not None:
            rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
            while _run("iptables", "-C", *rule, check=False).returncode == 0:
                _run("iptables", "-D", *rule, check=False)
        self._iptables_rule = None

    # -- pods ---------------------------------------------------------------

    def netns_name(self, pod_uid: str) -> str:
        return self.netns_prefix + pod_uid

    @staticmethod
    def host_veth(netns: str) -> str:
        """The bridge end of the pod's veth pair (names are limited to 15 characters)."""
        return "vh" + hashlib.sha1(netns.encode()).hexdigest()[:9]

    def list_namespaces(self) -> list[str]:
        out = _run("ip", "-j", "netns", "list", check=False).stdout
        names = [entry["name"] for entry in json.loads(out or "[]")]
        return [n for n in names if n.startswith(self.netns_prefix)]

    def create_pod_namespace(self, pod_uid: str) -> tuple[str, str]:
        """Create the pod's netns wired into the bridge; returns (netns, pod IP)."""
        if self.pool is None:
            raise RuntimeError("PodNetwork.setup() has not run")
        netns = self.netns_name(pod_uid)
        ip = self.pool.allocate(pod_uid)
        if netns in self.list_namespaces():
            return netns, str(ip)
        host_end = self.host_veth(netns)
        pod_end = "vp" + host_end[2:]
        try:
            _run("ip", "netns", "add", netns)
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", pod_end, "netns", netns)
            _run("ip", "link", "set", host_end, "master", self.bridge, "up")
            inside = ["ip", "netns", "exec", netns]
            _run(*inside, "ip", "link", "set", "lo", "up")
            _run(*inside, "ip", "link", "set", pod_end, "name", "eth0")
            _run(*inside, "ip", "addr", "add", f"{ip}/{self.pool.subnet.prefixlen}", "dev", "eth0")
            _run(*inside, "ip", "link", "set", "eth0", "up")
            _run(*inside, "ip", "route", "add", "default", "via", str(self.pool.gateway))
        except Exception:
            self.delete_pod_namespace(netns)
            self.pool.release(pod_uid)
            raise
        return netns, str(ip)

    def write_hosts(self, netns: str, content: str) -> None:
        """Write the pod's hosts file (see `_write_in_place`)."""
        self._write_in_place(netns, "hosts", content)

    def write_resolv_conf(self, netns: str, content: str) -> None:
        self._write_in_place(netns, "resolv.conf", content)

    def _write_in_place(self, netns: str, name: str, content: str) -> None:
        """Write /etc/netns/<netns>/<name> in place: running pods see it bind-mounted
        over /etc/<name>, so replacing the inode (rename) would hide updates."""
        directory = NETNS_ETC / netns
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        with open(path, "a+", encoding="utf-8") as handle:
            handle.seek(0)
            if handle.read() == content:
                return
            handle.seek(0)
            handle.truncate()
            handle.write(content)

    def namespace_pids(self, netns: str) -> list[int]:
        out = _run("ip", "netns", "pids", netns, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_namespace_processes(self, netns: str, wait_s: float = 5.0) -> list[int]:
        """SIGKILL every process in the pod's network namespace and wait until they are gone.

        This is the end of the pod's pid namespace: processes that started their
        own session (torch's elastic agent runs each worker in one) escape the
        container's process group but not this. Returns the pids still there
        after ``wait_s`` (stuck in the kernel); the caller logs them.
        """
        deadline = time.monotonic() + wait_s
        while True:
            pids = self.namespace_pids(netns)
            if not pids or time.monotonic() >= deadline:
                return pids
            for pid in pids:
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)

    def delete_pod_namespace(self, netns: str) -> None:
        """Detach the pod from the bridge, then delete its netns, files and address.

        The host end of the veth goes first: a namespace outlives ``ip netns del``
        while anything still holds it, and must not keep answering for an address
        that the pool hands to the next pod.
        """
        _run("ip", "link", "del", self.host_veth(netns), check=False)
        _run("ip", "netns", "del", netns, check=False)
        shutil.rmtree(NETNS_ETC / netns, ignore_errors=True)
        if self.pool is not None and netns.startswith(self.netns_prefix):
            self.pool.release(netns[len(self.netns_prefix):])
