"""A local-path style volume provisioner: hostPath PVs for unbound claims.

A cluster without a provisioner leaves a PVC Pending and its pods
unschedulable. Every few seconds the agent lists the PVCs; for each one that is
unbound and asks for no class, or for the class `volt-local`, it creates a
hostPath PV under `<workdir>/pv/` pre-bound to the claim (claimRef), and the
PV controller in kube-controller-manager completes the binding. Released PVs
it made (their claim was deleted) are deleted with their directory, which is
what the `Delete` reclaim policy of a real provisioner does.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)

STORAGE_CLASS = "volt-local"
PROVISIONED_BY = "volt.dev/local-provisioner"
API_TIMEOUT_S = 15


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
                    Path(body["spec"]["hostPath"]["path"]).mkdir(parents=True, exist_ok=True)
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
