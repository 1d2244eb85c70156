"""A tiny real image (one gzip layer holding one file) pushed with the protocol client: for tests that need a
pullable image in a registry without building one with umoci and skopeo."""

from __future__ import annotations

import io
import json

from support.tar import build, file, gz, image_config, sha_of
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST
from unionfs.registry.client import RegistryClient


def tiny_manifest(text: str) -> tuple[bytes, dict[str, bytes]]:
    """An OCI manifest whose one layer holds ``/hello`` with ``text``, and its blobs by digest string."""
    tar = build([file("hello", text.encode())])
    layer = gz(tar)
    config = json.dumps(image_config([sha_of(tar)])).encode()
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                      "config": {"mediaType": OCI_CONFIG, "digest": sha_of(config), "size": len(config)},
                      "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha_of(layer), "size": len(layer)}]},
                     indent=1).encode()
    return raw, {sha_of(config): config, sha_of(layer): layer}


def push_tiny_image(client: RegistryClient, repository: str, tag: str, text: str) -> str:
    """Push the image of ``tiny_manifest(text)`` as ``repository:tag``; returns its manifest digest."""
    raw, blobs = tiny_manifest(text)
    for digest, data in blobs.items():
        client.push_blob(repository, Digest.parse(digest), len(data), lambda d=data: io.BytesIO(d))
    return str(client.put_manifest(repository, tag, raw, OCI_MANIFEST))
