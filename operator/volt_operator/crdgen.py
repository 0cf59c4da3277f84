"""Generate the TrainingJob CustomResourceDefinition from the pydantic models.

    python -m volt_operator.crdgen > crds/trainingjob.yaml     (make crds)

pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural*
OpenAPI v3 schema. The conversion inlines ``$ref``, turns ``Optional[X]`` into
X, ``int | str`` into ``x-kubernetes-int-or-string``, ``int | float`` into
``number``, keeps descriptions, defaults, enums and the CEL rules the models
carry, and drops what Kubernetes refuses (titles, ``additionalProperties:
false`` next to ``properties``, draft-2020 exclusive bounds).
"""
from __future__ import annotations

import copy
import sys
from typing import Any, Dict, List

import yaml

from . import api

_DROP = {"title", "$defs"}


def _merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve(node: Any, defs: Dict[str, Any]) -> Any:
    """Inline every ``$ref`` (Kubernetes schemas cannot reference)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve(_merge(target, rest), defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _branch_types(branches: List[Dict[str, Any]]) -> List[str]:
    return [b.get("type", "?") for b in branches]


def _structural(node: Any) -> Any:
    """Rewrite one (already inlined) JSON-schema node into a structural one."""
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in _DROP}
    if node.get("default", 0) is None:
        del node["default"]

    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        types = sorted(_branch_types(branches))
        if node.get("x-kubernetes-preserve-unknown-fields"):
            base: Dict[str, Any] = {"type": "object"} if types == ["object"] else {}
        elif len(branches) == 1:
            base = branches[0]
        elif types == ["integer", "string"]:
            base = {}
            node["x-kubernetes-int-or-string"] = True
        elif types == ["integer", "number"]:
            base = {"type": "number"}
        else:
            raise ValueError(f"no structural form for a union of {types}: {branches}")
        node = {k: v for k, v in _merge(base, node).items() if k not in _DROP}

    if node.get("x-kubernetes-int-or-string") or (
        node.get("x-kubernetes-preserve-unknown-fields") and "properties" not in node
    ):
        # No type: the value may be of several JSON types. A free-form object
        # keeps `type: object`, which CEL rules need to see the field at all.
        was_object = node.get("type") == "object"
        for key in ("type", "additionalProperties", "items"):
            if key == "additionalProperties" and isinstance(node.get(key), dict):
                continue
            node.pop(key, None)
        if node.get("x-kubernetes-preserve-unknown-fields") and (
            "additionalProperties" in node or was_object
        ):
            node["type"] = "object"

    if node.get("additionalProperties") is False or (
        "properties" in node and "additionalProperties" in node
    ):
        del node["additionalProperties"]
    if node.get("additionalProperties") is True:
        node["additionalProperties"] = {"x-kubernetes-preserve-unknown-fields": True}
    if node.get("type") == "object" and not {"properties", "additionalProperties"} & node.keys():
        node["x-kubernetes-preserve-unknown-fields"] = True

    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), (int, float)) and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True

    out: Dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _structural(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _structural(value)
        else:
            out[key] = value
    if "enum" in out and out.get("x-kubernetes-int-or-string"):
        out["enum"] = list(out["enum"])
    return out


def openapi_schema(model: type) -> Dict[str, Any]:
    """Structural OpenAPI v3 schema of one pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _structural(_resolve(raw, defs))


def crd() -> Dict[str, Any]:
    """The CustomResourceDefinition object."""
    spec = openapi_schema(api.TrainingJobSpec)
    status = openapi_schema(api.TrainingJobStatus)
    root = {
        "type": "object",
        "description": "A distributed PyTorch training run: a gang of DDP pods.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        # Rules on metadata must sit at the root (only name is visible there).
        "x-kubernetes-validations": [
            api.cel(
                "self.metadata.name.size() <= 50 && "
                "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
                "metadata.name must be a DNS-1035 label of at most 50 characters "
                "(pods are named <name>-node-<i>)",
            )
        ],
    }
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Nodes", "type": "string", "jsonPath": ".status.readyNodes",
         "description": "ready/desired nodes"},
        {"name": "Epoch", "type": "integer", "jsonPath": ".status.training.epoch"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.training.step"},
        {"name": "Loss", "type": "number", "jsonPath": ".status.training.loss"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.training.percent"},
        {"name": "ETA", "type": "string", "jsonPath": ".status.training.eta",
         "description": "estimated time left"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Checkpoint", "type": "string", "jsonPath": ".status.checkpoint.path", "priority": 1,
         "description": "the latest checkpoint rank 0 reported"},
        {"name": "Reason", "type": "string", "priority": 1,
         "jsonPath": '.status.conditions[?(@.type=="Running")].reason',
         "description": "why the job is (not) running"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": ["volt", "ml"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


HEADER = (
    "# Generated by `python -m volt_operator.crdgen` (make crds) from\n"
    "# operator/volt_operator/api.py. Do not edit by hand.\n"
)


def render() -> str:
    """The CRD as the YAML text committed in crds/trainingjob.yaml."""
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
