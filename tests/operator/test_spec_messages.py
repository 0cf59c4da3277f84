"""Messages about a spec name fields, never values: the operator writes them into the
job's status and events, which more people can read than the spec's Secrets."""
from __future__ import annotations

from typing import Any, Dict

import pytest
from pydantic import ValidationError

from volt_operator.api import TrainingJobSpec, describe_invalid_spec

pytestmark = pytest.mark.timeout(30)

SECRET = "hunter2-AKIAIOSFODNN7EXAMPLE"


def invalid(**over: Any) -> ValidationError:
    body: Dict[str, Any] = {"image": "volt-trainer:0.1", "command": ["python", "train.py"]}
    body.update(over)
    with pytest.raises(ValidationError) as info:
        TrainingJobSpec.model_validate(body)
    return info.value


@pytest.mark.parametrize(("over", "field"), [
    # Too long: pydantic's own text would quote the start of the value.
    ({"env": [{"name": "API_TOKEN", "value": SECRET + "x" * 32768}]}, "spec.env.0.value"),
    ({"env": [{"name": "API_TOKEN", "value": SECRET, "valueFrom": {"secretKeyRef": {
        "name": "s", "key": "k"}}}]}, "env API_TOKEN: set value or valueFrom"),
    ({"template": {"env": [{"name": "API_TOKEN", "value": SECRET}, {"name": "9bad", "value": SECRET}]}},
     "spec.template.env.1.name"),
    ({"args": [SECRET] * 257}, "spec.args"),
    ({"command": [SECRET] * 65}, "spec.command"),
])
def test_invalid_spec_message_names_the_field_not_the_value(over: Dict[str, Any], field: str) -> None:
    exc = invalid(**over)
    assert "input_value=" in str(exc), "the control: pydantic's own text quotes the input"
    message = describe_invalid_spec(exc)
    assert field in message, message
    assert SECRET[:7] not in message, message


def test_every_error_is_reported() -> None:
    exc = invalid(env=[{"name": "9bad", "value": SECRET}], terminationGracePeriodSeconds=-1)
    message = describe_invalid_spec(exc)
    assert "spec.env.0.name" in message and "spec.terminationGracePeriodSeconds" in message
    assert SECRET[:7] not in message
