"""A local-path style volume provisioner: hostPath PVs for unbound claims.

A cluster without a provisioner leaves a PVC Pending and its pods
unschedulable. Every few seconds the agent lists the PVCs; for each one that is
unbound and asks for no class, or for the class `volt-local`, it creates a
hostPath PV under `<workdir>/pv/` pre-bound to the claim (claimRef), and the
PV controller in kube-controller-manager completes the binding. Released PVs
it made (their claim was deleted) are deleted with their directory, which is
what the `Delete` reclaim policy of a real provisioner does.

Each volume's directory is world-writable (mode 0777, as local-path
provisioners make theirs): a hostPath volume gets no `fsGroup` ownership
change, and a non-root pod must be able to write its checkpoints there.

The node agent runs it in a thread; clusters of real kubelet nodes run it as
its own process: `python -m volt_operator.testing.node_agent.provisioner
--kubeconfig K --root DIR --owner ID`.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

STORAGE_CLASS = "volt-local"
PROVISIONED_BY = "volt.dev/local-provisioner"
API_TIMEOUT_S = 15
PERIOD_S = 2.0
READY_LINE = "provisioner ready"


def wants_local_volume(claim: dict[str, Any]) -> bool:
    """An unbound claim with no class (none exists by default) or ours."""
    spec = claim.get("spec") or {}
    if spec.get("volumeName") or (claim.get("status") or {}).get("phase") != "Pending":
        return False
    if spec.get("selector") or spec.get("dataSource"):
        return False
    return spec.get("storageClassName") in (None, "", STORAGE_CLASS)


def pv_name(claim: dict[str, Any]) -> str:
    return f"volt-local-{claim['metadata']['uid']}"


def volume_for(claim: dict[str, Any], root: Path, owner: str) -> dict[str, Any]:
    """The PV that satisfies `claim`: its requested size and modes, a host directory."""
    meta, spec = claim["metadata"], claim.get("spec") or {}
    size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name(claim), "labels": {PROVISIONED_BY: owner},
                     "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONED_BY}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "persistentVolumeReclaimPolicy": "Retain",  # we delete it ourselves, see module doc
            "storageClassName": spec.get("storageClassName") or "",
            "hostPath": {"path": str(root / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"),
                         "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]},
        },
    }


class Provisioner:
    def __init__(self, api: client.ApiClient, root: Path, owner: str) -> None:
        self.core = client.CoreV1Api(api)
        self.api = api
        self.root = root
        self.owner = owner

    def sync(self) -> None:
        listing = self.core.list_persistent_volume_claim_for_all_namespaces(_request_timeout=API_TIMEOUT_S)
        claims = self.api.sanitize_for_serialization(listing)["items"]
        for claim in claims:
            if wants_local_volume(claim):
                body = volume_for(claim, self.root, self.owner)
                try:
                    self.core.create_persistent_volume(body, _request_timeout=API_TIMEOUT_S)
                    directory = Path(body["spec"]["hostPath"]["path"])
                    directory.mkdir(parents=True, exist_ok=True)
                    directory.chmod(0o777)  # see the module doc: any pod user writes here
                    log.info("provisioned %s for claim %s/%s", body["metadata"]["name"],
                             claim["metadata"]["namespace"], claim["metadata"]["name"])
                except ApiException as error:
                    if error.status != 409:
                        raise
        volumes = self.core.list_persistent_volume(label_selector=f"{PROVISIONED_BY}={self.owner}",
                                               _request_timeout=API_TIMEOUT_S)
        for volume in volumes.items:
            if volume.status and volume.status.phase in ("Released", "Failed"):
                try:
                    self.core.delete_persistent_volume(volume.metadata.name, _request_timeout=API_TIMEOUT_S)
                except ApiException as error:
                    if error.status != 404:
                        raise
                shutil.rmtree(volume.spec.host_path.path, ignore_errors=True)
                log.info("deleted released volume %s", volume.metadata.name)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m volt_operator.testing.node_agent.provisioner",
                                     description="Bind unbound PVCs to hostPath PVs under --root.")
    parser.add_argument("--kubeconfig", required=True, help="a kubeconfig allowed to manage PVs and read PVCs")
    parser.add_argument("--root", required=True, type=Path, help="directory that holds the volumes")
    parser.add_argument("--owner", required=True, help="label value that marks this provisioner's PVs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    provisioner = Provisioner(config.new_client_from_config(config_file=args.kubeconfig), args.root, args.owner)
    provisioner.sync()
    print(READY_LINE, flush=True)
    while not stopping.wait(PERIOD_S):
        try:
            provisioner.sync()
        except Exception as error:  # the API server restarting, a timeout: try again next period
            log.warning("volume provisioner: %s", error)


if __name__ == "__main__":
    main()
