"""A docker image into the real nodes' containerd stores, without copying the layers they hold.

`docker save` writes every layer of an image (the trainer image's torch layer is 5.8 GB),
and `ctr images import` of that archive reads, hashes and ingests all of it on every node,
even the layers the node holds already: about 3 minutes for the trainer image after a
one-line code change. After such a change only the top layers are new. So the archive is
read once as it streams (`split_saved_image`): the layers some node lacks are kept in
files, the big layers every node holds are only hashed, and each node is then sent an OCI
image layout (`oci_archive`) with the image's config, its manifest and just the layers it
lacks; unpacking finds the others already unpacked, as the snapshots named by their chain
IDs (`unpacked_layers`), and skips them. The nodes keep no other copy of a layer: after an
import its blob is deleted (`RealNodes.discard_unpacked_blobs`).

A layer's digest is known only once it has been read, so whether to keep it is decided
from its size, which its tar header gives first: a big layer whose size is that of a layer
every node holds is not kept. Sizes are recorded at each import, by digest. Should a new
layer have that very size, it was not kept and the caller falls back to the full import.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Collection, Dict, List, Mapping, Optional, Sequence

# Layers below this size are always kept: keeping them costs nothing, and small sizes
# (a layer of a few directories) are the ones two layers share by chance.
ALWAYS_KEEP_BYTES = 64 << 20
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
_CHUNK = 1 << 20


@dataclass
class SavedImage:
    """What `split_saved_image` read from a docker-archive."""

    config: bytes
    diff_ids: List[str]                                         # the layers' digests, bottom first
    sizes: Dict[str, int]                                       # digest -> bytes, every layer
    kept: Dict[str, Path] = field(default_factory=dict)         # digest -> file holding the layer

    @property
    def image_id(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


def split_saved_image(archive: IO[bytes], workdir: Path, skip_sizes: Collection[int]) -> SavedImage:
    """Read `docker save`'s archive from a stream; keep in `workdir` each layer whose size is
    below ALWAYS_KEEP_BYTES or not in `skip_sizes`, and hash every layer."""
    workdir.mkdir(parents=True, exist_ok=True)
    layer_digests: Dict[str, str] = {}  # archive path -> digest
    sizes: Dict[str, int] = {}
    kept: Dict[str, Path] = {}
    top_level_json: Dict[str, bytes] = {}
    with tarfile.open(fileobj=archive, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                continue
            source = tar.extractfile(member)
            assert source is not None
            if member.name.endswith("/layer.tar"):
                keep = member.size < ALWAYS_KEEP_BYTES or member.size not in skip_sizes
                path = workdir / f"layer-{len(layer_digests)}.tar"
                digest = _copy_hashed(source, path if keep else None)
                layer_digests[member.name] = digest
                sizes[digest] = member.size
                if keep:
                    kept[digest] = path
            elif "/" not in member.name and member.name.endswith(".json"):
                top_level_json[member.name] = source.read()
    if "manifest.json" not in top_level_json:
        raise ValueError("not a docker-archive: no manifest.json")
    manifest = json.loads(top_level_json["manifest.json"])[0]
    config = top_level_json[manifest["Config"]]
    diff_ids = [layer_digests[path] for path in manifest["Layers"]]
    if diff_ids != json.loads(config)["rootfs"]["diff_ids"]:
        raise ValueError("the archive's layers do not match its config's rootfs.diff_ids")
    return SavedImage(config, diff_ids, sizes, {d: kept[d] for d in diff_ids if d in kept})


def _copy_hashed(source: IO[bytes], target: Optional[Path]) -> str:
    digest = hashlib.sha256()
    with (target.open("wb") if target is not None else io.BytesIO()) as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            if target is not None:
                out.write(chunk)
    return "sha256:" + digest.hexdigest()


def oci_manifest(image: SavedImage) -> bytes:
    """The image's OCI manifest: its config and its layers, uncompressed tars named by digest."""
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": image.image_id, "size": len(image.config)},
        "layers": [{"mediaType": LAYER_MEDIA_TYPE, "digest": d, "size": image.sizes[d]} for d in image.diff_ids],
    }, separators=(",", ":")).encode()


def oci_archive(image: SavedImage, name: str, layers: Collection[str], out: IO[bytes]) -> None:
    """Write to `out` an OCI image layout tar of `image` named `name` (a normalized reference)
    that holds the config, the manifest and only the blobs of `layers` (digests)."""
    manifest = oci_manifest(image)
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": MANIFEST_MEDIA_TYPE,
        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
        "size": len(manifest),
        "annotations": {"io.containerd.image.name": name},
    }]}).encode()
    with tarfile.open(fileobj=out, mode="w|") as tar:
        _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add_bytes(tar, _blob_path(image.image_id), image.config)
        _add_bytes(tar, _blob_path("sha256:" + hashlib.sha256(manifest).hexdigest()), manifest)
        for digest in image.diff_ids:
            if digest in layers:
                info = tarfile.TarInfo(_blob_path(digest))
                info.size = image.sizes[digest]
                with image.kept[digest].open("rb") as data:
                    tar.addfile(info, data)
        _add_bytes(tar, "index.json", index)


def _blob_path(digest: str) -> str:
    algorithm, hex_digest = digest.split(":", 1)
    return f"blobs/{algorithm}/{hex_digest}"


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def chain_ids(diff_ids: Sequence[str]) -> List[str]:
    """Each layer's chain ID, bottom first: the name of the snapshot that holds it unpacked on
    top of every layer below it (the OCI image spec's ChainID)."""
    chain: List[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def unpacked_layers(diff_ids: Sequence[str], committed: Collection[str]) -> List[str]:
    """The image's bottom layers that a store of `committed` snapshot keys holds unpacked,
    so that an import of the image can skip them: each up to the first whose chain is missing."""
    held: List[str] = []
    for diff_id, chain in zip(diff_ids, chain_ids(diff_ids)):
        if chain not in committed:
            break
        held.append(diff_id)
    return held


def skip_sizes(diff_ids: Collection[str], held_by_every_node: Collection[str],
               known_sizes: Mapping[str, int]) -> set[int]:
    """The sizes of the image's layers that every node holds (as far as sizes are known)."""
    return {known_sizes[d] for d in diff_ids if d in held_by_every_node and d in known_sizes}


def remove(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
