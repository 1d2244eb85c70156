"""The build cache: which image a build step made from which parent, kept in the store.

A step's key is a sha256 over the parent image id, the instruction with its resolved arguments and what
else decides its result (the build arguments in effect for RUN, the sources' digest for COPY and ADD, the id
of a ``--from`` image); ``step_key`` computes it from those parts. ``record`` writes
``ROOT/cache/build/<key>.json`` (atomically) naming the step's manifest; ``lookup`` answers with that image
only while its manifest, config and layer blobs are all still in the store (a garbage collection may have
taken them: then the step simply runs again).

The images a cache entry names are not tags: ``roots`` lists their manifests so that the store's
garbage collection can keep them, and ``prune`` removes the whole cache (``unionfs prune`` calls it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from unionfs.oci.digest import Digest
from unionfs.errors import UnionfsError
from unionfs.oci.manifest import Descriptor, ImageConfig, Manifest, canonical_json
from unionfs.store.store import Image, Store, atomic_write

CACHE_VERSION = 1


def cache_dir(store: Store) -> Path:
    """``ROOT/cache/build`` (not created)."""
    return store.root / "cache" / "build"


def step_key(parent: Digest | str, instruction: str, **extra: Any) -> str:
    """The hex key of one step (see the module docstring); ``extra`` values must be JSON-serialisable."""
    body = {"v": CACHE_VERSION, "parent": str(parent), "instruction": instruction, **extra}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def lookup(store: Store, key: str) -> Image | None:
    """The image a step with ``key`` made, when it is cached and all its blobs are present."""
    path = cache_dir(store) / f"{key}.json"
    try:
        entry = json.loads(path.read_bytes())
        desc = Descriptor.from_json(entry["manifest"])
        manifest = Manifest.parse(store.read_blob(desc.digest), desc.media_type or None)
        config = ImageConfig.parse(store.read_blob(manifest.config.digest))
    except (OSError, ValueError, KeyError, UnionfsError):
        return None
    if not all(store.has_blob(d.digest) for d in manifest.layers):
        return None
    return Image(desc, manifest, config, ())


def record(store: Store, key: str, image: Image, step: str) -> Path:
    """Remember that the step ``key`` made ``image``; returns the entry's path (for a rollback)."""
    d = cache_dir(store)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = d / f"{key}.json"
    atomic_write(path, canonical_json({"manifest": image.manifest_desc.to_json(), "step": step,
                                       "image": str(image.id)}))
    return path


def roots(store: Store) -> list[Descriptor]:
    """The manifests the cache names (for the store's garbage collection to keep)."""
    out: list[Descriptor] = []
    d = cache_dir(store)
    if not d.is_dir():
        return out
    for p in d.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, UnionfsError):
            out.append(Descriptor.from_json(json.loads(p.read_bytes())["manifest"]))
    return out


def prune(store: Store) -> list[str]:
    """Delete every cache entry; returns a line saying how many went (none when the cache was empty)."""
    d = cache_dir(store)
    if not d.is_dir():
        return []
    n = 0
    with store.lock():
        for p in d.iterdir():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                n += p.suffix == ".json"
    return [f"Deleted build cache: {n} entries"] if n else []


__all__ = ["step_key", "lookup", "record", "roots", "prune", "cache_dir"]
