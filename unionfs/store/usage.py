"""What the store's content takes on disk, by what keeps it (``system df``, ``info``).

The store holds objects: blobs (``blobs/``) and extracted layers (``layers/``). Each object is counted once,
under the first of these that keeps it: an image of the index (tagged or dangling), a container (its upper
and work directories, and the objects of an image it was made from that the index no longer names), a cache
entry (the build cache), or nothing (garbage that ``prune`` removes, with what ``tmp/`` holds). Sizes are
apparent sizes (``st_size``), a file with several links counted once, as docker counts them.

Reclaimable is what ``system prune -a`` would free: images no container uses, containers that are not
mounted, every cache entry, all garbage. Nothing here changes the store, and no lock is taken: figures of a
store another command is changing are approximate, as docker's are.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

from unionfs.errors import UnionfsError
from unionfs.mountinfo import mount_at
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import Descriptor
from unionfs.store.store import Container, Image, Store


@dataclass(frozen=True)
class UsageRow:
    """One line of ``system df``: how many, how many in use, their bytes, and the bytes a prune frees."""

    kind: str
    total: int
    active: int
    size: int
    reclaimable: int


@dataclass(frozen=True)
class Usage:
    """The store's disk usage: ``rows`` (Images, Containers, Build Cache, Unreferenced) and the totals."""

    rows: tuple[UsageRow, ...]
    blobs: int  #: blob files
    layers: int  #: extracted layer directories
    size: int  #: bytes of blobs, layers, containers and tmp/ (the sum of the rows' sizes)

    def row(self, kind: str) -> UsageRow:
        """The row of ``kind`` (KeyError when there is none)."""
        return {r.kind: r for r in self.rows}[kind]


def tree_size(path: str | os.PathLike[str]) -> int:
    """Bytes of the files under ``path`` (apparent sizes, hardlinks once, symlinks not followed, other
    filesystems not entered); 0 when it is missing. Entries that vanish or cannot be read are skipped."""
    total = 0
    seen: set[tuple[int, int]] = set()
    try:
        dev = os.lstat(path).st_dev
    except OSError:
        return 0
    stack = [os.fspath(path)]
    while stack:
        with contextlib.suppress(OSError), os.scandir(stack.pop()) as it:
            for e in it:
                with contextlib.suppress(OSError):
                    st = e.stat(follow_symlinks=False)
                    if e.is_dir(follow_symlinks=False):
                        if st.st_dev == dev:
                            stack.append(e.path)
                    elif (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        total += st.st_size
    return total


def _objects(image: Image) -> set[str]:
    """The objects an image keeps: ``blob:<digest>`` of its manifest, config and layers, ``layer:<hex>`` of its
    extracted layers."""
    digests = [image.manifest_desc.digest, image.manifest.config.digest, *(d.digest for d in image.manifest.layers),
               *(r.digest for r in image.digests if r.digest is not None)]  # the kept indexes it was pulled by
    return {f"blob:{d}" for d in digests} | {f"layer:{d.hex}" for d in image.config.diff_ids}


def _container_objects(store: Store, c: Container) -> set[str]:
    """The objects container ``c`` keeps: its layers, and the blobs of its image's manifest when stored."""
    out = {f"layer:{name}" for name in c.layers}
    with contextlib.suppress(UnionfsError, ValueError):
        out |= _objects(store.image_from_descriptor(Descriptor("", Digest.parse(c.manifest), -1)))
    return out


def is_mounted(c: Container) -> bool:
    """True when container ``c``'s recorded mountpoint holds a mount (live, or dead with its daemon gone)."""
    if not c.mountpoint:
        return False
    return mount_at(c.mountpoint) is not None


def _object_sizes(store: Store) -> dict[str, int]:
    """The bytes of every stored object: ``blob:<digest>`` and ``layer:<hex>``."""
    sizes: dict[str, int] = {}
    for d in store.blob_digests():
        with contextlib.suppress(OSError):
            sizes[f"blob:{d}"] = store.blob_path(d).stat().st_size
    for p in store.layers_dir.iterdir():
        if p.is_dir():
            sizes[f"layer:{p.name}"] = tree_size(p)
    return sizes


def disk_usage(store: Store, mounted_names: Collection[str] | None = None) -> Usage:
    """The store's disk usage now (see the module docstring). ``mounted_names``: the names of the mounted
    containers (default: those whose recorded mountpoint holds a mount, :func:`is_mounted`)."""
    sizes = _object_sizes(store)

    def size_of(objects: set[str]) -> int:
        return sum(sizes.get(o, 0) for o in objects)

    images = store.images()
    containers = store.containers()
    mounted = [c for c in containers if (c.name in mounted_names if mounted_names is not None else is_mounted(c))]
    used_ids = {c.image_id for c in containers}
    image_objs = set().union(*(_objects(i) for i in images))
    active_objs = set().union(*(_objects(i) for i in images if str(i.id) in used_ids))
    ctr_objs = {c.name: _container_objects(store, c) - image_objs for c in containers}
    kept_by_ctr = set().union(*ctr_objs.values())
    kept_by_mounted = set().union(*(ctr_objs[c.name] for c in mounted))
    uppers = {c.name: tree_size(Path(c.upper).parent) for c in containers}  # upper, work and state
    cache = store.cache_entries()
    cache_objs: set[str] = set()
    for _, desc in cache:
        with contextlib.suppress(UnionfsError):
            cache_objs |= _objects(store.image_from_descriptor(desc))
    cache_objs -= image_objs | kept_by_ctr
    garbage = set(sizes) - image_objs - kept_by_ctr - cache_objs
    tmp = tree_size(store.tmp_dir)
    rows = (
        UsageRow("Images", len(images), sum(str(i.id) in used_ids for i in images), size_of(image_objs),
                 size_of(image_objs - active_objs)),
        UsageRow("Containers", len(containers), len(mounted), sum(uppers.values()) + size_of(kept_by_ctr),
                 sum(uppers[c.name] for c in containers if c not in mounted)
                 + size_of(kept_by_ctr - kept_by_mounted)),
        UsageRow("Build Cache", len(cache), 0, size_of(cache_objs), size_of(cache_objs)),
        UsageRow("Unreferenced", len(garbage) + len(os.listdir(store.tmp_dir)), 0,
                 size_of(garbage) + tmp, size_of(garbage) + tmp),
    )
    blobs = sum(o.startswith("blob:") for o in sizes)
    return Usage(rows, blobs=blobs, layers=len(sizes) - blobs, size=sum(r.size for r in rows))
