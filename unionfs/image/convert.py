"""``convert --estargz``: a stored image rewritten with eStargz layers, stored and tagged.

``convert_estargz(store, src, dst)`` reads each layer blob of ``src`` from the store, checks it against the
config's DiffID while rewriting it (:func:`unionfs.layer.estargz.write_estargz`), stores the new blob, and
writes a config whose ``rootfs.diff_ids`` are the new layers' (everything else kept: the eStargz stream is a
different tar, so its DiffID differs) and an OCI manifest whose layer descriptors are gzip layers carrying the
TOC digest and uncompressed size annotations. ``store_image`` then unpacks the new layers (which checks the
new DiffIDs once more) and tags ``dst``. It all happens under the store lock: a failure at any step leaves the
store as it was (the store's transaction removes the new blobs, the tag is never written).
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from unionfs.errors import DigestError, ManifestError, UsageError
from unionfs.fsops import remove_tree
from unionfs.image.optimize import by_layer
from unionfs.layer.estargz import DEFAULT_CHUNK_SIZE, EstargzLayer, write_estargz
from unionfs.oci.digest import Digest
from unionfs.oci.manifest import OCI_CONFIG, OCI_LAYER_GZIP, Descriptor, ImageConfig, Manifest
from unionfs.oci.reference import Reference
from unionfs.store.store import Image, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConvertResult:
    """The converted image and its layers, base first."""

    image: Image
    layers: tuple[EstargzLayer, ...]


def estargz_config(base: ImageConfig, diff_ids: Sequence[Digest]) -> ImageConfig:
    """``base`` with its layers' DiffIDs replaced by ``diff_ids`` (one per layer); everything else kept."""
    if len(diff_ids) != len(base.diff_ids):
        raise ManifestError(f"the image config lists {len(base.diff_ids)} diff_ids, not {len(diff_ids)}")
    data = copy.deepcopy(base.data)
    data["rootfs"] = {**data["rootfs"], "type": "layers", "diff_ids": [str(d) for d in diff_ids]}
    return ImageConfig.build(data)


def convert_estargz(store: Store, src: str, dst: Reference, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                    prioritized: Sequence[str] = ()) -> ConvertResult:
    """Store image ``src`` (reference or id) with eStargz layers as ``dst`` (a tagged reference).

    ``chunk_size``: the most bytes of a file in one gzip member; ``prioritized``: union paths of the image's
    tree (what :func:`unionfs.api.record_opens` gives), each put first, in this order, in the layer it is read
    from, before that layer's prefetch landmark. Raises UsageError for a ``dst`` without a tag, DigestError
    when a source layer does not match its DiffID, ManifestError when the manifest and config disagree,
    PartialImageError for a partial image (a lazy mount's, before anything is written), LayerError and
    subclasses for a layer that cannot be written.
    """
    if not dst.tag:
        raise UsageError(f"convert needs a tag for the new image, not a digest: {dst}")
    image = store.resolve(src)
    store.check_whole(image)  # a lazy mount's partial image: its blobs are not all here
    if len(image.manifest.layers) != len(image.config.diff_ids):
        raise ManifestError(f"image {src} has {len(image.manifest.layers)} layers but its config lists "
                            f"{len(image.config.diff_ids)} diff_ids")
    first = by_layer(store.ensure_layers(image), prioritized) if prioritized else [[] for _ in image.config.diff_ids]
    with store.lock():
        stage = Path(store.staging_dir("estargz-"))
        try:
            layers = [_convert_layer(store, stage, desc, diff_id, chunk_size, names)
                      for desc, diff_id, names in zip(image.manifest.layers, image.config.diff_ids, first)]
        finally:
            remove_tree(stage)
        config = estargz_config(image.config, [layer.diff_id for layer in layers])
        manifest = Manifest.build(Descriptor(OCI_CONFIG, config.digest, len(config.raw)),
                                  [Descriptor(OCI_LAYER_GZIP, layer.digest, layer.size, layer.annotations())
                                   for layer in layers],
                                  dict(image.manifest.annotations) or None)
        new = store.store_image(manifest, config.raw, [dst])
    log.info("converted %s to eStargz as %s (%s)", src, dst, new.id)
    return ConvertResult(new, tuple(layers))


def _convert_layer(store: Store, stage: Path, desc: Descriptor, diff_id: Digest, chunk_size: int,
                   prioritized: Sequence[str]) -> EstargzLayer:
    """Write one stored layer as an eStargz blob in ``stage``, check its source against ``diff_id``, and store
    the blob."""
    path = stage / "layer"
    with store.open_blob(desc.digest) as blob, open(path, "wb") as out:
        layer = write_estargz(blob, out, media_type=desc.media_type, chunk_size=chunk_size,
                              prioritized=prioritized, tmp_dir=str(stage))
        out.flush()
        os.fsync(out.fileno())
    if layer.source_diff_id != diff_id:
        raise DigestError(f"layer {desc.digest}: DiffID mismatch, the config says {diff_id}, the blob holds "
                          f"{layer.source_diff_id}")
    with open(path, "rb") as f:
        store.put_blob(f, layer.digest, layer.size)
    os.unlink(path)
    log.info("layer %s -> %s (TOC %s)", desc.digest.short, layer.digest.short, layer.toc_digest.short)
    return layer


__all__ = ["ConvertResult", "convert_estargz", "estargz_config"]
