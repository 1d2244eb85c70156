"""A lazy layer on disk, in the store's root (no store code: the mount daemon reads it too)::

    ROOT/lazy/<diffid-hex>/source.json   where the blob is (registry reference, digest, size), its TOC digest
                                          and offset, and the layer's DiffID
    ROOT/lazy/<diffid-hex>/toc.json      the TOC's raw bytes, as verified against the manifest's annotation
    ROOT/lazy/<diffid-hex>/tree/         the layer's directory: every entry of the TOC, regular files with
                                          data as placeholders (:mod:`unionfs.layer.placeholder`)
    ROOT/lazy/blobs/<blob-hex>           a layer blob downloaded whole and verified (:mod:`unionfs.lazy.complete`);
                                          the daemon reads chunks from it rather than from the registry

A lazy layer is staged whole under ``ROOT/lazy/.stage-*`` and renamed into place: it is there complete or not
at all (a killed command leaves only a stage, which the next preparation removes). After that only the
placeholders change, each in place, its mark dropped last (:mod:`unionfs.lazy.fill`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from unionfs.errors import DigestError, LazyLayerError
from unionfs.layer import placeholder
from unionfs.oci.digest import Digest

DIR = "lazy"
SOURCE = "source.json"
TOC = "toc.json"
TREE = "tree"
STAGE_PREFIX = ".stage-"
BLOBS = "blobs"


@dataclass(frozen=True)
class Source:
    """Where a lazy layer's blob is and what it must be: ``ref`` the image reference it was resolved from
    (its registry and repository are where the blob is read), the blob's ``digest`` and ``size``, the TOC's
    ``toc_digest`` (the manifest's annotation) and ``toc_offset``, the layer's ``diff_id``, and ``insecure``
    (the registry may be spoken to without TLS verification, as the command was told)."""

    ref: str
    digest: str
    size: int
    toc_digest: str
    toc_offset: int
    diff_id: str
    insecure: bool = False

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Source:
        """The source read from ``raw`` (the file ``where``); LazyLayerError when it is not one."""
        try:
            data: Any = json.loads(raw)
            src = cls(ref=str(data["ref"]), digest=str(data["digest"]), size=int(data["size"]),
                      toc_digest=str(data["toc_digest"]), toc_offset=int(data["toc_offset"]),
                      diff_id=str(data["diff_id"]), insecure=bool(data.get("insecure", False)))
            Digest.parse(src.digest), Digest.parse(src.toc_digest), Digest.parse(src.diff_id)
        except (ValueError, KeyError, TypeError) as e:
            raise LazyLayerError(f"{where} is not a lazy layer's source: {e}") from None
        except DigestError as e:
            raise LazyLayerError(f"{where}: {e}") from None
        return src


def lazy_root(root: str) -> str:
    """``ROOT/lazy``."""
    return os.path.join(root, DIR)


def layer_dir(root: str, diff_hex: str) -> str:
    """``ROOT/lazy/<diffid-hex>``."""
    return os.path.join(root, DIR, diff_hex)


def tree_of(layer: str) -> str:
    """The tree (the lower directory a mount uses) of the lazy layer directory ``layer``."""
    return os.path.join(layer, TREE)


def blob_file(root: str, digest: Digest) -> str:
    """``ROOT/lazy/blobs/<hex>``: the blob ``digest`` downloaded whole and verified, once it is there."""
    return os.path.join(root, DIR, BLOBS, digest.hex)


def read_layer(layer: str) -> tuple[Source, bytes]:
    """The source and the TOC's raw bytes of the lazy layer directory ``layer``, the TOC checked against the
    source's digest; LazyLayerError when they cannot be read or do not match."""
    try:
        with open(os.path.join(layer, SOURCE), "rb") as f:
            source = Source.from_json(f.read(), os.path.join(layer, SOURCE))
        with open(os.path.join(layer, TOC), "rb") as f:
            toc = f.read()
    except OSError as e:
        raise LazyLayerError(f"lazy layer {layer}: {e.strerror or e}") from None
    if Digest.of_bytes(toc) != Digest.parse(source.toc_digest):
        raise LazyLayerError(f"lazy layer {layer}: its TOC does not match the digest {source.toc_digest}")
    return source, toc


def check_mark(layer: str) -> None:
    """LazyLayerError unless the tree of the lazy layer directory ``layer`` carries the mark this process
    trusts (:func:`unionfs.layer.placeholder.mark_name`). A layer made by a process of the other privilege
    lacks it (root's ``trusted.`` marks are invisible to a user; a user's ``user.`` marks are not trusted by
    root): a mount of it would serve its placeholders as zeros."""
    if placeholder.lazy_layer_of(tree_of(layer)) is None:
        other = "root" if placeholder.mark_name() == placeholder.USER_MARK else "a user other than root"
        raise LazyLayerError(f"lazy layer {layer} was made by {other}: only the same kind of process may mount it")
