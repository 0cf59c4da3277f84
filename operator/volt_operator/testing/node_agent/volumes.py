"""Pod volumes as host directories, and container mounts as bind mounts.

- emptyDir: a directory under the pod's dir, removed with the pod (medium
  Memory is a plain directory too: no tmpfs, no sizeLimit).
- hostPath: the host path itself (type checked; the *OrCreate types create).
- persistentVolumeClaim: the hostPath of the bound PV (the agent's provisioner
  binds unbound claims to hostPath PVs under its workdir).
- configMap, secret, downwardAPI, projected (incl. serviceAccountToken through
  the TokenRequest API): files written once when the pod starts.

Anything else is refused with a message naming the volume. The mounts are
bind mounts that `sandbox.py` makes in the container's private mount namespace.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

from .podenv import EnvError, field_value


class VolumeError(ValueError):
    """A volume or mount the agent cannot realise; the pod stays Pending with this message."""


class VolumeSources(Protocol):
    """What volumes need from the API server."""

    def data(self, kind: str, namespace: str, name: str) -> Mapping[str, str] | None: ...

    def claim_host_path(self, namespace: str, claim: str) -> str: ...

    def service_account_token(self, pod: Mapping[str, Any], audience: str | None,
                              expiration_seconds: int) -> str: ...


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    def to_spec(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "readOnly": self.read_only}


_HOST_PATH_CHECKS = {
    "Directory": os.path.isdir,
    "File": os.path.isfile,
    "Socket": lambda p: os.path.exists(p) and Path(p).is_socket(),
    "CharDevice": lambda p: os.path.exists(p) and Path(p).is_char_device(),
    "BlockDevice": lambda p: os.path.exists(p) and Path(p).is_block_device(),
}


def _host_path(volume: Mapping[str, Any]) -> str:
    spec = volume["hostPath"]
    path, kind = spec["path"], spec.get("type") or ""
    if kind == "DirectoryOrCreate":
        os.makedirs(path, exist_ok=True)
    elif kind == "FileOrCreate" and not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        open(path, "a").close()
    elif kind in _HOST_PATH_CHECKS and not _HOST_PATH_CHECKS[kind](path):
        raise VolumeError(f"volume {volume['name']!r}: hostPath {path} is not a {kind}")
    return path


def _write_files(directory: Path, files: Mapping[str, str | bytes], mode: int) -> None:
    for relative, content in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
        os.chmod(target, mode)


def _select(data: Mapping[str, str], source: Mapping[str, Any], what: str) -> dict[str, str]:
    items = source.get("items")
    if not items:
        return dict(data)
    selected = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise VolumeError(f"{what}: key {item['key']!r} not found")
        selected[item["path"]] = data[item["key"]]
    return selected


def _object_files(kind: str, source: Mapping[str, Any], pod: Mapping[str, Any],
                  sources: VolumeSources, what: str) -> dict[str, str]:
    namespace = pod["metadata"]["namespace"]
    name = source.get("name") if kind == "ConfigMap" else source.get("secretName", source.get("name"))
    data = sources.data(kind, namespace, name or "")
    if data is None:
        if source.get("optional"):
            return {}
        raise VolumeError(f"{what}: {kind} {namespace}/{name} not found")
    return _select(data, source, what)


def _downward_files(source: Mapping[str, Any], pod: Mapping[str, Any], what: str) -> dict[str, str]:
    files = {}
    for item in source.get("items") or []:
        if "fieldRef" not in item:
            raise VolumeError(f"{what}: only fieldRef items are supported")
        try:
            files[item["path"]] = field_value(pod, item["fieldRef"]["fieldPath"])
        except EnvError as error:
            raise VolumeError(f"{what}: {error}") from error
    return files


def _projected_files(volume: Mapping[str, Any], pod: Mapping[str, Any],
                     sources: VolumeSources) -> dict[str, str]:
    what = f"volume {volume['name']!r}"
    files: dict[str, str] = {}
    for source in volume["projected"].get("sources") or []:
        if "configMap" in source:
            files.update(_object_files("ConfigMap", source["configMap"], pod, sources, what))
        elif "secret" in source:
            files.update(_object_files("Secret", source["secret"], pod, sources, what))
        elif "downwardAPI" in source:
            files.update(_downward_files(source["downwardAPI"], pod, what))
        elif "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            files[token["path"]] = sources.service_account_token(
                pod, token.get("audience"), int(token.get("expirationSeconds") or 3600))
        else:
            raise VolumeError(f"{what}: unsupported projected source {sorted(source)}")
    return files


def prepare_volumes(pod: Mapping[str, Any], pod_dir: Path, sources: VolumeSources) -> dict[str, str]:
    """Create every volume of `pod` on the host; returns volume name -> host path."""
    paths: dict[str, str] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume["name"]
        local = pod_dir / "volumes" / name
        what = f"volume {name!r}"
        if "emptyDir" in volume:
            local.mkdir(parents=True, exist_ok=True)
            paths[name] = str(local)
        elif "hostPath" in volume:
            paths[name] = _host_path(volume)
        elif "persistentVolumeClaim" in volume:
            paths[name] = sources.claim_host_path(
                pod["metadata"]["namespace"], volume["persistentVolumeClaim"]["claimName"])
        elif "configMap" in volume or "secret" in volume or "downwardAPI" in volume or "projected" in volume:
            if "configMap" in volume:
                source, files = volume["configMap"], _object_files(
                    "ConfigMap", volume["configMap"], pod, sources, what)
            elif "secret" in volume:
                source, files = volume["secret"], _object_files(
                    "Secret", volume["secret"], pod, sources, what)
            elif "downwardAPI" in volume:
                source, files = volume["downwardAPI"], _downward_files(volume["downwardAPI"], pod, what)
            else:
                source, files = volume["projected"], _projected_files(volume, pod, sources)
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
            _write_files(local, files, int(source.get("defaultMode") or 0o644))
            paths[name] = str(local)
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise VolumeError(f"{what}: unsupported volume type {kinds} (the local node agent "
                              "supports emptyDir, hostPath, persistentVolumeClaim, configMap, "
                              "secret, downwardAPI and projected)")
    return paths


def container_mounts(container: Mapping[str, Any], volume_paths: Mapping[str, str]) -> list[Mount]:
    """The bind mounts of one container: each volumeMount onto its volume's host path."""
    mounts = []
    for mount in container.get("volumeMounts") or []:
        name = mount["name"]
        if name not in volume_paths:
            raise VolumeError(f"container {container['name']!r}: volumeMount {name!r} "
                              "names no volume of the pod")
        source = volume_paths[name]
        sub_path = mount.get("subPath")
        if sub_path:
            if os.path.isabs(sub_path) or ".." in Path(sub_path).parts:
                raise VolumeError(f"container {container['name']!r}: subPath {sub_path!r} "
                                  "must be relative and stay inside the volume")
            source = os.path.join(source, sub_path)
            if not os.path.exists(source):
                os.makedirs(source)
        mounts.append(Mount(source, mount["mountPath"], bool(mount.get("readOnly"))))
    return mounts
