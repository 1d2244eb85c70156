"""The build cache: which image a build step made from which parent, kept in the store.

A step's key is a sha256 over the parent image id, the instruction with its resolved arguments and what
else decides its result (the build arguments in effect for RUN, the sources' digest for COPY and ADD, the id
of a ``--from`` image); ``step_key`` computes it from those parts. ``record`` writes the store's cache entry
``ROOT/cache/build/<key>.json`` naming the step's manifest (a garbage-collection root until ``unionfs prune``
empties the caches); ``lookup`` answers with that image only while its manifest, config and layer blobs are
all still in the store (a garbage collection may have taken them: then the step simply runs again).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from unionfs.errors import UnionfsError
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import ImageConfig, Manifest, canonical_json
from unionfs.store.store import Image, Store

CACHE_VERSION = 1
KIND = "build"  #: the store's cache kind: entries live in ``ROOT/cache/build``


def step_key(parent: Digest | str, instruction: str, **extra: Any) -> str:
    """The hex key of one step (see the module docstring); ``extra`` values must be JSON-serialisable."""
    body = {"v": CACHE_VERSION, "parent": str(parent), "instruction": instruction, **extra}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def lookup(store: Store, key: str) -> Image | None:
    """The image a step with ``key`` made, when it is cached and all its blobs are present."""
    hit = store.cached(KIND, key)
    if hit is None:
        return None
    desc = hit[0]
    try:
        manifest = Manifest.parse(store.read_blob(desc.digest), desc.media_type or None)
        config = ImageConfig.parse(store.read_blob(manifest.config.digest))
    except (OSError, ValueError, UnionfsError):
        return None
    if not all(store.has_blob(d.digest) for d in manifest.layers):
        return None
    return Image(desc, manifest, config, ())


def record(store: Store, key: str, image: Image, step: str) -> Path:
    """Remember that the step ``key`` made ``image``; returns the entry's path (for a rollback)."""
    return store.put_cached(KIND, key, image.manifest_desc, step=step, image=str(image.id))


__all__ = ["step_key", "lookup", "record", "KIND"]
