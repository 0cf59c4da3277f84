"""Pure parts of the real-node harness (operator/volt_operator/testing/kubelet_nodes.py)."""
from __future__ import annotations

import pytest

from volt_operator.testing.kubelet_nodes import normalize_ref, repository, stale_image_refs

TRAINER = "docker.io/library/volt-trainer"


@pytest.mark.parametrize("ref, repo", [
    (f"{TRAINER}:e2e", TRAINER),
    (f"{TRAINER}@sha256:abc", TRAINER),
    ("localhost:5000/volt-trainer:1", "localhost:5000/volt-trainer"),
    ("localhost:5000/volt-trainer", "localhost:5000/volt-trainer"),
    ("volt.local/pause:1", "volt.local/pause"),
])
def test_repository_drops_tag_and_digest(ref: str, repo: str) -> None:
    assert repository(ref) == repo


def test_a_rebuilt_tag_leaves_its_old_id_reference_which_is_deleted() -> None:
    # What containerd listed on a node after two trainer builds under one tag.
    images = [(f"{TRAINER}:e2e", "m-new"), ("sha256:new", "m-new"), ("sha256:old", "m-old"),
              ("volt.local/pause:1", "m-pause"), ("sha256:pause", "m-pause")]
    assert stale_image_refs(images, [f"{TRAINER}:e2e"], []) == ["sha256:old"]
    # At `up` (only the pause image loaded) the orphan goes as well, and nothing named.
    assert stale_image_refs(images, ["volt.local/pause:1"], []) == ["sha256:old"]


def test_another_tag_of_the_loaded_repository_is_deleted_unless_it_is_the_same_image() -> None:
    images = [(f"{TRAINER}:0.1.0", "m-a"), ("sha256:a", "m-a"), (f"{TRAINER}:e2e", "m-b"), ("sha256:b", "m-b"),
              (f"{TRAINER}:same", "m-b"), ("docker.io/library/volt-operator:0.1.0", "m-op")]
    assert stale_image_refs(images, [normalize_ref("volt-trainer:e2e")], []) == [f"{TRAINER}:0.1.0", "sha256:a"]


def test_an_image_a_container_uses_is_kept() -> None:
    images = [(f"{TRAINER}:0.1.0", "m-a"), ("sha256:a", "m-a"), (f"{TRAINER}:e2e", "m-b"),
              ("sha256:old", "m-old")]
    assert stale_image_refs(images, [f"{TRAINER}:e2e"], [f"{TRAINER}:0.1.0"]) == ["sha256:old"]
    assert stale_image_refs(images, [f"{TRAINER}:e2e"], ["sha256:old"]) == [f"{TRAINER}:0.1.0", "sha256:a"]
    assert stale_image_refs(images, [f"{TRAINER}:e2e"], ["sha256:a"]) == ["sha256:old"]
