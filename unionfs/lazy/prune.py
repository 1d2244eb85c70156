"""``prune`` of the lazy layers: what nothing needs any more goes (``ROOT/lazy/<diffid>`` and
``ROOT/lazy/blobs/<hex>``), and the stages of killed preparations.

A lazy layer is kept while a container lists its DiffID (every lazy mount has its container, made before it
mounts, and a mounted container cannot be removed), or while an image of the store's index lists it and the
store does not hold it extracted (a *partial* image, recorded by ``mount --lazy``: its next lazy mount reuses
the layer and the files filled so far). A downloaded blob is kept while a container's manifest lists it, or an
index image's manifest lists it and the store does not hold it. So once the image is whole (pulled, or
completed in the background) or removed (``rmi``), and no container is left, ``prune`` drops them. Each goes by
a rename into the store's ``tmp/`` first, then a delete (``remove_tree``, which refuses a tree with a mount
inside): a kill leaves it whole or gone. Needs nothing of the daemon: run under the store's lock.
"""

from __future__ import annotations

import contextlib
import os

from unionfs.errors import ManifestError, UnionfsError
from unionfs.fsops import fsync_dir, remove_tree
from unionfs.lazy import layout
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import Manifest
from unionfs.store.store import Store


def _kept(store: Store) -> tuple[set[str], set[str]]:
    """The DiffID hexes of the lazy layers and the digest hexes of the downloaded blobs something needs (see the
    module docstring). Needs the store lock."""
    layers: set[str] = set()
    blobs: set[str] = set()
    for c in store.containers():
        layers.update(c.layers)
        with contextlib.suppress(UnionfsError, ManifestError, OSError):
            manifest = Manifest.parse(store.read_blob(Digest.parse(c.manifest)))
            blobs.update(d.digest.hex for d in manifest.layers)
    for image in store.images():
        for desc, diff_id in zip(image.manifest.layers, image.config.diff_ids):
            if not store.layer_path(diff_id).is_dir():
                layers.add(diff_id.hex)
            if not store.has_blob(desc.digest):
                blobs.add(desc.digest.hex)
    return layers, blobs


def prune_lazy(store: Store) -> list[str]:
    """Remove the lazy layers and downloaded blobs nothing needs; lines saying what went."""
    base = layout.lazy_root(str(store.root))
    if not os.path.isdir(base):
        return []
    out: list[str] = []
    with store.lock():
        keep_layers, keep_blobs = _kept(store)
        gone = [os.path.join(base, n) for n in os.listdir(base)
                if n != layout.BLOBS and not n.endswith(".log") and (n.startswith(layout.STAGE_PREFIX)
                                                                     or n not in keep_layers)]
        blobs = os.path.join(base, layout.BLOBS)
        if os.path.isdir(blobs):
            gone += [os.path.join(blobs, n) for n in os.listdir(blobs) if n.split(".")[0] not in keep_blobs]
        if not gone:
            return []
        trash = store.staging_dir("rm-lazy-")
        for i, path in enumerate(gone):
            os.rename(path, os.path.join(trash, str(i)))
            name = os.path.basename(path)
            if not name.startswith(layout.STAGE_PREFIX) and "." not in name:
                out.append(f"Deleted: lazy {'blob' if os.path.dirname(path) == blobs else 'layer'} {name[:12]}")
        fsync_dir(base)
        remove_tree(trash)
    return out
