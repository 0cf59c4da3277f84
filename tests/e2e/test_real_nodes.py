"""End to end on real nodes: kubelet + containerd run the trainer image as containers.

A LocalCluster with `runtime="kubelet"` (two kubelets, each with its own
containerd, a bridge CNI, CoreDNS, the volume provisioner), the trainer image
built with docker (scripts/build-images.sh, tag `e2e`, the same cache as
tests/e2e/test_docker.py) and imported into both nodes, the real operator as a
host process. The cluster is the session's `real_kube` (tests/e2e/conftest.py),
shared with the other test_real_nodes_*.py modules. Needs root,
`make cluster node-runtime docker`.
"""
from __future__ import annotations

import io
import json
import secrets
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import yaml

from job_helpers import diagnosis
from operator_process import OperatorProcess, get_json, job_status, wait_until
from real_nodes import example, namespace, operator  # noqa: F401 (fixtures)
from volt_operator.testing.cluster import ClusterError, LocalCluster
from volt_operator.testing.kubelet_nodes import OWNER_FILE, ctr

pytestmark = [
    pytest.mark.cluster, pytest.mark.docker, pytest.mark.slow,
]

CNI_RESULTS = Path("/var/lib/cni/results")


def host_traces(cluster: LocalCluster) -> List[str]:
    """What of `cluster`'s real nodes is visible on the host: links, addresses, rules, cgroups, mounts."""
    ident = cluster.real_nodes.id
    found = []
    for argv in (["ip", "-o", "link", "show"], ["ip", "-o", "addr", "show"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        found += [line for line in out.splitlines()
                  if f"vk{ident}" in line or "volt-dns" in line or "volt-api" in line]
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            out = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True).stdout
            found += [f"{tool} {table} {line}" for line in out.splitlines() if "KUBE-" in line or f"vk{ident}" in line]
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        found += [str(p) for p in hierarchy.glob(f"volt-{ident}-*")]
    found += [str(p) for p in Path("/var/lib/volt-nodes").glob(ident)]
    mounts = Path("/proc/self/mountinfo").read_text().split("\n")
    found += [m for m in mounts if str(cluster.dir) in m]
    found += [str(p) for p in CNI_RESULTS.glob("volt-node-*")] if CNI_RESULTS.is_dir() else []
    return found


def running_real_cluster() -> str:
    """The directory of the cluster whose real nodes run on this machine (one at a time), or ''."""
    try:
        owner = json.loads(OWNER_FILE.read_text()).get("dir", "")
    except (OSError, ValueError):
        return ""
    return owner if owner and (Path(owner) / "nodes" / "host.json").is_file() else ""


@pytest.mark.own_real_cluster
@pytest.mark.timeout(300)
def test_down_undoes_every_host_change(tmp_path: Path) -> None:
    """A node that ran a pod: after `down`, no link, address, rule, cgroup, mount or CNI cache entry is left.

    It starts its own one-node cluster, so it runs before the session's `real_kube` starts
    (the marker puts it first: tests/e2e/conftest.py).
    """
    if running_real_cluster():
        pytest.skip(f"the real-node cluster in {running_real_cluster()} is running (one runs per machine); "
                    "stop it to run this test")
    cluster = LocalCluster(tmp_path / "kube", nodes=1, runtime="kubelet")
    forward = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    assert host_traces(cluster) == []
    try:
        cluster.up()
        cluster.kubectl("run", "sandbox", "--image", "volt.local/pause:1", "--image-pull-policy", "Never",
                        "--restart", "Never")
        cluster.kubectl("wait", "--for", "condition=Ready", "pod/sandbox", "--timeout", "120s", timeout=150)
        assert host_traces(cluster), "the running node left no trace to look for: the check is blind"
        # containerd's loopback network caches its result per sandbox too.
        sandboxes = [p.name.split("-")[3] for p in CNI_RESULTS.glob("volt-node-0-*-eth0")]
        assert sandboxes
    finally:
        cluster.down()
    assert host_traces(cluster) == []
    assert [s for s in sandboxes if (CNI_RESULTS / f"cni-loopback-{s}-lo").exists()] == []
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == forward


@pytest.mark.timeout(120)
def test_nodes_are_real_kubelets(real_kube: LocalCluster) -> None:
    nodes = get_json(real_kube, "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == ["node-0", "node-1"]
    for node in nodes:
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"].startswith("v1.34"), info
        assert info["containerRuntimeVersion"].startswith("containerd://"), info
        addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
        assert addresses["InternalIP"] == real_kube.status()["real_nodes"][node["metadata"]["name"]]["address"]


@pytest.mark.timeout(900)
def test_memory_limit_gives_oomkilled_in_last_failure(real_kube: LocalCluster, operator: OperatorProcess,
                                                       namespace: str) -> None:
    """A container over its memory limit is killed by the kernel; the job's status says OOMKilled."""
    pvc, job = example(
        command=["python", "-c", "b = bytearray(400 * 2**20); b[::4096] = b'x' * len(b[::4096]); print(len(b))"],
        args=[], resources={"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        failurePolicy={"maxRestarts": 0, "backoffSeconds": 1})
    job["metadata"]["name"] = "oom"
    real_kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([pvc, job]))

    def oom_reported() -> Any:
        failure = job_status(real_kube, namespace, "oom").get("lastFailure") or {}
        return failure if "OOMKilled" in json.dumps(failure) else None

    try:
        failure = wait_until("lastFailure naming OOMKilled", oom_reported, 300, every=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(real_kube, namespace, 'oom')}") from None
    assert failure.get("reason") == "OOMKilled", failure


@pytest.mark.timeout(600)
def test_missing_image_is_named_in_the_job_status(real_kube: LocalCluster, operator: OperatorProcess,
                                                  namespace: str) -> None:
    """No registry has the image: `kubectl describe tj` names the pull error within 30 s of the apply."""
    pvc, job = example()
    job["spec"]["image"] = "volt-trainer:does-not-exist"
    job_path = f"/apis/volt.dev/v1alpha1/namespaces/{namespace}/trainingjobs?fieldSelector=metadata.name=synthetic"

    def pull_error_reported(jobs: Dict[str, Any]) -> Any:
        text = json.dumps(jobs.get("synthetic", {}).get("status", {}))
        return text if ("ErrImagePull" in text or "ImagePullBackOff" in text) else None

    applied = time.monotonic()
    real_kube.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([pvc, job]))
    try:
        # Watched, not polled; the wait is longer than the promise so a miss reports its time.
        real_kube.watch(job_path, pull_error_reported, 180, "the job status to report the image pull error")
    except ClusterError as exc:
        raise AssertionError(f"{exc}\n{diagnosis(real_kube, namespace, 'synthetic')}") from None
    described = real_kube.kubectl("describe", "-n", namespace, "trainingjob", "synthetic").stdout
    elapsed = time.monotonic() - applied
    print(f"image pull error in kubectl describe {elapsed:.1f}s after the apply")
    assert "volt-trainer:does-not-exist" in described and (
        "ErrImagePull" in described or "ImagePullBackOff" in described), described
    assert elapsed <= 30, f"the pull error reached `kubectl describe tj` only {elapsed:.1f}s after the apply"


def _small_image(env: Dict[str, str], ref: str) -> Tuple[str, str]:
    """A one-file image with unique content (`docker import`): its id and its layer's digest."""
    payload = _tar({"version": secrets.token_hex(16).encode()})
    imported = subprocess.run([env["DOCKER"], "import", "-", ref], input=payload, capture_output=True, env=env,
                              timeout=120)
    assert imported.returncode == 0, imported.stderr
    inspect = subprocess.run([env["DOCKER"], "image", "inspect", "--format", "{{.Id}} {{index .RootFS.Layers 0}}",
                              ref], capture_output=True, text=True, env=env, timeout=60, check=True)
    image_id, layer = inspect.stdout.split()
    return image_id, layer


def _tar(files: Dict[str, bytes]) -> bytes:
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return payload.getvalue()


def _image_on(env: Dict[str, str], base: str, ref: str) -> List[str]:
    """`base` and one more layer (a file with unique content): the new image's layer digests."""
    context = _tar({"Dockerfile": f"FROM {base}\nCOPY top /top\n".encode(), "top": secrets.token_hex(16).encode()})
    built = subprocess.run([env["DOCKER"], "build", "-q", "-t", ref, "-"], input=context,
                           capture_output=True, env=env, timeout=300)
    assert built.returncode == 0, built.stderr
    inspect = subprocess.run([env["DOCKER"], "image", "inspect", "--format", "{{json .RootFS.Layers}}", ref],
                             capture_output=True, text=True, env=env, timeout=60, check=True)
    return json.loads(inspect.stdout)


@pytest.mark.timeout(600)
def test_an_image_on_a_loaded_base_is_sent_only_its_new_layer(real_kube: LocalCluster, docker_env: Dict[str, str],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """The nodes hold the base's layer only unpacked (its blob was deleted after the import), and
    that is enough: the next image is sent its new layer alone, its import finds the base unpacked,
    and the nodes end with both layers unpacked and neither blob."""
    cluster = real_kube
    repo = f"volt-layered-check-{secrets.token_hex(3)}"
    base_id, base_layer = _small_image(docker_env, f"{repo}:base")
    try:
        assert cluster.load_image(f"{repo}:base", docker=docker_env["DOCKER"], env=docker_env)
        layers = _image_on(docker_env, f"{repo}:base", f"{repo}-top:1")
        assert layers[0] == base_layer and len(layers) == 2, layers
        for node in cluster.real_nodes.nodes:
            assert cluster.real_nodes.held_layers(node, layers) == {base_layer}
        with caplog.at_level("WARNING", logger="volt.cluster"):
            assert cluster.load_image(f"{repo}-top:1", docker=docker_env["DOCKER"], env=docker_env)
        assert not [r for r in caplog.records if "importing all of it" in r.getMessage()], caplog.text
        for node in cluster.real_nodes.nodes:
            assert cluster.real_nodes.held_layers(node, layers) == set(layers)
            content = ctr(node, "content", "ls", "-q").stdout.decode().split()
            assert not set(layers) & set(content), content
    finally:
        for node in cluster.real_nodes.nodes:
            ctr(node, "images", "rm", "--sync", f"docker.io/library/{repo}:base", f"docker.io/library/{repo}-top:1",
                check=False)
        subprocess.run([docker_env["DOCKER"], "rmi", "-f", f"{repo}-top:1", base_id], env=docker_env,
                       capture_output=True, timeout=60)


@pytest.mark.timeout(600)
def test_load_image_keeps_one_version_of_each_repository(real_kube: LocalCluster,
                                                         docker_env: Dict[str, str]) -> None:
    """A rebuilt tag, then another tag of the same repository: only the newest stays in each node's store.

    It uses the session's cluster (one real-node cluster runs per machine at a time); its
    repository name is its own, so the trainer image the other tests run is untouched.
    """
    cluster = real_kube
    repo = f"volt-prune-check-{secrets.token_hex(3)}"
    versions = []
    try:
        for tag in ("a", "a", "b"):
            versions.append(_small_image(docker_env, f"{repo}:{tag}"))
            assert cluster.load_image(f"{repo}:{tag}", docker=docker_env["DOCKER"], env=docker_env)
        (old_a, old_layer), (new_a, new_a_layer), (b, b_layer) = versions
        for node in cluster.real_nodes.nodes:
            images = ctr(node, "images", "ls", "-q").stdout.decode().split()
            assert [ref for ref in images if repo in ref] == [f"docker.io/library/{repo}:b"], images
            assert f"sha256:{old_a.split(':')[1]}" not in images and f"sha256:{new_a.split(':')[1]}" not in images
            # containerd collected the unpacked snapshots nothing references any more, and holds
            # the kept version's layer once: unpacked, the blob it was imported as deleted.
            snapshots = ctr(node, "snapshots", "ls").stdout.decode()
            assert b_layer in snapshots and old_layer not in snapshots and new_a_layer not in snapshots
            content = ctr(node, "content", "ls", "-q").stdout.decode().split()
            assert not {b_layer, old_layer, new_a_layer} & set(content), content
            marker = json.loads((Path(node.containerd_root) / "volt-images.json").read_text())
            assert f"{repo}:b" in marker and f"{repo}:a" not in marker, marker
    finally:
        for node in cluster.real_nodes.nodes:
            ctr(node, "images", "rm", "--sync", f"docker.io/library/{repo}:b", check=False)
        for image_id, _ in versions:  # by id: the first "a" is untagged by now
            subprocess.run([docker_env["DOCKER"], "rmi", "-f", image_id], env=docker_env,
                           capture_output=True, timeout=60)
