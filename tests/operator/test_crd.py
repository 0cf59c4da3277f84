"""The committed CRD is exactly what the models generate, and it is structural."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest
import yaml

from volt_operator import api, crdgen, docgen

pytestmark = pytest.mark.timeout(30)

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "trainingjob.yaml"


def test_committed_crd_matches_models() -> None:
    committed = CRD_PATH.read_text()
    assert committed == crdgen.render(), (
        "crds/trainingjob.yaml drifted from operator/volt_operator/api.py; run `make crds`"
    )


def test_chart_copy_and_api_reference_match_models() -> None:
    root = CRD_PATH.parents[1]
    chart_copy = root / "charts" / "volt" / "crds" / "trainingjob.yaml"
    assert chart_copy.read_text() == crdgen.render(), "run `make crds`"
    assert (root / "docs" / "trainingjob.md").read_text() == docgen.render(), "run `make crds`"


def _walk(node: Any, path: str = "") -> Iterator[Tuple[str, Any]]:
    if isinstance(node, dict):
        yield path, node
        for key in ("properties",):
            for name, sub in (node.get(key) or {}).items():
                yield from _walk(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from _walk(node[key], f"{path}[{key}]")


def _schema() -> dict:
    return crdgen.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural() -> None:
    """Every node has a type, or is int-or-string / preserve-unknown; no refs or unions."""
    for path, node in _walk(_schema()):
        assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node, path
        assert "title" not in node, path
        untyped_ok = node.get("x-kubernetes-int-or-string") or node.get(
            "x-kubernetes-preserve-unknown-fields"
        )
        assert "type" in node or untyped_ok, f"{path} has no type"
        if "properties" in node:
            assert "additionalProperties" not in node, path


def test_preserve_unknown_fields_only_where_needed() -> None:
    allowed = {
        ".spec.env[items].valueFrom",
        ".spec.template.env[items].valueFrom",
        ".spec.template.affinity",
        ".spec.template.securityContext",
        ".spec.template.containerSecurityContext",
        ".spec.template.volumes[items]",
    }
    found = {
        path for path, node in _walk(_schema())
        if node.get("x-kubernetes-preserve-unknown-fields")
    }
    assert found == allowed


def test_names_columns_and_subresources() -> None:
    crd = crdgen.crd()
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"]) == ("TrainingJob", "trainingjobs")
    assert names["shortNames"] == ["tj"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [(c["name"].upper(), c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("PHASE", ".status.phase"),
        ("NODES", ".status.readyNodes"),
        ("EPOCH", ".status.training.epoch"),
        ("STEP", ".status.training.step"),
        ("LOSS", ".status.training.loss"),
        ("PROGRESS", ".status.training.percent"),
        ("ETA", ".status.training.eta"),
        ("RESTARTS", ".status.restarts"),
        ("AGE", ".metadata.creationTimestamp"),
        ("CHECKPOINT", ".status.checkpoint.path"),
        ("REASON", '.status.conditions[?(@.type=="Running")].reason'),
    ]


def test_defaults_enums_and_rules_come_from_models() -> None:
    spec = _schema()["properties"]["spec"]
    props = spec["properties"]
    assert props["trainer"]["properties"]["numNodes"]["default"] == 1
    assert props["trainer"]["properties"]["numNodes"]["minimum"] == 1
    assert props["resume"]["enum"] == ["Auto", "Never", "FromPath"]
    assert props["cleanPodPolicy"]["enum"] == ["None", "Running", "All"]
    assert props["failurePolicy"]["properties"]["maxRestarts"]["default"] == 3
    assert props["trainer"]["properties"]["precision"]["x-kubernetes-int-or-string"] is True
    precision = props["trainer"]["properties"]["precision"]
    # A rule, not an enum: the API server's message lists each precision once (16 and "16" are one).
    assert "enum" not in precision
    (rule,) = precision["x-kubernetes-validations"]
    listed = rule["message"].removeprefix("must be one of ").split(", ")
    assert listed == api.PRECISION_NAMES and len(set(listed)) == len(listed) and "bf16-mixed" in listed
    assert props["sharedMemory"]["default"] == {}
    rules = {r.get("fieldPath"): r for r in spec["x-kubernetes-validations"]}
    for field in api.TrainingJobSpec.model_fields.values():
        alias = field.alias
        if alias in api.MUTABLE_SPEC_FIELDS:
            assert f".{alias}" not in rules
        elif alias == "trainer":  # immutable field by field, but for numNodes
            for sub in api.TrainerSettings.model_fields.values():
                if sub.alias in api.MUTABLE_TRAINER_FIELDS:
                    continue
                assert "oldSelf" in rules[f".trainer.{sub.alias}"]["rule"], sub.alias
            assert "oldSelf" not in rules[".trainer.numNodes"]["rule"]
        else:
            assert "oldSelf" in rules[f".{alias}"]["rule"], alias
            assert f"spec.{alias} is immutable" in rules[f".{alias}"]["message"]


def test_committed_file_is_valid_yaml_crd() -> None:
    doc = yaml.safe_load(CRD_PATH.read_text())
    assert doc["kind"] == "CustomResourceDefinition"
    assert doc["metadata"]["name"] == "trainingjobs.volt.dev"
