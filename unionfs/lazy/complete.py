"""The background completion of a lazy mount: the image pulled whole, as ``pull`` would, without holding the
store's lock while it downloads; after it the image's layers are normal extracted layers (a later plain mount
uses them) and the image, which ``mount --lazy`` recorded as *partial* (:mod:`unionfs.lazy.prepare`), is whole
(``images`` no longer marks it partial).

``mount --lazy`` starts it (:func:`start`) once its mount is live, as a process of its own
(``python -m unionfs.lazy.complete ROOT REF MANIFEST-DIGEST MEDIA-TYPE``) that outlives the command. It:

1. reads the files before each eStargz layer's prefetch landmark through the mount (``prefetch``), so that the
   daemon fills them first (:mod:`unionfs.lazy.fill`);
2. downloads every layer blob the store lacks into ``ROOT/lazy/blobs/<hex>``: streamed, hashed, fsynced and
   renamed into place only once its digest matched (a blob is there whole and verified, or not at all; one
   process at a time per blob, by ``flock`` on ``<hex>.lock``). A killed completion leaves ``<hex>.partial``:
   the next one resumes it with a Range request and hashes its bytes again from byte 0 (:func:`download`). The
   daemon reads the chunks of a blob that is there from that file instead of the registry (each still checked
   against its digest);
3. under the store's lock: stores each blob (verified again by ``Store.put_blob``), then unpacks the image's
   layers (``Store.ensure_layers``: each with its DiffID checked). The index entries are the ones ``mount
   --lazy`` wrote (its tag, a kept index's digest reference): they are not written again, so an ``rmi`` or a
   tag moved meanwhile stays as it is (the layers of an image removed meanwhile are then garbage, for the next
   ``prune``). The tree a lazy layer shows was made from its TOC, which only the DiffID check of a full unpack
   ties to the layer's content: that is why the store's layers come from the blob, never from a lazy tree;
4. replaces each downloaded file by a hard link to the store's blob (no second copy of the bytes).

A completion that fails (a registry down, a blob that does not verify) logs why to ``ROOT/lazy/complete.log``
and ends; the store is as before (its transaction) and the next ``mount --lazy`` starts another.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import sys
from typing import Any

from unionfs.errors import UnionfsError
from unionfs.fsops import fsync_dir, open_file_beneath
from unionfs.lazy import layout
from unionfs.oci.digest import Digest, HashingReader
from unionfs.oci.manifest import Descriptor, Manifest
from unionfs.oci.reference import Reference

log = logging.getLogger(__name__)

LOG = "complete.log"


def start(root: str, ref: Reference, manifest: Descriptor, mountpoint: str) -> None:
    """Start the completion of the image ``manifest`` (stored already) of ``ref`` in a process of its own,
    its messages going to ``ROOT/lazy/complete.log``; ``mountpoint`` is the live lazy mount its prefetch reads
    through."""
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(os.path.join(layout.lazy_root(root), LOG), "ab") as logf:
        subprocess.Popen([sys.executable, "-m", "unionfs.lazy.complete", root, str(ref), str(manifest.digest),
                          manifest.media_type, mountpoint], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=logf, env=env, cwd="/", start_new_session=True)


def prefetch(mountpoint: str, names: list[str]) -> None:
    """Read each of ``names`` (paths in the image) through the mount at ``mountpoint`` once: the daemon fills
    them. Only regular files below the mount are opened, never through a symlink (the container's processes
    may change its tree meanwhile; this process is the host's root): :func:`unionfs.fsops.open_file_beneath`.
    Failures are only logged (the file may be hidden by a higher layer, or the mount gone)."""
    from unionfs.layer.estargz import clean_name

    try:
        root = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        log.debug("prefetch through %s: %s", mountpoint, e)
        return
    try:
        for name in names:
            try:
                fd = open_file_beneath(root, clean_name(name), os.O_RDONLY)
                try:
                    os.read(fd, 1)
                finally:
                    os.close(fd)
            except OSError as e:
                log.debug("prefetch of %s: %s", name, e)
    finally:
        os.close(root)


def download(client: Any, ref: Reference, desc: Descriptor, dest: str) -> None:
    """Download the blob ``desc`` of ``ref``'s repository to ``dest``, whole and verified (see the module
    docstring), unless it is there; waits for another process downloading it.

    What a killed download left in ``dest.partial`` is resumed as ``pull`` resumes its own
    (:func:`unionfs.registry.transfer.fetch_partial`: a Range request from its length, its bytes hashed again
    from byte 0 with the rest). Raises DigestError when the blob's content is wrong (the partial file is gone
    then), RegistryError when the transfer fails (it is kept, for the next completion)."""
    from unionfs.registry.transfer import fetch_partial

    os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
    lock = os.open(dest + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(dest):
            return
        tmp = dest + ".partial"

        def commit(hashed: HashingReader | None) -> None:
            with open(tmp, "rb") as f:
                if hashed is None:  # the file held every byte already
                    hashed = HashingReader(f, desc.digest.algorithm)
                    hashed.drain()
                hashed.verify(desc.digest, desc.size, "blob")
                os.fsync(f.fileno())
            os.rename(tmp, dest)
            fsync_dir(os.path.dirname(dest))

        fetch_partial(client, ref.repository, desc, tmp, commit)
    finally:
        os.close(lock)


def complete(root: str, ref: Reference, manifest_digest: Digest, media_type: str, mountpoint: str | None) -> None:
    """The completion (see the module docstring) of the image whose manifest the store holds."""
    from unionfs.layer.estargz import PREFETCH_LANDMARK, TOC_DIGEST_ANNOTATION
    from unionfs.lazy.fetch import checked_toc
    from unionfs.oci.manifest import ImageConfig
    from unionfs.registry.mirrors import client_for
    from unionfs.store.store import Image, Store

    store = Store(root)
    manifest = Manifest.parse(store.read_blob(manifest_digest), media_type)
    config_raw = store.read_blob(manifest.config.digest)
    config = ImageConfig.parse(config_raw)
    if mountpoint:
        for desc, diff_id in zip(manifest.layers, config.diff_ids):
            there = layout.layer_dir(root, diff_id.hex)
            if TOC_DIGEST_ANNOTATION in desc.annotations and os.path.isdir(there):
                source, raw = layout.read_layer(there)
                first = checked_toc(raw, source.toc_offset).prefetch
                prefetch(mountpoint, [n for n in first if n != PREFETCH_LANDMARK])
    missing = list({d.digest: d for d in manifest.layers if not store.has_blob(d.digest)}.values())
    with client_for(ref) as client:
        for desc in missing:
            download(client, ref, desc, layout.blob_file(root, desc.digest))
            log.info("blob %s downloaded", desc.digest.short)
    with store.lock():
        for desc in missing:
            with open(layout.blob_file(root, desc.digest), "rb") as f:
                store.put_blob(f, desc.digest, desc.size)
        store.ensure_layers(Image(manifest.descriptor(), manifest, config))
    for desc in missing:  # one copy of the bytes: the local file becomes a link to the store's blob
        local = layout.blob_file(root, desc.digest)
        try:
            os.link(store.blob_path(desc.digest), local + ".link")
            os.rename(local + ".link", local)
        except OSError as e:
            log.debug("blob %s: kept as a copy: %s", desc.digest.short, e)
    log.info("%s is complete in the store", ref)


def main(argv: list[str] | None = None) -> int:
    """``python -m unionfs.lazy.complete ROOT REF MANIFEST-DIGEST MEDIA-TYPE [MOUNTPOINT]``."""
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s unionfs-complete[%(process)d]: %(message)s")
    root, ref, digest, media_type = args[:4]
    try:
        complete(root, Reference.parse(ref), Digest.parse(digest), media_type, args[4] if len(args) > 4 else None)
    except (UnionfsError, OSError) as e:
        log.error("completing %s failed: %s", ref, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
