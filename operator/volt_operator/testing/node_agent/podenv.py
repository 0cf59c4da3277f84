"""A container's environment, resolved the way the kubelet does.

Covers `env` values with `$(VAR)` expansion, `valueFrom` (fieldRef downward
API, resourceFieldRef, configMapKeyRef, secretKeyRef) and `envFrom`. ConfigMaps
and Secrets come through the `lookup` callable, so this module stays pure and
is tested without an API server.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any, Callable, Mapping

# lookup(kind, namespace, name) -> the object's data (Secret values decoded) or None
Lookup = Callable[[str, str, str], "Mapping[str, str] | None"]


class EnvError(ValueError):
    """A container's env cannot be resolved (the kubelet's CreateContainerConfigError)."""


_LABEL_PATH = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


def expand(value: str, defined: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes, others stay."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return defined.get(name, match.group(0))

    return _REFERENCE.sub(substitute, value)


def field_value(pod: Mapping[str, Any], field_path: str) -> str:
    """The value of a downward API fieldRef path for `pod`."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    match = _LABEL_PATH.match(field_path)
    if match:
        return str((metadata.get(match.group(1)) or {}).get(match.group(2), ""))
    simple = {
        "metadata.name": metadata.get("name"),
        "metadata.namespace": metadata.get("namespace"),
        "metadata.uid": metadata.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.hostIP": status.get("hostIP"),
        "status.podIP": status.get("podIP"),
        "status.hostIPs": ",".join(i["ip"] for i in status.get("hostIPs") or []),
        "status.podIPs": ",".join(i["ip"] for i in status.get("podIPs") or []),
    }
    if field_path == "metadata.labels" or field_path == "metadata.annotations":
        items = metadata.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    if field_path not in simple:
        raise EnvError(f"unsupported fieldRef.fieldPath {field_path!r}")
    return str(simple[field_path] or "")


_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60, "m": 1e-3}


def parse_quantity(quantity: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "2Gi", "1e3") as a number."""
    text = str(quantity).strip()
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)", text)
    if not match or match.group(2) not in _SUFFIX:
        raise EnvError(f"invalid resource quantity {quantity!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any],
                   node_allocatable: Mapping[str, str]) -> str:
    """resourceFieldRef: a request or limit divided by the divisor, rounded up like the kubelet.

    An unset limit falls back to the node's allocatable amount, as in Kubernetes.
    """
    resource = ref.get("resource", "")
    kind, _, name = resource.partition(".")
    if kind not in ("requests", "limits") or not name:
        raise EnvError(f"unsupported resourceFieldRef.resource {resource!r}")
    amounts = (container.get("resources") or {}).get(kind) or {}
    raw = amounts.get(name)
    if raw is None:
        raw = node_allocatable.get(name) if kind == "limits" else "0"
    divisor = parse_quantity(ref.get("divisor") or "1")
    return str(int(math.ceil(parse_quantity(raw or "0") / divisor)))


def _ref_value(kind: str, ref: Mapping[str, Any], namespace: str, lookup: Lookup,
               variable: str) -> str | None:
    data = lookup(kind, namespace, ref.get("name", ""))
    optional = bool(ref.get("optional"))
    if data is None:
        if optional:
            return None
        raise EnvError(f"env {variable}: {kind} {namespace}/{ref.get('name')!r} not found")
    if ref["key"] not in data:
        if optional:
            return None
        raise EnvError(f"env {variable}: key {ref['key']!r} not in {kind} {ref.get('name')!r}")
    return data[ref["key"]]


def resolve_env(pod: Mapping[str, Any], container: Mapping[str, Any], base: Mapping[str, str],
                lookup: Lookup, node_allocatable: Mapping[str, str] | None = None) -> dict[str, str]:
    """The full environment of `container`: `base` (the "image" env), then envFrom, then env."""
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    env: dict[str, str] = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind_key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
            ref = source.get(kind_key)
            if ref is None:
                continue
            data = lookup(kind, namespace, ref.get("name", ""))
            if data is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f"envFrom: {kind} {namespace}/{ref.get('name')!r} not found")
            env.update({prefix + key: value for key, value in data.items()})
    for variable in container.get("env") or []:
        name = variable["name"]
        if "valueFrom" not in variable or variable.get("value") is not None:
            env[name] = expand(str(variable.get("value") or ""), env)
            continue
        source = variable["valueFrom"]
        if "fieldRef" in source:
            value: str | None = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            value = resource_value(container, source["resourceFieldRef"], node_allocatable or {})
        elif "configMapKeyRef" in source:
            value = _ref_value("ConfigMap", source["configMapKeyRef"], namespace, lookup, name)
        elif "secretKeyRef" in source:
            value = _ref_value("Secret", source["secretKeyRef"], namespace, lookup, name)
        else:
            raise EnvError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


def decode_secret(data: Mapping[str, str] | None) -> dict[str, str] | None:
    """Secret `data` values are base64 in the API."""
    if data is None:
        return None
    return {key: base64.b64decode(value).decode("utf-8", "replace") for key, value in data.items()}
