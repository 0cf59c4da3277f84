"""Kueue's manager as a host process of the local cluster (``LocalCluster(kueue=True)``).

`make kueue` (scripts/build-kueue.sh) builds the manager from the Go module
proxy and copies its CRDs from the same module into
``$VOLT_CACHE/kueue/<version>/{bin,crds}``. This module installs those CRDs
and prepares the manager's command line: a kubeconfig like the
controller-manager's, a configuration with leader election, the visibility
server and internal certificate management off, ports picked free, and the one
integration Kueue insists on (``batch/job``, which acts only on Jobs that carry
a queue name). volt's own integration needs none: the operator creates the
Workload itself (docs/kueue.md).

Without internal certificate management Kueue reads its metrics serving
certificate from the fixed path ``/etc/kueue/metrics/certs``. Rather than write
into the host's /etc, the manager runs in a private mount namespace whose /etc
is an overlay (the host's /etc below, this cluster's files on top), so it needs
root, as the real nodes do. docs/local-cluster.md, "Kueue".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from volt_operator.testing.pki import CertificateAuthority

# Kept in step with the Makefile's KUEUE_VERSION (make exports VOLT_KUEUE_VERSION).
KUEUE_VERSION = os.environ.get("VOLT_KUEUE_VERSION", "v0.17.0")
KUEUE_NAMESPACE = "kueue-system"


def kueue_dir() -> Path:
    cache = Path(os.environ.get("VOLT_CACHE", Path.home() / ".cache" / "volt"))
    return cache / "kueue" / KUEUE_VERSION


def find_kueue() -> tuple[Path, Path]:
    """The manager binary and the CRD directory, or FileNotFoundError naming the make target."""
    base = kueue_dir()
    binary, crds = base / "bin" / "kueue", base / "crds"
    if not (binary.is_file() and any(crds.glob("*.yaml"))):
        raise FileNotFoundError(f"Kueue {KUEUE_VERSION} is not built in {base}: run `make kueue`")
    return binary, crds


@dataclass(frozen=True)
class KueueLaunch:
    """How to start the manager and how to know it is ready."""

    argv: list[str]
    env: dict[str, str]
    ready_url: str


def configuration(health_port: int, metrics_port: int, webhook_port: int, cert_dir: Path,
                  pods_ready_timeout: int | None = None) -> dict:
    """The manager's Configuration (config.kueue.x-k8s.io/v1beta2); JSON is valid YAML.
    ``pods_ready_timeout``: turn on waitForPodsReady with this timeout (seconds) and a
    requeue backoff of about a second, so an evicted Workload is soon admitted again."""
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        # The webhook server still listens (Kueue registers its handlers
        # unconditionally), but no webhook configuration points at it.
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "integrations": {"frameworks": ["batch/job"]},
        # Its API service needs the aggregation layer, which the local cluster lacks.
        "featureGates": {"VisibilityOnDemand": False},
    }
    if pods_ready_timeout is not None:
        config["waitForPodsReady"] = {"timeout": f"{pods_ready_timeout}s",
                                      "requeuingStrategy": {"backoffBaseSeconds": 1}}
    return config


def install_crds(kubectl: Callable[..., subprocess.CompletedProcess], crds: Path) -> None:
    """Apply Kueue's CRDs (server-side: they exceed client-side apply's annotation limit)
    and wait until the API server serves them."""
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds), timeout=120)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds), timeout=90)
    create = kubectl("create", "namespace", KUEUE_NAMESPACE, check=False)
    if create.returncode != 0 and "AlreadyExists" not in create.stderr:
        raise RuntimeError(f"creating namespace {KUEUE_NAMESPACE}: {create.stderr.strip()}")


def prepare(work: Path, ca: CertificateAuthority, kubeconfig: Path,
            free_port: Callable[[], int], pods_ready_timeout: int | None = None) -> KueueLaunch:
    """Certificates, the configuration and the command line under ``work``."""
    binary, _ = find_kueue()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    serving = ca.issue("kueue-serving", "kueue", server=True, ip_addresses=["127.0.0.1"],
                       dns_names=["localhost"])
    cert_dir = work / "webhook-certs"
    metrics_certs = work / "etc-upper" / "kueue" / "metrics" / "certs"
    for directory in (cert_dir, metrics_certs):
        directory.mkdir(parents=True)
        shutil.copy(serving.cert, directory / "tls.crt")
        shutil.copy(serving.key, directory / "tls.key")
    (work / "etc-work").mkdir()
    health_port = free_port()
    config = work / "config.yaml"
    config.write_text(json.dumps(
        configuration(health_port, free_port(), free_port(), cert_dir, pods_ready_timeout), indent=2) + "\n")
    overlay = (f"lowerdir=/etc,upperdir={work / 'etc-upper'},workdir={work / 'etc-work'}")
    # unshare and sh exec into the manager: the pid started is the manager's.
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount -t overlay overlay -o "$1" /etc && shift && exec "$@"', "sh",
            overlay, str(binary), f"--config={config}"]
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    return KueueLaunch(argv=argv, env=env, ready_url=f"http://127.0.0.1:{health_port}/readyz")
