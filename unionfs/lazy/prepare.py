"""The mounting command's side of ``mount --lazy``: an image's layers made ready for a lazy mount, and a
container of them.

:func:`prepare_lazy` resolves a reference at its registry (manifest and config, both verified against their
digests), stores those two blobs, and for each layer, base first:

* an extracted layer the store holds already: used as it is;
* an eStargz layer (a gzip layer whose descriptor carries the TOC digest annotation): its footer and TOC are fetched
  by range (nothing else of the blob), the TOC checked against the annotation, and its tree made
  (:mod:`unionfs.lazy.materialize`) in ``ROOT/lazy/<diffid-hex>`` (:mod:`unionfs.lazy.layout`), staged and renamed
  into place; a lazy layer already there for the same blob and TOC is used again (with the files filled so far),
  unless a process of the other privilege made it (LazyLayerError: :func:`unionfs.lazy.layout.check_mark`). With
  ``early`` (a mount that prefetches), the files before the layer's prefetch landmark are fetched while its tree is
  made and filled in the stage (:mod:`unionfs.lazy.early`);
* any other layer: pulled whole (:func:`unionfs.registry.transfer.download_blob`) and extracted by the store,
  its DiffID checked, as ``pull`` does: correct, just not lazy.

Then the image is recorded in the store's index as a pull records it (the tag, a kept index's digest
reference, else an untagged entry: :func:`unionfs.registry.transfer.index_entries`), though its lazy layers are
neither extracted nor stored as blobs: ``Store.store_image(..., lazy=True)``. It is a *partial* image
(``Store.missing_layers``): ``images`` and ``inspect`` say so, what needs its layers (a plain mount, ``run``
without ``--lazy``, ``save``, ``push``...) refuses it or pulls it, and the background completion
(:mod:`unionfs.lazy.complete`) or a ``pull`` makes it whole. Last, the container is made (or an existing one of
the same image reused) with the layers' DiffIDs and the manifest as its state; the lazy layers are kept while
that container or the partial image lists them (:mod:`unionfs.lazy.prune`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from unionfs.errors import LazyLayerError, ManifestError
from unionfs.fsops import atomic_write, fsync_dir, remove_tree, temp_dir
from unionfs.layer.estargz import TOC_DIGEST_ANNOTATION
from unionfs.lazy import layout
from unionfs.lazy.early import EarlyFetch
from unionfs.lazy.fetch import MAX_CHUNK, fetch_toc, oversized, plan_chunks
from unionfs.lazy.materialize import materialize
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import DOCKER_LAYER, OCI_LAYER_GZIP, Descriptor, ImageConfig, Manifest
from unionfs.oci.reference import Reference
from unionfs.registry.transfer import MAX_CONFIG_BYTES, download_blob, fetch_manifest, index_entries
from unionfs.store import mounting
from unionfs.store.store import Image, Store
from unionfs.union.plan import MountPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LazyPlan:
    """What :func:`prepare_lazy` made: the mount plan, and per layer (base first) how it is held: ``stored``
    (extracted already), ``lazy`` (a lazy layer made now), ``reused`` (a lazy layer made before), ``pulled``
    (not eStargz: pulled whole); the manifest (stored), the reference it was resolved from, and the image."""

    plan: MountPlan
    layers: tuple[str, ...]
    manifest: Descriptor
    ref: Reference
    image: Image


class _NotLazy(Exception):
    """An eStargz layer that is not read lazily (pulled whole instead): why."""


def is_estargz(desc: Descriptor) -> bool:
    """True when the layer descriptor ``desc`` announces an eStargz blob (a gzip layer with a TOC digest)."""
    return desc.media_type in (OCI_LAYER_GZIP, DOCKER_LAYER) and TOC_DIGEST_ANNOTATION in desc.annotations


def prepare_lazy(store: Store, ref: Reference, client: Any, *, name: str | None = None,
                 insecure: bool = False, early: bool = False) -> LazyPlan:
    """Make the layers of the image ``ref`` at its registry (``client``: a ``MirroredClient`` or
    ``RegistryClient``) ready for a lazy mount and a container of them (see the module docstring).
    ``insecure`` is recorded for the daemon's reads. ``early``: a lazy layer made now gets the files before its
    prefetch landmark fetched while its tree is made (:mod:`unionfs.lazy.early`; for a mount that prefetches
    them anyway). Raises RegistryError, DigestError, ManifestError, EstargzError, LayerError, ContainerError;
    the store's index and blobs are as before then (the lazy layers made are kept, for ``prune``)."""
    manifest, index = fetch_manifest(client, ref)
    config_raw = client.fetch_blob(ref.repository, manifest.config.digest, manifest.config.size,
                                   limit=MAX_CONFIG_BYTES)
    config = ImageConfig.parse(config_raw)
    if len(config.diff_ids) != len(manifest.layers):
        raise ManifestError(f"image has {len(manifest.layers)} layers but its config lists "
                            f"{len(config.diff_ids)} diff_ids")
    root = str(store.root)
    with store.lock():
        store.put_blob_bytes(config_raw, manifest.config.digest)
        store.put_blob_bytes(manifest.raw, manifest.descriptor().digest)
        os.makedirs(layout.lazy_root(root), mode=0o700, exist_ok=True)
        _clean_stages(root)
        lowers: list[str] = []
        how: list[str] = []
        for desc, diff_id in zip(manifest.layers, config.diff_ids):
            path, kind = _layer(store, client, ref, manifest, config, desc, diff_id, insecure, early)
            lowers.append(path)
            how.append(kind)
        image = store.store_image(manifest, config_raw, *index_entries(ref, index), lazy=True)
        plan = _container(root, ref, name, manifest, config, lowers)
    log.info("lazy mount of %s: layers %s", ref, ", ".join(how))
    return LazyPlan(plan, tuple(how), manifest.descriptor(), ref, image)


def prepare_lazy_ref(store: Store, text: str, name: str | None = None, *, early: bool = False) -> LazyPlan:
    """:func:`prepare_lazy` of the reference ``text``, read through the client ``pull`` uses (mirrors,
    registries.conf, the docker config's credentials)."""
    from unionfs.registry.mirrors import client_for

    ref = Reference.parse(text)
    with client_for(ref) as client:
        return prepare_lazy(store, ref, client, name=name, early=early)


def _layer(store: Store, client: Any, ref: Reference, manifest: Manifest, config: ImageConfig, desc: Descriptor,
           diff_id: Digest, insecure: bool, early: bool) -> tuple[str, str]:
    """The lower directory of one layer, and how it is held (see :class:`LazyPlan`)."""
    root = str(store.root)
    stored = store.layer_path(diff_id)
    if stored.is_dir():
        return str(stored), "stored"
    if is_estargz(desc):
        toc_digest = Digest.parse(desc.annotations[TOC_DIGEST_ANNOTATION])
        there = layout.layer_dir(root, diff_id.hex)
        if os.path.isdir(there):
            try:
                source, _ = layout.read_layer(there)
            except LazyLayerError as e:
                log.warning("%s", e)
            else:
                if source.digest == str(desc.digest) and source.toc_digest == str(toc_digest):
                    layout.check_mark(there)  # made by this kind of process (its marks trusted here)
                    return layout.tree_of(there), "reused"
            log.warning("lazy layer %s holds another blob's tree: layer %s is pulled whole", diff_id.short,
                        desc.digest.short)
        else:
            try:
                made = _make_lazy(root, client, ref, desc, diff_id, toc_digest, insecure, early,
                                  None if store.owners is None else False)
                return layout.tree_of(made), "lazy"
            except _NotLazy as e:
                log.warning("layer %s is pulled whole: %s", desc.digest.short, e)
    download_blob(store, client, ref.repository, desc, on_bytes=lambda n: None)
    one = Image(manifest.descriptor(), Manifest.build(manifest.config, [desc]),
                ImageConfig.build({**config.data, "rootfs": {"type": "layers", "diff_ids": [str(diff_id)]}}))
    return str(store.ensure_layers(one)[0]), "pulled"


def _make_lazy(root: str, client: Any, ref: Reference, desc: Descriptor, diff_id: Digest, toc_digest: Digest,
               insecure: bool, early: bool, privileged: bool | None) -> str:
    """Fetch the TOC of the eStargz layer ``desc`` and make its lazy layer (staged, then renamed into place;
    ``early``: its first files fetched meanwhile; ``privileged``: as the store's unpacks, see
    :func:`unionfs.lazy.materialize.materialize`); its directory."""
    toc = fetch_toc(client, ref.repository, desc.digest, desc.size, toc_digest)
    chunks = plan_chunks(toc)
    big = oversized(chunks)
    if big is not None:
        raise _NotLazy(f"a chunk of {big.length} bytes (a lazy read takes at most {MAX_CHUNK})")
    stage = temp_dir(layout.lazy_root(root), layout.STAGE_PREFIX)
    first: EarlyFetch | None = None
    try:
        if early:
            first = EarlyFetch(client, ref.repository, desc.digest, toc, chunks)
        tree = layout.tree_of(stage)
        os.mkdir(tree, 0o755)
        count = materialize(toc, tree, diff_id.hex, privileged=privileged)
        filled = first.fill(tree, diff_id.hex) if first is not None else 0
        source = layout.Source(ref=str(Reference(ref.registry, ref.repository, None, desc.digest)),
                               digest=str(desc.digest), size=desc.size, toc_digest=str(toc_digest),
                               toc_offset=toc.offset, diff_id=str(diff_id), insecure=insecure)
        atomic_write(os.path.join(stage, layout.TOC), toc.raw, 0o600)
        atomic_write(os.path.join(stage, layout.SOURCE), source.to_json(), 0o600)
        os.chmod(stage, 0o700)
        dest = layout.layer_dir(root, diff_id.hex)
        os.rename(stage, dest)
    except BaseException:
        if first is not None:
            first.cancel()
        remove_tree(stage)
        raise
    fsync_dir(layout.lazy_root(root))
    log.info("lazy layer %s: %d files to fetch when read (%d fetched already)", diff_id.short, count - filled, filled)
    return dest


def _clean_stages(root: str) -> None:
    """Remove the stages killed preparations left (needs the store lock)."""
    base = layout.lazy_root(root)
    for name in os.listdir(base):
        if name.startswith(layout.STAGE_PREFIX):
            remove_tree(os.path.join(base, name))


def _container(root: str, ref: Reference, name: str | None, manifest: Manifest, config: ImageConfig,
               lowers: list[str]) -> MountPlan:
    """The plan of container ``name`` (new: a generated name) of the image, over ``lowers``; an existing one
    must be of the same image (:func:`unionfs.store.mounting.container_plan`). Needs the store lock."""
    image = {"image_id": str(config.digest), "manifest": str(manifest.descriptor().digest),
             "layers": [d.hex for d in config.diff_ids], "base": ref.repository.rsplit("/", 1)[-1]}
    return mounting.container_plan(root, str(ref), name, image, lowers)
