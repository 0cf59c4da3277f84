"""Reading `docker save`'s archive and writing the OCI layout the real nodes import
(operator/volt_operator/testing/node_images.py), on archives built here in the layout
docker writes: `<id>/layer.tar` per layer, `<config digest>.json`, `manifest.json`.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from volt_operator.testing import node_images

BIG = node_images.ALWAYS_KEEP_BYTES  # the smallest size whose keeping depends on what nodes hold


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(files: List[Tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def docker_archive(layers: List[bytes]) -> Tuple[bytes, bytes]:
    """A docker-archive of an image with these layer tars, and its config. The layer
    directories are named so that they sort out of layer order, as docker's do."""
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": [digest(layer) for layer in layers]}}).encode()
    dirs = [f"{9 - i:064x}" for i in range(len(layers))]
    files = [(f"{d}/layer.tar", layer) for d, layer in sorted(zip(dirs, layers))]
    config_name = digest(config).split(":")[1] + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": ["volt-trainer:e2e"],
                            "Layers": [f"{d}/layer.tar" for d in dirs]}]).encode()
    return tar_bytes(files + [(config_name, config), ("manifest.json", manifest)]), config


def read_oci(data: bytes) -> Dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.fixture
def layers() -> List[bytes]:
    # A base, a big dependency layer and a small code layer: only the big one may be skipped.
    return [tar_bytes([("base", b"b" * 1000)]), tar_bytes([("torch", b"t" * BIG)]), tar_bytes([("code", b"v2")])]


def test_every_layer_is_hashed_and_a_big_one_of_a_held_size_is_not_kept(tmp_path: Path, layers: List[bytes]) -> None:
    archive, config = docker_archive(layers)
    saved = node_images.split_saved_image(io.BytesIO(archive), tmp_path, skip_sizes={len(layers[1])})
    assert saved.config == config and saved.image_id == digest(config)
    assert saved.diff_ids == [digest(layer) for layer in layers]  # manifest order, not archive order
    assert saved.sizes == {digest(layer): len(layer) for layer in layers}
    assert sorted(saved.kept) == sorted([digest(layers[0]), digest(layers[2])])
    assert all(saved.kept[digest(layer)].read_bytes() == layer for layer in (layers[0], layers[2]))


def test_small_layers_are_kept_whatever_their_size(tmp_path: Path, layers: List[bytes]) -> None:
    archive, _ = docker_archive(layers)
    saved = node_images.split_saved_image(io.BytesIO(archive), tmp_path,
                                          skip_sizes={len(layer) for layer in layers})
    assert sorted(saved.kept) == sorted([digest(layers[0]), digest(layers[2])])


def test_the_oci_layout_names_the_image_and_holds_only_the_layers_asked_for(
        tmp_path: Path, layers: List[bytes]) -> None:
    archive, config = docker_archive(layers)
    saved = node_images.split_saved_image(io.BytesIO(archive), tmp_path, skip_sizes={len(layers[1])})
    out = io.BytesIO()
    node_images.oci_archive(saved, "docker.io/library/volt-trainer:e2e", [digest(layers[2])], out)
    files = read_oci(out.getvalue())
    index = json.loads(files["index.json"])
    [entry] = index["manifests"]
    assert entry["annotations"] == {"io.containerd.image.name": "docker.io/library/volt-trainer:e2e"}
    manifest_bytes = files["blobs/sha256/" + entry["digest"].split(":")[1]]
    assert digest(manifest_bytes) == entry["digest"] and len(manifest_bytes) == entry["size"]
    manifest = json.loads(manifest_bytes)
    assert manifest["config"]["digest"] == digest(config) and files["blobs/sha256/" + digest(config)[7:]] == config
    assert [(layer["digest"], layer["size"]) for layer in manifest["layers"]] == \
        [(digest(layer), len(layer)) for layer in layers]
    blobs = {name for name in files if name.startswith("blobs/")}
    assert blobs == {f"blobs/sha256/{d[7:]}" for d in (entry["digest"], digest(config), digest(layers[2]))}
    assert files["blobs/sha256/" + digest(layers[2])[7:]] == layers[2]


def test_an_archive_whose_layers_do_not_match_its_config_is_refused(tmp_path: Path, layers: List[bytes]) -> None:
    archive, _ = docker_archive(layers)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        files = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]  # type: ignore[union-attr]
    swapped = [(name, layers[0] if data == layers[2] else data) for name, data in files]
    with pytest.raises(ValueError, match="diff_ids"):
        node_images.split_saved_image(io.BytesIO(tar_bytes(swapped)), tmp_path, skip_sizes=set())
    with pytest.raises(ValueError, match="manifest.json"):
        node_images.split_saved_image(io.BytesIO(tar_bytes(files[:-1])), tmp_path, skip_sizes=set())


def test_skip_sizes_are_those_of_the_image_layers_every_node_holds() -> None:
    sizes = {"sha256:a": 10, "sha256:b": 20, "sha256:c": 30}
    assert node_images.skip_sizes(["sha256:a", "sha256:b", "sha256:d"], {"sha256:a", "sha256:c", "sha256:d"},
                                  sizes) == {10}


# Three layers of an image and the snapshot keys containerd 1.6 gave them when it unpacked them.
DIFF_IDS = ["sha256:58f40e3cc6d91b1f57be5e47898f51a54e6b55280e632133f87cadab368b18af",
            "sha256:16094e532433abb23122445d23b5bcca362fc0cc2f9caadab87f5f3b5643e7ab",
            "sha256:0eb9323ce7a74651b3d14e08773fb5dca2d66e70e40f6597c79c8abb4fba6fa2"]
CONTAINERD_SNAPSHOTS = ["sha256:58f40e3cc6d91b1f57be5e47898f51a54e6b55280e632133f87cadab368b18af",
                        "sha256:309ba8d2b093e6282f1f896a38dcd066592d6c2a04d4bbeb93e50626cd6aaff4",
                        "sha256:4e5e914d830a6ea4cbb06bcdc5f62a3ccbce5465eadae273175b07cb63f0d9c4"]


def test_chain_ids_are_the_snapshot_keys_containerd_unpacks_layers_under() -> None:
    assert node_images.chain_ids(DIFF_IDS) == CONTAINERD_SNAPSHOTS
    assert node_images.chain_ids([]) == []


def test_a_layer_counts_as_unpacked_only_on_top_of_every_layer_below_it() -> None:
    assert node_images.unpacked_layers(DIFF_IDS, set(CONTAINERD_SNAPSHOTS)) == DIFF_IDS
    assert node_images.unpacked_layers(DIFF_IDS, set(CONTAINERD_SNAPSHOTS[:2])) == DIFF_IDS[:2]
    # the second layer missing: the third's snapshot cannot be reused, whatever the store lists
    assert node_images.unpacked_layers(DIFF_IDS, {CONTAINERD_SNAPSHOTS[0], CONTAINERD_SNAPSHOTS[2]}) == DIFF_IDS[:1]
    # the same layer on another base is another snapshot
    assert node_images.unpacked_layers(DIFF_IDS[1:], set(CONTAINERD_SNAPSHOTS)) == []
