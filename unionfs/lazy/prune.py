"""``prune`` of the lazy layers: what no container needs any more goes (``ROOT/lazy/<diffid>`` and
``ROOT/lazy/blobs/<hex>``), and the stages of killed preparations.

A lazy layer is kept while a container lists its DiffID (every lazy mount has its container, made before it
mounts, and a mounted container cannot be removed); a downloaded blob while a container's manifest lists it. Each
goes by a rename into the store's ``tmp/`` first, then a delete (``remove_tree``, which refuses a tree with a mount
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


def prune_lazy(store: Store) -> list[str]:
    """Remove the lazy layers and downloaded blobs no container needs; lines saying what went."""
    base = layout.lazy_root(str(store.root))
    if not os.path.isdir(base):
        return []
    out: list[str] = []
    with store.lock():
        keep_layers: set[str] = set()
        keep_blobs: set[str] = set()
        for c in store.containers():
            keep_layers.update(c.layers)
            with contextlib.suppress(UnionfsError, ManifestError, OSError):
                manifest = Manifest.parse(store.read_blob(Digest.parse(c.manifest)))
                keep_blobs.update(d.digest.hex for d in manifest.layers)
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
